//! Bulk work the store does behind ingestion, on threads of lower CPU
//! priority.
//!
//! Encoding a sealed log file into Parquet (a million records every ten
//! seconds under a steady stream of notifications) and freeing the memtable
//! it came from take a core for a second or two at a time. Nothing waits on
//! that work: the records are durable in the log already. At the same
//! priority as the consumer it took the cores from the consumer and the
//! broker in bursts (a fifth of `tally serve`'s CPU while consuming, see
//! docs/benchmarks.md). On a thread with a higher nice value the kernel
//! gives it the cores the ingest path leaves idle, and still a share (about
//! a tenth at nice 10) when there are none, so a flush always finishes.
//!
//! An import (`tally ingest`) is not background work: its caller waits for
//! the encoding, and at a lower priority the caller's own parsing would
//! starve it, so it stays on tokio's blocking pool.
//!
//! Each job gets a thread of its own rather than a pool: jobs come seconds
//! apart, and a lowered priority cannot be raised again by an unprivileged
//! process, so a pooled thread could not be handed back to other work.

use tokio::sync::oneshot;

/// How much lower than normal the background threads run (`nice`, 0 to
/// 19). At 10 the scheduler weighs a background thread about a tenth of a
/// normal one.
pub const BACKGROUND_NICE: i32 = 10;

/// Runs `job` on a new thread at [`BACKGROUND_NICE`] and returns its result.
/// `None` when the thread could not be started or the job panicked.
pub(crate) async fn run<T, F>(name: &str, job: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    match spawn_lowered(name, move || {
        let _ = tx.send(job());
    }) {
        Ok(()) => rx.await.ok(),
        Err(e) => {
            tracing::error!(error = %e, "cannot start a background thread of the raw store");
            None
        }
    }
}

/// Drops `value` on a background thread: freeing a memtable of a million
/// records (each with its own attribute map) takes the better part of a
/// second, which an async worker thread must not spend.
pub(crate) fn drop_later<T: Send + 'static>(value: T) {
    if let Err(e) = spawn_lowered("free", move || drop(value)) {
        // The value went with the closure that was not run, so it is freed
        // here anyway.
        tracing::warn!(error = %e, "cannot start a thread to free memory; freed in place");
    }
}

/// Starts `job` on a thread of its own named `tally-store-{name}`, which
/// lowers its own priority first.
fn spawn_lowered(name: &str, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("tally-store-{name}"))
        .spawn(move || {
            lower_priority();
            job();
        })
        .map(drop)
}

/// Raises the calling thread's nice value to [`BACKGROUND_NICE`] (never
/// lowers it: a thread inherits its creator's, which an operator may have
/// set higher). Linux keeps a nice value per thread; elsewhere this does
/// nothing.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; get/setpriority with a thread
        // id of the calling process only read or change that thread's nice
        // value.
        let result = unsafe {
            let tid = libc::gettid() as libc::id_t;
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid).max(BACKGROUND_NICE);
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if result != 0 {
            // Not fatal: the work runs at normal priority.
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot lower a background thread's priority"
            );
        }
    }
}

/// The calling thread's nice value (for tests).
#[cfg(all(test, target_os = "linux"))]
fn current_nice() -> i32 {
    // SAFETY: as in `lower_priority`; getpriority only reads.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_at_the_background_priority_and_callers_keep_theirs() {
        let caller = current_nice();
        let seen = run("test", current_nice).await.expect("the job ran");
        // A caller already at 10 or more (an unusual test runner) stays
        // where it was; otherwise the job ran at the background nice.
        assert_eq!(seen, caller.max(BACKGROUND_NICE));
        assert_eq!(current_nice(), caller, "the caller's priority is unchanged");
    }

    #[tokio::test]
    async fn a_panicking_job_is_reported_as_none() {
        let outcome: Option<()> = run("test", || panic!("boom")).await;
        assert!(outcome.is_none());
    }
}
