//! The write-ahead log: where a record becomes durable before it is
//! acknowledged.
//!
//! The log is a directory of numbered files (`0000000000000042.wal`). The
//! group-commit writer appends one frame per group of requests and calls
//! `fdatasync` once for the whole group. A frame is
//!
//! ```text
//! u32 magic "TLY1" | u32 body length | u32 CRC-32 of (count + body) | u32 count | body
//! ```
//!
//! where the body is `count` records in the [`crate::codec`] form. Replay
//! reads frames until the first one that is short or fails its checksum: such
//! a frame is a write torn by a crash, which was never acknowledged (the
//! acknowledgement waits for the fsync), so it is cut off.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tally_core::UsageRecord;

use crate::codec::{self, CodecError};

const MAGIC: u32 = u32::from_le_bytes(*b"TLY1");
const HEADER: usize = 16;

/// The path of log file `seq` in `dir`.
pub fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.wal"))
}

/// The sequence numbers of the log files in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(seq) = stem.parse::<u64>()
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Whether any log file in `dir` holds bytes (records not yet flushed to
/// Parquet, unless a crash left only a torn frame). A missing directory has
/// none.
pub fn has_records(dir: &Path) -> bool {
    list(dir).is_ok_and(|seqs| {
        seqs.iter()
            .any(|&seq| std::fs::metadata(path(dir, seq)).is_ok_and(|m| m.len() > 0))
    })
}

/// Makes a directory entry change (create, rename, delete) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The log file currently being appended to.
pub struct WalFile {
    /// Its sequence number.
    pub seq: u64,
    file: File,
    /// Bytes written so far (all of them durable after `sync`).
    pub len: u64,
    /// Records written so far.
    pub records: u64,
}

impl WalFile {
    /// Creates log file `seq`; fails if it exists.
    pub fn create(dir: &Path, seq: u64) -> io::Result<WalFile> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path(dir, seq))?;
        sync_dir(dir)?;
        Ok(WalFile {
            seq,
            file,
            len: 0,
            records: 0,
        })
    }

    /// Writes one frame of `count` encoded records (not yet durable).
    pub fn append(&mut self, count: u32, body: &[u8]) -> io::Result<()> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&count.to_le_bytes());
        crc.update(body);
        let mut header = [0u8; HEADER];
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
        header[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
        header[12..16].copy_from_slice(&count.to_le_bytes());
        self.file.write_all(&header)?;
        self.file.write_all(body)?;
        self.len += (HEADER + body.len()) as u64;
        self.records += u64::from(count);
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// What replaying one log file found.
#[derive(Debug, Default)]
pub struct Replay {
    /// The records of every intact frame, in log order.
    pub records: Vec<UsageRecord>,
    /// Bytes cut off the end as a torn write.
    pub truncated_bytes: u64,
}

/// Errors of replaying a log file.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be read or truncated.
    #[error("cannot replay write-ahead log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A frame passed its checksum but did not decode.
    #[error("write-ahead log {path}: {source}")]
    Codec {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: CodecError,
    },
}

/// Reads every intact frame of a log file and cuts off a torn tail.
pub fn replay(file_path: &Path) -> Result<Replay, ReplayError> {
    let io_err = |source| ReplayError::Io {
        path: file_path.to_path_buf(),
        source,
    };
    let data = Bytes::from(std::fs::read(file_path).map_err(io_err)?);
    let mut out = Replay::default();
    let mut pos = 0usize;
    while pos < data.len() {
        let Some(header) = data.get(pos..pos + HEADER) else {
            break;
        };
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
        let (magic, len, crc, count) = (word(0), word(4) as usize, word(8), word(12));
        let Some(body) = data.get(pos + HEADER..pos + HEADER + len) else {
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&count.to_le_bytes());
        h.update(body);
        if magic != MAGIC || h.finalize() != crc {
            break;
        }
        let body = data.slice(pos + HEADER..pos + HEADER + len);
        let mut reader = codec::Reader::new(&body);
        for _ in 0..count {
            out.records
                .push(reader.record().map_err(|source| ReplayError::Codec {
                    path: file_path.to_path_buf(),
                    source,
                })?);
        }
        pos += HEADER + len;
    }
    if pos < data.len() {
        out.truncated_bytes = (data.len() - pos) as u64;
        let f = OpenOptions::new()
            .write(true)
            .open(file_path)
            .map_err(io_err)?;
        f.set_len(pos as u64).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample;

    fn frame(records: &[UsageRecord]) -> Vec<u8> {
        let mut body = Vec::new();
        for r in records {
            codec::encode(r, &mut body);
        }
        body
    }

    #[test]
    fn replays_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalFile::create(dir.path(), 7).unwrap();
        let a: Vec<_> = (0..3).map(sample).collect();
        let b: Vec<_> = (3..5).map(sample).collect();
        w.append(3, &frame(&a)).unwrap();
        w.append(2, &frame(&b)).unwrap();
        w.sync().unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![7]);
        let r = replay(&path(dir.path(), 7)).unwrap();
        assert_eq!(r.records.len(), 5);
        assert_eq!(r.records[4], sample(4));
        assert_eq!(r.truncated_bytes, 0);
    }

    #[test]
    fn torn_tail_is_cut_at_every_possible_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalFile::create(dir.path(), 1).unwrap();
        w.append(2, &frame(&[sample(0), sample(1)])).unwrap();
        let first_len = w.len;
        w.append(1, &frame(&[sample(2)])).unwrap();
        w.sync().unwrap();
        let full = std::fs::read(path(dir.path(), 1)).unwrap();
        for cut in first_len as usize..full.len() {
            std::fs::write(path(dir.path(), 1), &full[..cut]).unwrap();
            let r = replay(&path(dir.path(), 1)).unwrap();
            assert_eq!(r.records.len(), 2, "cut at {cut}");
            assert_eq!(
                std::fs::metadata(path(dir.path(), 1)).unwrap().len(),
                first_len
            );
        }
    }

    #[test]
    fn corrupted_byte_stops_replay_at_that_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalFile::create(dir.path(), 1).unwrap();
        w.append(1, &frame(&[sample(0)])).unwrap();
        let first_len = w.len as usize;
        w.append(1, &frame(&[sample(1)])).unwrap();
        w.sync().unwrap();
        let mut bytes = std::fs::read(path(dir.path(), 1)).unwrap();
        bytes[first_len + HEADER + 5] ^= 0xff;
        std::fs::write(path(dir.path(), 1), &bytes).unwrap();
        assert_eq!(replay(&path(dir.path(), 1)).unwrap().records.len(), 1);
    }
}
