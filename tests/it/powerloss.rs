//! Deterministic power cuts inside `cargo test`: the journal runs on a redb
//! storage backend that keeps unsynced writes apart. A cut keeps what was
//! synced plus a random subset of the unsynced writes (a disk may have
//! written some of them, in any order) and fails every later call. The
//! database must open afterwards, every time, with every acknowledged
//! event and outbox entry in it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chargegate::event::{Event, Source};
use chargegate::journal::{history, Journal, JournalConfig, Op, Query};
use chargegate::outbox::{self, Entry};
use redb::StorageBackend;

/// The error type of redb's backend I/O methods (without its experimental API).
type BackendIoError = std::io::Error;

#[derive(Debug, Default)]
struct Disk {
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// What the process sees.
    live: Vec<u8>,
    /// Writes since the last sync, in order.
    unsynced: Vec<(u64, Vec<u8>)>,
    dead: bool,
    /// Syncs fail (a full disk) while set; everything else works.
    full: bool,
}

#[derive(Debug, Clone, Default)]
struct PowerCutBackend(Arc<Mutex<Disk>>);

fn off() -> BackendIoError {
    std::io::Error::other("power is off")
}

impl PowerCutBackend {
    /// A fresh machine booting from what the disk kept after a cut now.
    fn cut(&self) -> PowerCutBackend {
        let mut d = self.0.lock().unwrap();
        d.dead = true;
        let mut image = d.durable.clone();
        let mut pending = d.unsynced.clone();
        fastrand::shuffle(&mut pending);
        for (offset, data) in pending {
            if fastrand::bool() {
                let end = offset as usize + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[offset as usize..end].copy_from_slice(&data);
            }
        }
        PowerCutBackend(Arc::new(Mutex::new(Disk {
            durable: image.clone(),
            live: image,
            unsynced: Vec::new(),
            dead: false,
            full: false,
        })))
    }
}

impl StorageBackend for PowerCutBackend {
    fn len(&self) -> Result<u64, BackendIoError> {
        let d = self.0.lock().unwrap();
        if d.dead {
            return Err(off());
        }
        Ok(d.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        let d = self.0.lock().unwrap();
        let end = offset as usize + out.len();
        if d.dead || end > d.live.len() {
            return Err(off());
        }
        out.copy_from_slice(&d.live[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        let mut d = self.0.lock().unwrap();
        if d.dead {
            return Err(off());
        }
        d.live.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        let mut d = self.0.lock().unwrap();
        if d.dead {
            return Err(off());
        }
        if d.full {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device",
            ));
        }
        d.durable = d.live.clone();
        d.unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        let mut d = self.0.lock().unwrap();
        if d.dead {
            return Err(off());
        }
        let end = offset as usize + data.len();
        if d.live.len() < end {
            d.live.resize(end, 0);
        }
        d.live[offset as usize..end].copy_from_slice(data);
        d.unsynced.push((offset, data.to_vec()));
        Ok(())
    }
}

/// One file of the history's directory, as the disk holds it.
#[derive(Debug, Clone, Default)]
struct File {
    durable: Vec<u8>,
    live: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct Files {
    files: std::collections::BTreeMap<String, File>,
    dead: bool,
    full: bool,
}

/// The history's directory on the same kind of disk: appends are lost or
/// kept at random on a cut unless synced; creating, replacing and
/// removing a file are durable at once (the real directory fsyncs itself).
#[derive(Debug, Clone, Default)]
struct PowerCutDir(Arc<Mutex<Files>>);

impl PowerCutDir {
    fn cut(&self) -> PowerCutDir {
        let mut d = self.0.lock().unwrap();
        d.dead = true;
        let mut files = std::collections::BTreeMap::new();
        for (name, f) in &d.files {
            // Of the unsynced appends, the disk wrote some prefix, maybe
            // ending mid-record (a torn write).
            let mut image = f.durable.clone();
            let kept = fastrand::usize(0..=f.live.len() - f.durable.len().min(f.live.len()));
            image.extend_from_slice(&f.live[f.durable.len()..f.durable.len() + kept]);
            files.insert(
                name.clone(),
                File {
                    durable: image.clone(),
                    live: image,
                    unsynced: Vec::new(),
                },
            );
        }
        PowerCutDir(Arc::new(Mutex::new(Files {
            files,
            dead: false,
            full: false,
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Files) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut d = self.0.lock().unwrap();
        if d.dead {
            return Err(off());
        }
        f(&mut d)
    }
}

fn missing() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotFound)
}

impl history::Dir for PowerCutDir {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.with(|d| Ok(d.files.keys().cloned().collect()))
    }
    fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        self.with(|d| {
            d.files
                .get(name)
                .map(|f| f.live.clone())
                .ok_or_else(missing)
        })
    }
    fn append(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.with(|d| {
            let f = d.files.entry(name.into()).or_default();
            f.unsynced.push((f.live.len() as u64, data.to_vec()));
            f.live.extend_from_slice(data);
            Ok(())
        })
    }
    fn sync(&self, name: &str) -> std::io::Result<()> {
        self.with(|d| {
            if d.full {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space left on device",
                ));
            }
            let f = d.files.get_mut(name).ok_or_else(missing)?;
            f.durable = f.live.clone();
            f.unsynced.clear();
            Ok(())
        })
    }
    fn truncate(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.with(|d| {
            let f = d.files.get_mut(name).ok_or_else(missing)?;
            f.live.truncate(len as usize);
            f.durable = f.live.clone();
            f.unsynced.clear();
            Ok(())
        })
    }
    fn replace(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.with(|d| {
            d.files.insert(
                name.into(),
                File {
                    durable: data.to_vec(),
                    live: data.to_vec(),
                    unsynced: Vec::new(),
                },
            );
            Ok(())
        })
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.with(|d| {
            d.files.remove(name);
            Ok(())
        })
    }
}

