//! Summary answers remembered until the data behind them changes.
//!
//! A dashboard asks the same few summaries again and again (each page is
//! four or five of them), and between two rating runs their answers do
//! not change. The database keeps a counter, `summary_version`, that moves
//! in the same transaction as anything that changes an answer: a rating
//! commit or a cell rebuild (tally-rate's `levels::mark_in`) and a change
//! of who owns a project (triggers on the ownership tables). An answer is
//! remembered under the counter's value read *before* it was computed, so
//! it can only be served while the data is as it was then, whichever
//! process (CLI, another server on the same PostgreSQL) changed it.
//!
//! The same counter spares the checks a day or month summary otherwise
//! makes first (`summary::count_current`: are every run's cells built,
//! is any day's level dirty): both can only find work after the counter
//! moved, so they run once per value, not once per summary.
//!
//! The key holds the caller's role with its scope (not the API key: two
//! keys of one account see the same answer) and the query with its range
//! resolved, so "this month" is not served across a month's end.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tally_core::{Identity, Role};
use tally_db::Database;
use tally_rate::plans::Owners;
use tally_store::objects::RawObjects;

use crate::ShowError;
use crate::summary::{self, Summary, SummaryQuery};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    version: i64,
    role: Role,
    query: SummaryQuery,
}

/// The ownership map and the `summary_version` it was read at.
type OwnersAt = (i64, Arc<Owners>);

/// Summaries with remembered answers; cheap to clone (one shared cache).
#[derive(Clone)]
pub struct SummaryCache {
    /// `None`: remembering is off, every call computes.
    answers: Option<moka::sync::Cache<Key, Arc<Summary>>>,
    /// The `summary_version` read before `count_current` last ran to the
    /// end: until the counter moves, the cells and levels are current.
    counted_at: Arc<AtomicI64>,
    /// Who owns which project, as read at a `summary_version`: ownership
    /// moves the counter (triggers), so the map serves every summary
    /// grouped by account until then instead of being read for each (a
    /// large cloud's every project, twice).
    owners: Arc<Mutex<Option<OwnersAt>>>,
}

impl SummaryCache {
    /// A cache holding answers of at most `max_rows` rows in all (an
    /// answer weighs its rows plus one); 0 turns remembering off. Answers
    /// nobody asked for in ten minutes are dropped, as are those of an old
    /// version once room is needed.
    pub fn new(max_rows: u64) -> SummaryCache {
        let answers = (max_rows > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_rows)
                .weigher(|_: &Key, s: &Arc<Summary>| {
                    u32::try_from(s.rows.len() + 1).unwrap_or(u32::MAX)
                })
                .time_to_idle(Duration::from_secs(600))
                .build()
        });
        SummaryCache {
            answers,
            counted_at: Arc::new(AtomicI64::new(i64::MIN)),
            owners: Arc::new(Mutex::new(None)),
        }
    }

    /// [`summary::summarize`], answered from memory when the same caller
    /// scope asked the same question since the data last changed. Shared,
    /// not copied: a page's answer can be ten thousand rows.
    pub async fn summarize(
        &self,
        db: &Database,
        rated: &RawObjects,
        identity: &Identity,
        query: &SummaryQuery,
        now: DateTime<Utc>,
    ) -> Result<Arc<Summary>, ShowError> {
        let (from, to) = summary::range(query, now)?;
        let version = tally_rate::levels::summary_version(db).await?;
        let compute = |query: SummaryQuery| async move {
            if summary::reads_cells(&query) && self.counted_at.load(Ordering::Acquire) != version {
                summary::count_current(db, rated).await?;
                // Read before the count: a change committed meanwhile moved
                // the counter past it, so the next call counts again.
                self.counted_at.store(version, Ordering::Release);
            }
            let owners = match summary::needs_owners(identity, &query) {
                true => Some(self.owners_at(db, version).await?),
                false => None,
            };
            // Empty maps allocate nothing.
            let none = Owners::default();
            let owners = owners.as_deref().unwrap_or(&none);
            summary::summarize_counted(db, rated, identity, &query, owners, now)
                .await
                .map(Arc::new)
        };
        let Some(answers) = &self.answers else {
            return compute(query.clone()).await;
        };
        let key = Key {
            version,
            role: identity.role.clone(),
            query: SummaryQuery {
                from: Some(from),
                to: Some(to),
                ..query.clone()
            },
        };
        if let Some(answer) = answers.get(&key) {
            metrics::counter!("tally_summary_answers_total", "from" => "memory").increment(1);
            return Ok(answer);
        }
        metrics::counter!("tally_summary_answers_total", "from" => "database").increment(1);
        let answer = compute(key.query.clone()).await?;
        answers.insert(key, answer.clone());
        Ok(answer)
    }

    /// Who owns which project at `version` (read before calling): the
    /// remembered map while the counter has not moved, else read afresh.
    /// Two callers may both read it after a change; the later one's map is
    /// kept, and both are at least as new as `version`.
    async fn owners_at(&self, db: &Database, version: i64) -> Result<Arc<Owners>, ShowError> {
        let remembered = self.owners.lock().ok().and_then(|o| o.clone());
        if let Some((at, owners)) = remembered
            && at == version
        {
            return Ok(owners);
        }
        let owners = Arc::new(Owners::load(db).await?);
        if let Ok(mut o) = self.owners.lock() {
            *o = Some((version, Arc::clone(&owners)));
        }
        Ok(owners)
    }
}

impl std::fmt::Debug for SummaryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SummaryCache")
            .field("entries", &self.answers.as_ref().map(|a| a.entry_count()))
            .finish()
    }
}
