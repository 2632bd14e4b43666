//! One writer per data directory.
//!
//! `tally serve` and a local `tally ingest` must not both write the same log
//! and catalog. The holder takes an exclusive advisory lock on
//! `<data-dir>/LOCK` (released by the kernel when the process dies, even by
//! `kill -9`) and writes who it is into the file, so the loser can say what
//! to do instead.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Who holds a data directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockHolder {
    /// Process id.
    pub pid: u32,
    /// What it is doing (`serve`, `ingest`, ...).
    pub command: String,
    /// The address a server listens on, when it is one.
    pub listen: Option<String>,
}

/// Failure to take the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("the data directory {dir} is in use by `tally {}` (pid {}){}", holder.command, holder.pid, holder.listen.as_ref().map(|l| format!(", listening on {l}")).unwrap_or_default())]
    Held {
        /// The directory.
        dir: PathBuf,
        /// Who holds it.
        holder: LockHolder,
    },
    /// The lock file could not be used.
    #[error("cannot lock the data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
}

impl DataDirLock {
    /// Takes the lock of `dir` (created if missing) for `holder`.
    pub fn acquire(dir: &Path, holder: &LockHolder) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = serde_json::from_str(&text).unwrap_or(LockHolder {
                    pid: 0,
                    command: "unknown".into(),
                    listen: None,
                });
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut lock = DataDirLock { file };
        lock.update(holder).map_err(io)?;
        Ok(lock)
    }

    /// Rewrites who holds the lock (a server learns its port after binding).
    pub fn update(&mut self, holder: &LockHolder) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(
            serde_json::to_string(holder)
                .expect("serializable")
                .as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_told_who_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let me = LockHolder {
            pid: 42,
            command: "serve".into(),
            listen: Some("127.0.0.1:8080".into()),
        };
        let held = DataDirLock::acquire(dir.path(), &me).unwrap();
        let err = DataDirLock::acquire(dir.path(), &me).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("tally serve") && msg.contains("127.0.0.1:8080"),
            "{msg}"
        );
        drop(held);
        DataDirLock::acquire(dir.path(), &me).unwrap();
    }
}