fn cfg() -> JournalConfig {
    JournalConfig {
        path: "powercut.redb".into(),
        max_age: Duration::from_secs(86_400),
        max_bytes: 1 << 30,
        commit_interval: Duration::ZERO,
    }
}

/// One acknowledged write: the meter reading in both the event and the
/// outbox entry.
fn ops(n: u64) -> Vec<Op> {
    let payload = format!(
        r#"{{"connectorId":1,"transactionId":-1,"meterValue":[{{"timestamp":"t","sampledValue":[{{"value":"{n}"}}]}}]}}"#
    );
    vec![
        Op::Event {
            charger: Some("CP-PL".into()),
            event: Event::MeterValues {
                connector: 1,
                transaction_id: Some(-1),
                transaction_ref: None,
                energy_wh: Some(n as f64),
                power_w: None,
                current_a: None,
                clock_skew_s: None,
            },
        },
        Op::Outbox(outbox::Op::Push {
            charger: "CP-PL".into(),
            key: n,
            entry: Entry {
                action: "MeterValues".into(),
                payload,
                queued_ms: 0,
                attempts: 0,
                local_tx: None,
            },
        }),
    ]
}

#[tokio::test]
async fn acknowledged_writes_survive_60_random_power_cuts() {
    let mut disk = PowerCutBackend::default();
    let mut dir = PowerCutDir::default();
    let mut acked: Vec<u64> = Vec::new();
    let mut n = 0u64;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for cut in 0..60 {
        let j = Journal::open_with_backend(disk.clone(), Arc::new(dir.clone()), cfg())
            .unwrap_or_else(|e| panic!("cut {cut}: database does not open: {e}"));
        // Before anything else: everything acknowledged so far is there.
        let events = j
            .query(&Query {
                charger: Some("CP-PL".into()),
                kinds: vec!["MeterValues".into()],
                ..Default::default()
            })
            .unwrap();
        let stored: Vec<u64> = events
            .iter()
            .filter_map(|r| serde_json::to_value(r).unwrap()["energy_wh"].as_f64())
            .map(|v| v as u64)
            .collect();
        let queued: Vec<u64> = j
            .outbox("CP-PL")
            .unwrap()
            .iter()
            .map(|(_, e)| {
                e.payload
                    .split("\"value\":\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        for a in &acked {
            assert!(stored.contains(a), "cut {cut}: acknowledged event {a} lost");
            assert!(
                queued.contains(a),
                "cut {cut}: acknowledged outbox entry {a} lost"
            );
        }
        // Each writer's own writes keep their order; writers interleave.
        for (lo, hi) in &ranges {
            let mine = |v: &Vec<u64>| {
                v.iter()
                    .copied()
                    .filter(|x| x > lo && x <= hi)
                    .collect::<Vec<_>>()
            };
            assert!(
                mine(&stored).windows(2).all(|w| w[0] < w[1]),
                "cut {cut}: journal out of order"
            );
            assert!(
                mine(&queued).windows(2).all(|w| w[0] < w[1]),
                "cut {cut}: outbox out of order"
            );
        }
        let mut unique = stored.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            stored.len(),
            "cut {cut}: an event stored twice"
        );

        // Writers at full speed, several at once (group commit), and the
        // power goes at a random moment.
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let j = j.clone();
                let count = fastrand::u64(1..20);
                let start = n;
                n += count;
                ranges.push((start, n));
                tokio::spawn(async move {
                    let mut ok = Vec::new();
                    for k in start + 1..=start + count {
                        match j.commit(ops(k)).await {
                            Ok(_) => ok.push(k),
                            Err(_) => break,
                        }
                    }
                    ok
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
        let next = (disk.cut(), dir.cut());
        for w in writers {
            acked.extend(w.await.unwrap());
        }
        acked.sort();
        drop(j);
        (disk, dir) = next;
    }
    assert!(
        acked.len() > 100,
        "the cuts hit a live writer: {} writes acknowledged",
        acked.len()
    );
}

#[test]
fn a_disk_that_fails_gives_errors_not_acknowledgements() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let disk = PowerCutBackend::default();
        let dir = PowerCutDir::default();
        let j = Journal::open_with_backend(disk.clone(), Arc::new(dir.clone()), cfg()).unwrap();
        j.commit(ops(1)).await.unwrap();
        let _ = disk.cut();
        let _ = dir.cut();
        assert!(
            j.commit(ops(2)).await.is_err(),
            "a failed commit is never acknowledged"
        );
        assert!(j.alarm().is_some(), "and the journal raises an alarm");
        let ev = Event::Authorize {
            id_tag: "x".into(),
            status: None,
            answered_by: Source::Gateway,
        };
        assert!(j.record_durable(Some("CP"), ev).await.is_err());
    });
}

