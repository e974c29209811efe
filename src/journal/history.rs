//! The journal's history: events in append-only segment files, written
//! once, read by queries, and deleted or compacted whole by retention.
//!
//! Why not in redb with the rest: every redb commit rewrites the B-tree
//! pages it touches plus its header (about ten 4 KiB pages whatever the
//! commit's size), so a 5-s batch of a few dozen meter values cost
//! ~2 KB of writes per event. An append writes the batch and the one page
//! it ends in, and a segment dropped by retention gives its space back to
//! the file system at once (redb never shrinks its file).
//!
//! A segment is `NNNNNNNNNNNNNNNNNNNN.log` (its first sequence number) of
//! records `[len u32][crc32 u32][seq u64][time i64][charger len u16 |
//! 0xFFFF][charger][class u8][event JSON]`, little-endian. A torn record at
//! the end of the last segment (a power cut mid-append) is cut off when the
//! journal opens. A sealed segment has a summary beside it
//! (`NNNN….sum`): sequence and time range, and bytes per charger and
//! class, so opening the journal reads summaries, not the history.
//!
//! Retention is fair: over its budget, the charger (or the site-wide
//! stream) using the most space loses its oldest records first, noise
//! before ordinary events before transactions, until every stream is
//! within a max-min fair share. One charger flooding cannot evict the
//! others' history.

use std::collections::BTreeMap;
use std::io;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Record};

mod dir;
pub use self::dir::{Dir, FsDir};

/// What retention drops first: noise, then ordinary events, then
/// transactions (what a cloud operator settles bills with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Noise = 0,
    Ordinary = 1,
    Transaction = 2,
}

impl Class {
    /// The class of an event.
    pub fn of(event: &Event) -> Class {
        match event {
            Event::Refused { .. } | Event::ProtocolError { .. } => Class::Noise,
            Event::StartTransaction { .. }
            | Event::StopTransaction { .. }
            | Event::DeadLetter { .. }
            | Event::Override { .. } => Class::Transaction,
            _ => Class::Ordinary,
        }
    }

    fn from_byte(b: u8) -> Class {
        match b {
            0 => Class::Noise,
            2 => Class::Transaction,
            _ => Class::Ordinary,
        }
    }
}

/// Bytes a stream (a charger, or "" for site-wide records) uses, by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage(pub [u64; 3]);

impl Usage {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// What a segment holds, without reading it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub bytes: u64,
    pub records: u64,
    /// By charger ("" for site-wide records).
    pub streams: BTreeMap<String, Usage>,
}

impl Summary {
    fn add(&mut self, r: &Raw<'_>) {
        self.count(r.seq, r.time_ms, r.charger, r.class, r.len);
    }

    /// Count one record of `len` encoded bytes.
    fn count(&mut self, seq: u64, time_ms: i64, charger: Option<&str>, class: Class, len: usize) {
        if self.records == 0 {
            self.first_seq = seq;
            self.first_ms = time_ms;
        }
        self.last_seq = seq;
        self.last_ms = time_ms;
        self.bytes += len as u64;
        self.records += 1;
        let u = self
            .streams
            .entry(charger.unwrap_or("").to_string())
            .or_default();
        u.0[class as usize] += len as u64;
    }
}

/// One record as it lies in a segment, before its event is decoded.
struct Raw<'a> {
    seq: u64,
    time_ms: i64,
    charger: Option<&'a str>,
    class: Class,
    json: &'a [u8],
    /// Encoded length, header included, and where the record starts.
    len: usize,
    at: usize,
}

impl Raw<'_> {
    fn decode(&self) -> Result<Record, serde_json::Error> {
        Ok(Record {
            seq: self.seq,
            time_ms: self.time_ms,
            charger: self.charger.map(str::to_string),
            event: serde_json::from_slice(self.json)?,
        })
    }
}

const HEADER: usize = 8;
const NO_CHARGER: u16 = u16::MAX;

/// Encode one record onto `out`; returns its encoded length.
pub fn encode(rec: &Record, out: &mut Vec<u8>) -> Result<usize, serde_json::Error> {
    let json = serde_json::to_vec(&rec.event)?;
    let charger = rec
        .charger
        .as_deref()
        .map(|c| &c.as_bytes()[..c.len().min(1024)]);
    let mut body = Vec::with_capacity(19 + charger.map_or(0, <[u8]>::len) + json.len());
    body.extend_from_slice(&rec.seq.to_le_bytes());
    body.extend_from_slice(&rec.time_ms.to_le_bytes());
    match charger {
        Some(c) => {
            body.extend_from_slice(&(c.len() as u16).to_le_bytes());
            body.extend_from_slice(c);
        }
        None => body.extend_from_slice(&NO_CHARGER.to_le_bytes()),
    }
    body.push(Class::of(&rec.event) as u8);
    body.extend_from_slice(&json);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(HEADER + body.len())
}

