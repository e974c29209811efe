//! Segment files on a directory in memory, and on disk for the torn end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::event::{Link, Source};

/// A directory in memory.
#[derive(Clone, Default)]
struct MemDir(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

impl Dir for MemDir {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.0.lock().unwrap().keys().cloned().collect())
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn append(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d.entry(name.into()).or_default().extend_from_slice(data);
        Ok(())
    }
    fn sync(&self, _: &str) -> io::Result<()> {
        Ok(())
    }
    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        if let Some(f) = self.0.lock().unwrap().get_mut(name) {
            f.truncate(len as usize);
        }
        Ok(())
    }
    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().insert(name.into(), data.to_vec());
        Ok(())
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.0.lock().unwrap().remove(name);
        Ok(())
    }
}

fn rec(seq: u64, charger: Option<&str>, event: Event) -> Record {
    Record {
        seq,
        time_ms: 1_000 + seq as i64,
        charger: charger.map(str::to_string),
        event,
    }
}

fn noise() -> Event {
    Event::ProtocolError {
        from: Link::Charger,
        code: "FormationViolation".into(),
        detail: "x".repeat(100),
        frame: String::new(),
        repeated: None,
    }
}

fn status() -> Event {
    Event::StatusNotification {
        connector: 1,
        status: "Charging".into(),
        error_code: "NoError".into(),
        info: None,
    }
}

fn start() -> Event {
    Event::StartTransaction {
        connector: 1,
        id_tag: "t".into(),
        meter_start: 0,
        transaction_id: Some(1),
        transaction_ref: None,
        status: None,
        timestamp: "x".into(),
        answered_by: Source::Cloud,
    }
}

fn open(dir: &MemDir, seg_bytes: u64) -> History {
    History::open(Arc::new(dir.clone()), seg_bytes).unwrap()
}

fn seqs(h: &History, charger: Option<&str>) -> Vec<u64> {
    let mut out = Vec::new();
    scan_back(&*h.dir(), &h.segments(), charger, 0, None, |r| {
        out.push(r.seq);
        true
    })
    .unwrap();
    out.reverse();
    out
}

#[test]
fn appended_records_come_back_after_reopen_in_order() {
    let dir = MemDir::default();
    let mut h = open(&dir, 1_000);
    for seq in 1..=50 {
        let c = if seq % 2 == 0 { "A" } else { "B" };
        h.append(&[rec(seq, Some(c), status())]).unwrap();
    }
    assert!(h.segments().len() > 3, "sealed as they fill");
    let h = open(&dir, 1_000);
    assert_eq!(h.last(), (50, 1_050));
    assert_eq!(h.totals().0, 50);
    let a = seqs(&h, Some("A"));
    assert_eq!(a, (1..=25).map(|i| i * 2).collect::<Vec<_>>());
    let after: Vec<u64> = h.after(45).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(after, vec![46, 47, 48, 49, 50]);
    assert_eq!(h.after(45).unwrap()[0].event, status(), "events decode");
}

#[test]
fn a_torn_end_is_cut_off_and_appending_goes_on_after_it() {
    let dir = MemDir::default();
    let mut h = open(&dir, 1 << 20);
    h.append(&[rec(1, Some("A"), status()), rec(2, Some("A"), status())])
        .unwrap();
    drop(h);
    let name = dir.list().unwrap().pop().unwrap();
    let len = dir.read(&name).unwrap().len();
    // Half a record, as a power cut mid-append leaves it.
    let mut half = Vec::new();
    encode(&rec(3, Some("A"), status()), &mut half).unwrap();
    dir.append(&name, &half[..half.len() / 2]).unwrap();
    let mut h = open(&dir, 1 << 20);
    assert_eq!(dir.read(&name).unwrap().len(), len, "torn bytes cut off");
    h.append(&[rec(3, Some("A"), status())]).unwrap();
    assert_eq!(seqs(&open(&dir, 1 << 20), None), vec![1, 2, 3]);
    // A flipped bit is caught by the checksum the same way.
    let mut bytes = dir.read(&name).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x40;
    dir.replace(&name, &bytes).unwrap();
    assert_eq!(seqs(&open(&dir, 1 << 20), None), vec![1, 2]);
}

