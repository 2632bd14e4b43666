//! Tally's raw usage store: the part that promises an acknowledged record is
//! never lost and never stored twice.
//!
//! Data path (see ARCHITECTURE.md for the whole picture):
//!
//! ```text
//! append ─► dedupe reserve ─► WAL frame + fdatasync (group commit) ─► ack
//!             │                                   │
//!             └──── commit key after fsync ◄──────┘──► memtable (readable)
//! sealed WAL file ─► Parquet segments (by event date) + key file ─► catalog tx ─► delete WAL file
//! import ─► dedupe reserve ─► Parquet segments + key file ─► catalog tx ─► ack
//! ```
//!
//! Modules: [`wal`] (log files and replay), [`codec`] (record bytes in the
//! log), [`dedupe`] (the ingest-window index), [`segment`] (Parquet),
//! [`catalog`] (segment rows in the billing database), `background`
//! (bulk work at a lower CPU priority), [`objects`] (where
//! files live), [`engine`] (the store that ties them together), [`lock`]
//! (one writer per data directory).

mod background;
pub mod catalog;
pub mod codec;
pub mod counters;
pub mod dedupe;
pub mod engine;
pub mod lock;
pub mod objects;
pub mod segment;
pub mod wal;

pub use counters::{IngestCounters, IngestCounts};
pub use engine::{
    AppendOutcome, EventFilter, EventPage, QueryCursor, RawStore, StoreConfig, StoreError,
    StoreStats,
};
pub use lock::{DataDirLock, LockError, LockHolder};