/// The records of a segment's bytes, in order, up to the first that is
/// torn or corrupt; and the length of the good part.
fn parse(bytes: &[u8]) -> (Vec<Raw<'_>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if len < 19 || crc32fast::hash(body) != crc {
            break;
        }
        let Some(raw) = parse_body(body, HEADER + len, at) else {
            break;
        };
        out.push(raw);
        at += HEADER + len;
    }
    (out, at)
}

fn parse_body(body: &[u8], len: usize, at: usize) -> Option<Raw<'_>> {
    let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let time_ms = i64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    let clen = u16::from_le_bytes(body.get(16..18)?.try_into().ok()?);
    let (charger, rest) = if clen == NO_CHARGER {
        (None, 18)
    } else {
        let end = 18 + clen as usize;
        (Some(std::str::from_utf8(body.get(18..end)?).ok()?), end)
    };
    let class = Class::from_byte(*body.get(rest)?);
    Some(Raw {
        seq,
        time_ms,
        charger,
        class,
        json: body.get(rest + 1..)?,
        len,
        at,
    })
}

fn log_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

fn sum_name(first_seq: u64) -> String {
    format!("{first_seq:020}.sum")
}

/// One segment: its file's first sequence number and what it holds.
#[derive(Debug, Clone)]
pub struct Segment {
    pub id: u64,
    /// Shared with readers' snapshots; copied when it changes.
    pub sum: Arc<Summary>,
}

/// The segment files and what is in them. The writer thread owns it;
/// readers take a snapshot of the list (`segments`) and read files
/// without holding anything.
pub struct History {
    dir: Arc<dyn Dir>,
    /// Oldest first; the last is the one appended to.
    segs: Vec<Segment>,
    /// A segment is sealed once it holds this much.
    seg_bytes: u64,
    /// A failed append may have left a partial record: cut it off first.
    dirty: bool,
}

/// Retention's limits for one pass.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of history allowed.
    pub max_bytes: u64,
    /// Records older than this (ms since the epoch) go, by whole segments.
    pub oldest_ms: i64,
}