#[test]
fn one_flooding_charger_cannot_evict_the_others_history() {
    let dir = MemDir::default();
    let mut h = open(&dir, 4_000);
    let mut seq = 0;
    let mut next = |c: &str, e: Event| {
        seq += 1;
        rec(seq, Some(c), e)
    };
    let quiet: Vec<Record> = (0..10).map(|_| next("QUIET", status())).collect();
    h.append(&quiet).unwrap();
    for _ in 0..400 {
        h.append(&[next("FLOOD", noise())]).unwrap();
    }
    let before = h.usage()["FLOOD"].total();
    let max = 30_000;
    assert!(h.totals().1 > max);
    let dropped = h
        .trim(Limits {
            max_bytes: max,
            oldest_ms: 0,
        })
        .unwrap();
    assert!(dropped > 0);
    assert!(h.totals().1 <= max, "{} > {max}", h.totals().1);
    assert_eq!(
        seqs(&h, Some("QUIET")).len(),
        10,
        "the quiet charger keeps all"
    );
    let flood = seqs(&h, Some("FLOOD"));
    assert!(h.usage()["FLOOD"].total() < before);
    assert_eq!(*flood.last().unwrap(), seq, "the flood keeps its newest");
    assert!(flood.windows(2).all(|w| w[0] < w[1]));
    // And what retention wrote is what the next open reads.
    let h2 = open(&dir, 4_000);
    assert_eq!(h2.totals(), h.totals());
    assert_eq!(seqs(&h2, Some("QUIET")).len(), 10);
}

#[test]
fn noise_goes_before_transactions_within_a_charger() {
    let dir = MemDir::default();
    let mut h = open(&dir, 2_000);
    let mut seq = 0;
    for i in 0..200 {
        seq += 1;
        let e = if i % 20 == 0 { start() } else { noise() };
        h.append(&[rec(seq, Some("A"), e)]).unwrap();
    }
    let total = h.totals().1;
    h.trim(Limits {
        max_bytes: total / 2,
        oldest_ms: 0,
    })
    .unwrap();
    let kept = h.after(0).unwrap();
    let starts = kept
        .iter()
        .filter(|r| matches!(r.event, Event::StartTransaction { .. }))
        .count();
    assert_eq!(starts, 10, "every transaction kept while noise remains");
    assert!(h.totals().1 <= total / 2);
}

#[test]
fn whole_segments_past_the_age_limit_are_deleted() {
    let dir = MemDir::default();
    let mut h = open(&dir, 500);
    for seq in 1..=40 {
        h.append(&[rec(seq, None, status())]).unwrap();
    }
    let files = dir.list().unwrap().len();
    h.trim(Limits {
        max_bytes: u64::MAX,
        oldest_ms: 1_020,
    })
    .unwrap();
    let left = seqs(&h, None);
    assert!(left[0] > 1 && left[0] <= 21, "{left:?}");
    assert_eq!(*left.last().unwrap(), 40);
    assert!(dir.list().unwrap().len() < files, "files deleted");
}

#[test]
fn fair_share_is_max_min() {
    let u = |v: &[u64]| -> BTreeMap<String, Usage> {
        v.iter()
            .enumerate()
            .map(|(i, &b)| (i.to_string(), Usage([b, 0, 0])))
            .collect()
    };
    assert_eq!(fair_share(&u(&[10, 1000]), 510), 500);
    assert_eq!(fair_share(&u(&[100, 100, 1000]), 600), 400);
    assert_eq!(fair_share(&u(&[300, 300]), 300), 150);
    assert_eq!(fair_share(&u(&[1, 2]), 10), u64::MAX, "all fit");
}

#[test]
fn on_disk_segments_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = History::open(Arc::new(FsDir::new(tmp.path(), 4096).unwrap()), 300).unwrap();
    for seq in 1..=20 {
        h.append(&[rec(seq, Some("A"), start())]).unwrap();
    }
    h.trim(Limits {
        max_bytes: 2_000,
        oldest_ms: 0,
    })
    .unwrap();
    let kept = seqs(&h, Some("A"));
    let h = History::open(Arc::new(FsDir::new(tmp.path(), 4096).unwrap()), 300).unwrap();
    assert_eq!(seqs(&h, Some("A")), kept);
    assert_eq!(h.last().0, 20);
    let on_disk: u64 = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk < 2_000 + 4_096, "{on_disk}");
}
