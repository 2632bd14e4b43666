//! `tally serve`: the long-running process.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tally_admin::ApiKeys;
use tally_api::AppState;
use tally_core::Role;
use tally_db::Database;
use tally_store::{DataDirLock, LockHolder, RawStore};
use tokio::sync::oneshot;

use crate::config::Config;

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Creates the first admin key on an empty database, prints it once and
/// writes it to `<data-dir>/admin-key` (mode 0600).
async fn ensure_admin_key(keys: &ApiKeys, data_dir: &Path) -> anyhow::Result<()> {
    if keys.any().await? {
        return Ok(());
    }
    let key = keys.create(Role::Admin, "first admin key").await?;
    let path = data_dir.join("admin-key");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{}", key.secret)?;
    f.sync_all()?;
    println!(
        "Created the first admin API key (shown once; also in {}):\n  {}",
        path.display(),
        key.secret
    );
    Ok(())
}

/// Runs the server until `shutdown` completes; sends the bound address on
/// `ready` once it accepts connections.
pub async fn run(
    cfg: Config,
    ready: Option<oneshot::Sender<SocketAddr>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            cfg.data_dir.display()
        )
    })?;
    let mut lock = DataDirLock::acquire(
        &cfg.data_dir,
        &LockHolder {
            pid: std::process::id(),
            command: "serve".into(),
            listen: Some(cfg.listen.clone()),
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}: stop the other process or use another --data-dir"))?;
    let db = Database::open(&cfg.database_url()).await?;
    let keys = ApiKeys::new(db.pool.clone());
    ensure_admin_key(&keys, &cfg.data_dir).await?;
    if let Some(file) = &cfg.rating.meters_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read rating.meters_file {}", file.display()))?;
        let set = tally_rate::plans::replace_meters(&db, &text)
            .await
            .with_context(|| format!("rating.meters_file {} is not usable", file.display()))?;
        tracing::info!(file = %file.display(), meters = set.meters.len(), "meter definitions loaded");
    }
    let metrics = metrics_builder()?.install_recorder().ok();
    let started = Instant::now();
    let store = RawStore::open(cfg.store_config(), db)
        .await
        .context("cannot open the raw usage store")?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "raw store open (log replayed)"
    );
    store.spawn_maintenance();
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another server using it? Pass --listen ADDR",
                cfg.listen
            )
        })?;
    let addr = listener.local_addr()?;
    lock.update(&LockHolder {
        pid: std::process::id(),
        command: "serve".into(),
        listen: Some(addr.to_string()),
    })
    .context("cannot record the server's address in the lock file")?;
    let state = Arc::new(AppState {
        store: store.clone(),
        keys,
        limits: cfg.api_limits(),
        metrics,
        started,
        rating: Some(tally_rate::RatingService {
            db: store.database().clone(),
            raw: store.objects().clone(),
            rated: cfg.rated_store()?,
            config: cfg.rating_config()?,
        }),
        invoice_settings: cfg.invoice_settings(),
        sessions: tally_api::ui::Sessions::default(),
        summaries: tally_show::summary_cache::SummaryCache::new(cfg.show.summary_cache_rows),
        response_check: response_check()?,
    });
    spawn_webhook_deliveries(store.database().clone());
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "tally listening");
    eprintln!(
        "tally listening on http://{addr} (data directory {})",
        cfg.data_dir.display()
    );
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    // Notifications from the bus, when configured. Stopping it mid-batch
    // is safe: unacknowledged messages are redelivered and deduplicated.
    let consumer = (!cfg.amqp.url.is_empty()).then(|| {
        tokio::spawn(tally_amqp::run(
            store.clone(),
            cfg.amqp.clone(),
            std::future::pending(),
        ))
    });
    axum::serve(listener, tally_api::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("the HTTP server failed")?;
    if let Some(c) = consumer {
        c.abort();
    }
    tracing::info!("shutting down: flushing the log to Parquet");
    store
        .shutdown()
        .await
        .context("flush at shutdown failed; the log will be replayed at next start")?;
    eprintln!("tally stopped cleanly");
    Ok(())
}

/// Delivers due webhook alerts every few seconds: new ones at once, failed
/// ones on their backoff schedule (the delivery log keeps every attempt).
fn spawn_webhook_deliveries(db: Database) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Err(e) = tally_bill::alerts::deliver_due(&db, chrono::Utc::now()).await {
                tracing::warn!(error = %e, "webhook deliveries failed; retrying later");
            }
        }
    });
}

/// With `TALLY_CHECK_RESPONSES=1`, every JSON answer is checked against the
/// OpenAPI document (a mismatch becomes a 500 that names it): for tests
/// and staging, not production, as it costs a validation per answer.
fn response_check() -> anyhow::Result<Option<Arc<tally_api::openapi::ResponseCheck>>> {
    if std::env::var("TALLY_CHECK_RESPONSES").as_deref() != Ok("1") {
        return Ok(None);
    }
    let check = tally_api::openapi::ResponseCheck::new()
        .map_err(|e| anyhow::anyhow!("the OpenAPI document does not compile to validators: {e}"))?;
    tracing::warn!(
        "TALLY_CHECK_RESPONSES=1: every JSON answer is checked against the OpenAPI document"
    );
    Ok(Some(Arc::new(check)))
}

/// Bucket bounds of the `_seconds` histograms: from a fast fsync (100 µs)
/// to a slow flush (a minute).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds of `tally_wal_group_records`: one record to the largest
/// group the log writer takes.
const GROUP_RECORDS_BUCKETS: &[f64] = &[
    1.0, 10.0, 100.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0, 50_000.0, 200_000.0,
];

/// The `/metrics` recorder. Histograms are Prometheus histograms (buckets),
/// not summaries: bucket counts add up across servers and over time, where
/// a summary's quantiles cannot, and rendering them does not copy and sort
/// every observation window on each scrape (a scrape every 20 ms, as the
/// notification benchmark does, made that a few percent of the consumer's
/// CPU).
fn metrics_builder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusBuilder> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("tally_wal_group_records".into()),
            GROUP_RECORDS_BUCKETS,
        )?)
}
