//! The ingest-window dedupe index: which (source, id) pairs were accepted
//! recently, so a redelivered record is answered "duplicate" and not stored
//! twice.
//!
//! Keys are 128-bit XXH3 hashes of `source 0xFF id` (0xFF never occurs in
//! UTF-8, so the pair is unambiguous); at 10^10 keys the chance of any
//! collision is below 10^-18. Each key remembers the UTC day it was received
//! on; keys older than the window are evicted, and a hard cap on the number
//! of keys bounds memory even under a flood (oldest days go first; rating
//! deduplicates again over all time, so an early eviction costs storage, not
//! correctness).
//!
//! A key enters the index only once its record is durable: writers first
//! [`DedupeIndex::reserve`] keys (so two concurrent deliveries of one record
//! cannot both pass), then [`DedupeIndex::commit`] after the fsync or
//! [`DedupeIndex::release`] on failure.
//!
//! The index survives restarts through key files written next to each flush
//! (see [`write_key_file`]) plus the replay of the write-ahead log.

use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::path::Path;

use hashbrown::{HashMap, HashSet};
use xxhash_rust::xxh3::Xxh3;

/// A record key's 128-bit hash, as two words to keep map entries 8-aligned.
pub type KeyHash = (u64, u64);

/// Hashes a record's (source, id).
pub fn key_hash(source: &str, id: &str) -> KeyHash {
    let mut h = Xxh3::new();
    h.update(source.as_bytes());
    h.update(&[0xff]);
    h.update(id.as_bytes());
    let v = h.digest128();
    ((v >> 64) as u64, v as u64)
}

/// The keys are already uniform hashes: hashing them again is wasted work.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

type Build = BuildHasherDefault<PassThrough>;

/// Days since the Unix epoch; the index's unit of age.
pub type Day = i32;

/// The in-memory index.
pub struct DedupeIndex {
    seen: HashMap<KeyHash, Day, Build>,
    pending: HashSet<KeyHash, Build>,
    window_days: Day,
    max_keys: usize,
    /// Keys dropped before their window ended because of `max_keys`.
    pub evicted_early: u64,
}

impl DedupeIndex {
    /// An empty index keeping keys for `window_days` days, at most `max_keys`.
    pub fn new(window_days: u32, max_keys: usize) -> Self {
        DedupeIndex {
            seen: HashMap::default(),
            pending: HashSet::default(),
            window_days: window_days as Day,
            max_keys,
            evicted_early: 0,
        }
    }

    /// Number of keys remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `key` was accepted (durably) within the window.
    pub fn contains(&self, key: &KeyHash) -> bool {
        self.seen.contains_key(key)
    }

    /// Claims `key` for a write in progress. False when the key is known or
    /// already claimed by another write: the record is a duplicate.
    pub fn reserve(&mut self, key: KeyHash) -> bool {
        !self.seen.contains_key(&key) && self.pending.insert(key)
    }

    /// Records that the writes of `keys` are durable.
    pub fn commit(&mut self, keys: impl IntoIterator<Item = (KeyHash, Day)>) {
        for (k, day) in keys {
            self.pending.remove(&k);
            self.seen.insert(k, day);
        }
        self.enforce_cap();
    }

    /// Gives up claims whose write failed.
    pub fn release(&mut self, keys: impl IntoIterator<Item = KeyHash>) {
        for k in keys {
            self.pending.remove(&k);
        }
    }

    /// Adds keys known durable from before a restart.
    pub fn load(&mut self, keys: impl IntoIterator<Item = (KeyHash, Day)>) {
        for (k, day) in keys {
            let e = self.seen.entry(k).or_insert(day);
            *e = (*e).max(day);
        }
    }

    /// The first day still inside the window on `today`.
    pub fn window_start(&self, today: Day) -> Day {
        today - self.window_days + 1
    }

    /// Drops keys received before the window; then enforces the cap.
    pub fn evict(&mut self, today: Day) -> usize {
        let start = self.window_start(today);
        let before = self.seen.len();
        self.seen.retain(|_, day| *day >= start);
        let n = before - self.seen.len();
        self.enforce_cap();
        n
    }

    fn enforce_cap(&mut self) {
        while self.seen.len() > self.max_keys {
            let Some(oldest) = self.seen.values().min().copied() else {
                return;
            };
            let before = self.seen.len();
            self.seen.retain(|_, day| *day > oldest);
            self.evicted_early += (before - self.seen.len()) as u64;
        }
    }
}

const KEY_FILE_MAGIC: &[u8; 8] = b"TLYKEYS1";

/// Writes the keys of one flush durably to `path`.
pub fn write_key_file(path: &Path, keys: &[(KeyHash, Day)]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 + keys.len() * 20);
    buf.extend_from_slice(KEY_FILE_MAGIC);
    for ((a, b), day) in keys {
        buf.extend_from_slice(&a.to_le_bytes());
        buf.extend_from_slice(&b.to_le_bytes());
        buf.extend_from_slice(&day.to_le_bytes());
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        crate::wal::sync_dir(dir)?;
    }
    Ok(())
}

/// Reads a key file written by [`write_key_file`].
pub fn read_key_file(path: &Path) -> io::Result<Vec<(KeyHash, Day)>> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    if !buf.starts_with(KEY_FILE_MAGIC) || (buf.len() - 8) % 20 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a Tally key file", path.display()),
        ));
    }
    Ok(buf[8..]
        .chunks_exact(20)
        .map(|c| {
            let a = u64::from_le_bytes(c[0..8].try_into().expect("8"));
            let b = u64::from_le_bytes(c[8..16].try_into().expect("8"));
            let d = i32::from_le_bytes(c[16..20].try_into().expect("4"));
            ((a, b), d)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_and_id_are_not_confused() {
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
        assert_eq!(key_hash("a", "b"), key_hash("a", "b"));
    }

    #[test]
    fn reserve_blocks_a_second_claim_until_release() {
        let mut ix = DedupeIndex::new(35, 100);
        let k = key_hash("s", "1");
        assert!(ix.reserve(k));
        assert!(!ix.reserve(k), "a concurrent delivery is a duplicate");
        ix.release([k]);
        assert!(!ix.contains(&k), "a failed write is not remembered");
        assert!(ix.reserve(k));
        ix.commit([(k, 100)]);
        assert!(ix.contains(&k));
        assert!(!ix.reserve(k));
    }

    #[test]
    fn window_is_respected() {
        let mut ix = DedupeIndex::new(35, 100);
        let old = key_hash("s", "old");
        let edge = key_hash("s", "edge");
        ix.commit([(old, 100), (edge, 101)]);
        // On day 135 the window is days 101..=135.
        ix.evict(135);
        assert!(!ix.contains(&old));
        assert!(ix.contains(&edge));
    }

    #[test]
    fn cap_evicts_oldest_days_first() {
        let mut ix = DedupeIndex::new(35, 2);
        ix.commit([(key_hash("s", "a"), 1)]);
        ix.commit([(key_hash("s", "b"), 2)]);
        ix.commit([(key_hash("s", "c"), 3)]);
        assert_eq!(ix.len(), 2);
        assert!(!ix.contains(&key_hash("s", "a")));
        assert_eq!(ix.evicted_early, 1);
    }

    #[test]
    fn key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.keys");
        let keys = vec![(key_hash("s", "1"), 5), (key_hash("s", "2"), 6)];
        write_key_file(&p, &keys).unwrap();
        assert_eq!(read_key_file(&p).unwrap(), keys);
        std::fs::write(&p, b"junk").unwrap();
        assert!(read_key_file(&p).is_err());
    }
}