impl History {
    /// Open the segments in `dir`, cutting off a torn end. `seg_bytes`:
    /// the size at which a segment is sealed.
    pub fn open(dir: Arc<dyn Dir>, seg_bytes: u64) -> io::Result<History> {
        let mut ids: Vec<u64> = dir
            .list()?
            .iter()
            .filter_map(|n| n.strip_suffix(".log")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut segs = Vec::with_capacity(ids.len());
        let last = ids.last().copied();
        for id in ids {
            let known = (Some(id) != last)
                .then(|| dir.read(&sum_name(id)).ok())
                .flatten()
                .and_then(|b| serde_json::from_slice::<Summary>(&b).ok());
            let sum = match known {
                Some(s) => s,
                None => {
                    let bytes = dir.read(&log_name(id))?;
                    let (raws, good) = parse(&bytes);
                    if good < bytes.len() {
                        log::warn!(
                            "journal segment {}: {} torn or unreadable bytes at its end cut off",
                            log_name(id),
                            bytes.len() - good
                        );
                        dir.truncate(&log_name(id), good as u64)?;
                    }
                    let mut s = Summary::default();
                    raws.iter().for_each(|r| s.add(r));
                    if Some(id) != last && s.records > 0 {
                        dir.replace(&sum_name(id), &serde_json::to_vec(&s)?)?;
                    }
                    s
                }
            };
            if sum.records == 0 && Some(id) != last {
                dir.remove(&log_name(id))?;
                dir.remove(&sum_name(id))?;
                continue;
            }
            segs.push(Segment {
                id,
                sum: Arc::new(sum),
            });
        }
        Ok(History {
            dir,
            segs,
            seg_bytes: seg_bytes.max(1),
            dirty: false,
        })
    }

    /// The last sequence number and record time written.
    pub fn last(&self) -> (u64, i64) {
        self.segs
            .iter()
            .rev()
            .find(|s| s.sum.records > 0)
            .map_or((0, 0), |s| (s.sum.last_seq, s.sum.last_ms))
    }

    /// Records and bytes written.
    pub fn totals(&self) -> (u64, u64) {
        self.segs
            .iter()
            .fold((0, 0), |(r, b), s| (r + s.sum.records, b + s.sum.bytes))
    }

    /// The segments, oldest first, for readers.
    pub fn segments(&self) -> Vec<Segment> {
        self.segs.clone()
    }

    /// Append records (in sequence order) and make them durable. A
    /// segment that fills up on the way is sealed and the rest goes to a
    /// new one.
    pub fn append<'r>(&mut self, recs: impl IntoIterator<Item = &'r Record>) -> io::Result<()> {
        if self.dirty {
            if let Some(s) = self.segs.last() {
                match self.dir.truncate(&log_name(s.id), s.sum.bytes) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            self.dirty = false;
        }
        let mut buf = Vec::new();
        // What `buf` holds, counted in the summary once it is on disk.
        let mut held: Vec<(&Record, usize)> = Vec::new();
        for r in recs {
            let full = self
                .segs
                .last()
                .is_none_or(|s| s.sum.bytes + buf.len() as u64 >= self.seg_bytes);
            if full {
                self.flush(&mut buf, &mut held)?;
                self.seal()?;
                self.segs.push(Segment {
                    id: r.seq,
                    sum: Arc::default(),
                });
            }
            let len = encode(r, &mut buf).map_err(io::Error::other)?;
            held.push((r, len));
        }
        self.flush(&mut buf, &mut held)
    }

    /// Append `buf` to the last segment, durably, and count what it holds.
    fn flush(&mut self, buf: &mut Vec<u8>, held: &mut Vec<(&Record, usize)>) -> io::Result<()> {
        let Some(seg) = self.segs.last_mut() else {
            return Ok(());
        };
        if buf.is_empty() {
            return Ok(());
        }
        let name = log_name(seg.id);
        let res = self
            .dir
            .append(&name, buf)
            .and_then(|()| self.dir.sync(&name));
        if let Err(e) = res {
            self.dirty = true;
            return Err(e);
        }
        let sum = Arc::make_mut(&mut seg.sum);
        for (r, len) in held.drain(..) {
            sum.count(
                r.seq,
                r.time_ms,
                r.charger.as_deref(),
                Class::of(&r.event),
                len,
            );
        }
        buf.clear();
        Ok(())
    }

    /// Write the summary of the segment being appended to, so that it is
    /// never read again at start.
    fn seal(&mut self) -> io::Result<()> {
        match self.segs.last() {
            Some(s) if s.sum.records > 0 => self
                .dir
                .replace(&sum_name(s.id), &serde_json::to_vec(&*s.sum)?),
            _ => Ok(()),
        }
    }

    /// Every stream's bytes.
    pub fn usage(&self) -> BTreeMap<String, Usage> {
        let mut out: BTreeMap<String, Usage> = BTreeMap::new();
        for s in &self.segs {
            for (k, u) in &s.sum.streams {
                let t = out.entry(k.clone()).or_default();
                (0..3).for_each(|i| t.0[i] += u.0[i]);
            }
        }
        out
    }

    /// Apply retention: whole segments past the age limit, then, over the
    /// size limit, the oldest records of the streams over their fair
    /// share. The segment being appended to is never touched, so
    /// `seg_bytes` must be well under `max_bytes`. Returns the records
    /// dropped.
    pub fn trim(&mut self, lim: Limits) -> io::Result<u64> {
        let mut dropped = 0;
        while self.segs.len() > 1 && self.segs[0].sum.last_ms < lim.oldest_ms {
            let s = self.segs.remove(0);
            dropped += s.sum.records;
            self.dir.remove(&log_name(s.id))?;
            self.dir.remove(&sum_name(s.id))?;
        }
        let (_, total) = self.totals();
        if total <= lim.max_bytes {
            return Ok(dropped);
        }
        // Trim to a low-water mark, so that a full journal is compacted
        // now and then rather than at every batch.
        let target = lim.max_bytes - lim.max_bytes / 10;
        let mut usage = self.usage();
        let share = fair_share(&usage, target);
        let mut excess: BTreeMap<String, u64> = usage
            .iter_mut()
            .filter(|(_, u)| u.total() > share)
            .map(|(k, u)| (k.clone(), u.total() - share))
            .collect();
        for class in [Class::Noise, Class::Ordinary, Class::Transaction] {
            let mut i = 0;
            while i + 1 < self.segs.len() && excess.values().any(|&e| e > 0) {
                let seg = &self.segs[i];
                let hit =
                    seg.sum.streams.iter().any(|(k, u)| {
                        excess.get(k).is_some_and(|&e| e > 0) && u.0[class as usize] > 0
                    });
                if !hit {
                    i += 1;
                    continue;
                }
                let bytes = self.dir.read(&log_name(seg.id))?;
                let (raws, _) = parse(&bytes);
                let mut kept = Vec::with_capacity(bytes.len());
                let mut sum = Summary::default();
                for r in &raws {
                    let k = r.charger.unwrap_or("");
                    if let Some(e) = excess.get_mut(k).filter(|e| **e > 0 && r.class <= class) {
                        *e = e.saturating_sub(r.len as u64);
                        dropped += 1;
                        continue;
                    }
                    kept.extend_from_slice(&bytes[r.at..r.at + r.len]);
                    sum.add(r);
                }
                let id = seg.id;
                if sum.records == 0 {
                    self.dir.remove(&log_name(id))?;
                    self.dir.remove(&sum_name(id))?;
                    self.segs.remove(i);
                    continue;
                }
                self.dir.replace(&log_name(id), &kept)?;
                self.dir
                    .replace(&sum_name(id), &serde_json::to_vec(&sum)?)?;
                self.segs[i].sum = Arc::new(sum);
                i += 1;
            }
        }
        Ok(dropped)
    }

    /// Records with a sequence number above `after`, oldest first.
    pub fn after(&self, after: u64) -> io::Result<Vec<Record>> {
        read_after(&*self.dir, &self.segs, after)
    }

    /// The directory, for readers.
    pub fn dir(&self) -> Arc<dyn Dir> {
        self.dir.clone()
    }
}

/// The share each stream may keep so that all together fit in `target`:
/// streams under it keep everything, the others are cut to it (max-min
/// fairness, "water filling").
pub fn fair_share(usage: &BTreeMap<String, Usage>, target: u64) -> u64 {
    let mut sizes: Vec<u64> = usage.values().map(Usage::total).collect();
    sizes.sort_unstable();
    let mut left = target;
    let mut n = sizes.len() as u64;
    for s in sizes {
        let even = left / n.max(1);
        if s > even {
            return even;
        }
        left -= s;
        n -= 1;
    }
    u64::MAX
}

/// Records above `after` in `segs`, oldest first.
pub fn read_after(dir: &dyn Dir, segs: &[Segment], after: u64) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for s in segs
        .iter()
        .filter(|s| s.sum.last_seq > after || s.sum.records == 0)
    {
        let bytes = match dir.read(&log_name(s.id)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for r in parse(&bytes).0.iter().filter(|r| r.seq > after) {
            match r.decode() {
                Ok(rec) => out.push(rec),
                Err(e) => log::warn!("journal record {} unreadable, skipped: {e}", r.seq),
            }
        }
    }
    Ok(out)
}

/// Newest first: the records of `segs` that `keep` wants, until it says
/// stop (returns false). `charger` and `after` skip segments that cannot
/// hold a match without reading them.
pub fn scan_back(
    dir: &dyn Dir,
    segs: &[Segment],
    charger: Option<&str>,
    after: u64,
    since_ms: Option<i64>,
    mut keep: impl FnMut(Record) -> bool,
) -> io::Result<()> {
    for s in segs.iter().rev() {
        if s.sum.records > 0 && s.sum.last_seq < after {
            break;
        }
        if since_ms.is_some_and(|t| s.sum.records > 0 && s.sum.last_ms < t) {
            break;
        }
        if charger.is_some_and(|c| s.sum.records > 0 && !s.sum.streams.contains_key(c)) {
            continue;
        }
        let bytes = match dir.read(&log_name(s.id)) {
            Ok(b) => b,
            // Retention removed it meanwhile: nothing of it is wanted.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let (raws, _) = parse(&bytes);
        for r in raws.iter().rev() {
            if r.seq < after {
                return Ok(());
            }
            if charger.is_some_and(|c| r.charger != Some(c)) {
                continue;
            }
            match r.decode() {
                Ok(rec) => {
                    if !keep(rec) {
                        return Ok(());
                    }
                }
                Err(e) => log::warn!("journal record {} unreadable, skipped: {e}", r.seq),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
