//! What ingest has seen since the process started, per outcome: what
//! `GET /v1/ingest/status` and the operator's overview report. Every path
//! into the store counts here: HTTP, files and the notification consumer.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Counters shared by every ingest path of one process.
#[derive(Debug)]
pub struct IngestCounters {
    started: DateTime<Utc>,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    ignored: AtomicU64,
    dead_lettered: AtomicU64,
    last_accepted_us: AtomicI64,
}

/// A snapshot of [`IngestCounters`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestCounts {
    /// Since when (the process start).
    pub since: DateTime<Utc>,
    /// Records made durable.
    pub accepted: u64,
    /// Records already stored (same source and id), not stored again.
    pub duplicates: u64,
    /// Records refused with a per-record error (HTTP and files).
    pub rejected: u64,
    /// Notifications of event types Tally does not bill (not an error).
    pub ignored: u64,
    /// Notifications moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// When a record was last accepted.
    pub last_accepted_at: Option<DateTime<Utc>>,
}

impl Default for IngestCounters {
    fn default() -> Self {
        IngestCounters {
            started: Utc::now(),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            last_accepted_us: AtomicI64::new(i64::MIN),
        }
    }
}

impl IngestCounters {
    /// Records stored and duplicates found by one append or import.
    pub fn stored(&self, accepted: u64, duplicates: u64) {
        self.accepted.fetch_add(accepted, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        if accepted > 0 {
            self.last_accepted_us
                .fetch_max(Utc::now().timestamp_micros(), Ordering::Relaxed);
        }
    }

    /// Records refused.
    pub fn rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// Notifications ignored.
    pub fn ignored(&self, n: u64) {
        self.ignored.fetch_add(n, Ordering::Relaxed);
    }

    /// Notifications dead-lettered.
    pub fn dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> IngestCounts {
        let last = self.last_accepted_us.load(Ordering::Relaxed);
        IngestCounts {
            since: self.started,
            accepted: self.accepted.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            last_accepted_at: (last != i64::MIN)
                .then(|| DateTime::from_timestamp_micros(last))
                .flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_outcome() {
        let c = IngestCounters::default();
        assert_eq!(c.snapshot().last_accepted_at, None);
        c.stored(5, 2);
        c.stored(0, 3);
        c.rejected(1);
        c.ignored(4);
        c.dead_lettered(1);
        let s = c.snapshot();
        assert_eq!(
            (
                s.accepted,
                s.duplicates,
                s.rejected,
                s.ignored,
                s.dead_lettered
            ),
            (5, 5, 1, 4, 1)
        );
        assert!(s.last_accepted_at.is_some());
    }
}