#[tokio::test]
async fn a_full_disk_raises_an_alarm_and_the_journal_says_so_once_it_can() {
    let disk = PowerCutBackend::default();
    let dir = PowerCutDir::default();
    let j = Journal::open_with_backend(disk.clone(), Arc::new(dir.clone()), cfg()).unwrap();
    j.commit(ops(1)).await.unwrap();
    disk.0.lock().unwrap().full = true;
    dir.0.lock().unwrap().full = true;
    assert!(j.commit(ops(2)).await.is_err());
    assert!(j.commit(ops(3)).await.is_err());
    let alarm = j.alarm().expect("an alarm while the disk is full");
    assert!(alarm.contains("no space left"), "{alarm}");
    disk.0.lock().unwrap().full = false;
    dir.0.lock().unwrap().full = false;
    j.commit(ops(4)).await.unwrap();
    assert!(j.alarm().is_none(), "cleared once writing works");
    let alarms = j
        .query(&Query {
            kinds: vec!["StorageAlarm".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(alarms.len(), 1);
    let v = serde_json::to_value(&alarms[0]).unwrap();
    assert!(v["failed_commits"].as_u64().unwrap() >= 2, "{v}");
    let (began, ended) = (
        v["began_ms"].as_i64().unwrap(),
        v["time_ms"].as_i64().unwrap(),
    );
    assert!(
        began <= ended,
        "it says when the trouble began and ended: {v}"
    );
    assert!(
        j.outbox("CP-PL").unwrap().len() >= 2,
        "what was acknowledged is still there"
    );
}

/// Relayed history (the gateway vouches for nothing) is written at least
/// every commit interval: a power cut loses at most what came in during
/// the last one (here 100 ms; anything older than a second must be there,
/// the margin for a busy machine's scheduling).
#[tokio::test]
async fn a_power_cut_loses_relayed_history_of_at_most_the_commit_interval() {
    let cfg = JournalConfig {
        commit_interval: Duration::from_millis(100),
        ..cfg()
    };
    let (mut disk, mut dir) = (PowerCutBackend::default(), PowerCutDir::default());
    let mut required: Vec<u64> = Vec::new();
    let mut n = 0u64;
    for cut in 0..6 {
        let j = Journal::open_with_backend(disk.clone(), Arc::new(dir.clone()), cfg.clone())
            .unwrap_or_else(|e| panic!("cut {cut}: database does not open: {e}"));
        let stored: Vec<u64> = j
            .query(&Query {
                charger: Some("CP-PL".into()),
                ..Default::default()
            })
            .unwrap()
            .iter()
            .filter_map(|r| serde_json::to_value(r).unwrap()["energy_wh"].as_f64())
            .map(|v| v as u64)
            .collect();
        for r in &required {
            assert!(
                stored.contains(r),
                "cut {cut}: relayed record {r}, older than a second, lost"
            );
        }
        assert!(
            stored.windows(2).all(|w| w[0] < w[1]),
            "cut {cut}: out of order"
        );
        let mut sent = Vec::new();
        let until = std::time::Instant::now() + Duration::from_millis(fastrand::u64(1500..2000));
        while std::time::Instant::now() < until {
            n += 1;
            let Op::Event { charger, event } = ops(n).remove(0) else {
                unreachable!()
            };
            j.record(charger.as_deref(), event).await;
            sent.push((n, std::time::Instant::now()));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at = std::time::Instant::now();
        let next = (disk.cut(), dir.cut());
        required.extend(
            sent.iter()
                .filter(|(_, t)| at.duration_since(*t) > Duration::from_secs(1))
                .map(|(n, _)| *n),
        );
        drop(j);
        (disk, dir) = next;
    }
    assert!(required.len() > 500, "{} records checked", required.len());
}
