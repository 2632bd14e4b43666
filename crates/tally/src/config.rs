//! The configuration: one TOML file, every key overridable by a `TALLY_...`
//! environment variable (nested keys with `__`, e.g.
//! `TALLY_INGEST__MAX_BODY_BYTES`), then by command-line flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything configurable, with defaults that work on a laptop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where Tally keeps its data.
    pub data_dir: PathBuf,
    /// Address `tally serve` listens on.
    pub listen: String,
    /// Billing database URL; default: a SQLite file in the data directory.
    pub database_url: Option<String>,
    /// Where Parquet segments go; default: `<data_dir>/raw`.
    pub raw_store_url: Option<String>,
    /// `text` or `json` log lines.
    pub log_format: String,
    /// Ingest limits and dedupe.
    pub ingest: IngestConfig,
    /// Raw store tuning.
    pub store: StoreSection,
    /// The rating job.
    pub rating: RatingSection,
    /// Invoicing.
    pub billing: BillingSection,
    /// The RabbitMQ notification consumer (`tally serve` runs it when
    /// `amqp.url` is set).
    pub amqp: tally_amqp::AmqpConfig,
    /// The server and key the CLI asks instead of the data directory.
    pub client: ClientSection,
    /// What the API and dashboard show.
    pub show: ShowSection,
}

/// `[show]`: summaries and the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ShowSection {
    /// Summary answers `tally serve` remembers until the rated usage or
    /// the ownership behind them changes, counted in rows (an answer
    /// weighs its rows plus one); 0 computes every answer afresh.
    pub summary_cache_rows: u64,
}

impl Default for ShowSection {
    fn default() -> Self {
        ShowSection {
            summary_cache_rows: 200_000,
        }
    }
}

/// `[client]`: a running server the CLI asks by default (as if every
/// command that can ask one had `--server`), and the API key to ask with.
/// Flags and `TALLY_API_KEY` take precedence. A file holding a key should
/// be readable by its owner only (`chmod 600`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientSection {
    /// The server's base URL (`http://tally.example:8080`).
    pub server: Option<String>,
    /// The API key.
    pub api_key: Option<String>,
}

/// `[billing]`: the operator as printed on invoices, and number series.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BillingSection {
    /// Seller's legal name.
    pub seller_name: String,
    /// Seller's postal address, one element per line.
    pub seller_address: Vec<String>,
    /// Seller's billing e-mail.
    pub seller_email: Option<String>,
    /// Seller's VAT or tax id.
    pub seller_tax_id: Option<String>,
    /// Number series of credit notes (`CN` gives `CN-000001`).
    pub credit_note_series: String,
    /// Finalized periods an invoice run re-checks for late usage, which
    /// goes on the new invoice as correction lines.
    pub correction_periods: u32,
}

impl Default for BillingSection {
    fn default() -> Self {
        BillingSection {
            seller_name: "OpenStack cloud operator".into(),
            seller_address: Vec::new(),
            seller_email: None,
            seller_tax_id: None,
            credit_note_series: "CN".into(),
            correction_periods: 3,
        }
    }
}

/// `[rating]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RatingSection {
    /// Length of one rating period (`1h`, `15m`, `1d`).
    pub period: String,
    /// Partitions rated in parallel; 0 means one per core.
    pub partitions: usize,
    /// MiB the rating job may use: the scan's buffers and, per worker, one
    /// shuffle bucket (a larger range is split into more buckets).
    pub memory_limit_mb: usize,
    /// How far before a range to look for carried gauges and states
    /// (`2d`, `48h`).
    pub carry_lookback: String,
    /// Meter definitions (TOML) that `tally serve` puts in force at start;
    /// unset keeps the ones in force (the default OpenStack set at first).
    pub meters_file: Option<PathBuf>,
    /// How long line files of fully re-rated runs are kept (`1h`, `7d`).
    pub superseded_grace: String,
}

impl Default for RatingSection {
    fn default() -> Self {
        RatingSection {
            period: "1h".into(),
            partitions: 0,
            memory_limit_mb: 1024,
            carry_lookback: "2d".into(),
            meters_file: None,
            superseded_grace: "1h".into(),
        }
    }
}

/// Parses `90s`, `15m`, `1h`, `2d` (the rating module's format).
pub fn parse_duration(text: &str) -> anyhow::Result<chrono::Duration> {
    Ok(tally_rate::parse_duration(text)?)
}

/// `[ingest]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most records per request.
    pub max_batch_records: usize,
    /// Days a record id is remembered for dedupe.
    pub dedupe_window_days: u32,
    /// Most ids remembered.
    pub dedupe_max_keys: usize,
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreSection {
    /// Seal a log file at this size.
    pub wal_rotate_bytes: u64,
    /// ... or this age, seconds.
    pub flush_interval_secs: u64,
    /// zstd level of segments.
    pub zstd_level: i32,
    /// Compact a partition with this many small segments.
    pub compaction_min_segments: usize,
    /// Target rows of a compacted segment.
    pub compaction_target_rows: usize,
    /// Seconds between compaction passes.
    pub compaction_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./tally-data"),
            listen: "127.0.0.1:8080".into(),
            database_url: None,
            raw_store_url: None,
            log_format: "text".into(),
            ingest: IngestConfig::default(),
            store: StoreSection::default(),
            rating: RatingSection::default(),
            billing: BillingSection::default(),
            amqp: tally_amqp::AmqpConfig::default(),
            client: ClientSection::default(),
            show: ShowSection::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        let limits = tally_api::ApiLimits::default();
        let store = tally_store::StoreConfig::new(".");
        IngestConfig {
            max_body_bytes: limits.max_body_bytes,
            max_batch_records: limits.max_batch_records,
            dedupe_window_days: store.dedupe_window_days,
            dedupe_max_keys: store.dedupe_max_keys,
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        let s = tally_store::StoreConfig::new(".");
        StoreSection {
            wal_rotate_bytes: s.wal_rotate_bytes,
            flush_interval_secs: s.flush_interval.as_secs(),
            zstd_level: s.zstd_level,
            compaction_min_segments: s.compaction_min_segments,
            compaction_target_rows: s.compaction_target_rows,
            compaction_interval_secs: s.compaction_interval.as_secs(),
        }
    }
}

impl Config {
    /// Defaults, then the file, then `TALLY_*` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) => {
                anyhow::ensure!(
                    f.exists(),
                    "configuration file {} does not exist",
                    f.display()
                );
                fig = fig.merge(Toml::file(f));
            }
            None if Path::new("tally.toml").exists() => fig = fig.merge(Toml::file("tally.toml")),
            None => {}
        }
        fig = fig.merge(
            Env::prefixed("TALLY_")
                .ignore(&["config", "api_key", "log"])
                .split("__"),
        );
        fig.extract()
            .context("invalid configuration (file or TALLY_* variables)")
    }

    /// The billing database URL in force.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| tally_db::Database::sqlite_url_in(&self.data_dir))
    }

    /// The invoicing settings in force.
    pub fn invoice_settings(&self) -> tally_bill::invoices::InvoiceSettings {
        let b = &self.billing;
        tally_bill::invoices::InvoiceSettings {
            seller: tally_core::billing::Party {
                name: b.seller_name.clone(),
                address: b.seller_address.clone(),
                email: b.seller_email.clone(),
                tax_id: b.seller_tax_id.clone(),
            },
            credit_note_series: b.credit_note_series.clone(),
            correction_periods: b.correction_periods,
        }
    }

    /// The raw store settings in force.
    pub fn store_config(&self) -> tally_store::StoreConfig {
        let mut s = tally_store::StoreConfig::new(&self.data_dir);
        s.raw_url = self.raw_store_url.clone();
        s.wal_rotate_bytes = self.store.wal_rotate_bytes;
        s.flush_interval = Duration::from_secs(self.store.flush_interval_secs.max(1));
        s.zstd_level = self.store.zstd_level;
        s.compaction_min_segments = self.store.compaction_min_segments;
        s.compaction_target_rows = self.store.compaction_target_rows;
        s.compaction_interval = Duration::from_secs(self.store.compaction_interval_secs.max(1));
        s.dedupe_window_days = self.ingest.dedupe_window_days;
        s.dedupe_max_keys = self.ingest.dedupe_max_keys;
        s
    }

    /// The rating job settings in force.
    pub fn rating_config(&self) -> anyhow::Result<tally_rate::RatingConfig> {
        let mut r = tally_rate::RatingConfig::new(self.data_dir.join("tmp").join("rating-spill"));
        if self.rating.partitions > 0 {
            r.partitions = self.rating.partitions;
        }
        r.memory_limit = self.rating.memory_limit_mb.max(16) << 20;
        r.carry_lookback =
            parse_duration(&self.rating.carry_lookback).context("rating.carry_lookback")?;
        r.superseded_grace =
            parse_duration(&self.rating.superseded_grace).context("rating.superseded_grace")?;
        Ok(r)
    }

    /// The rating period in force.
    pub fn rating_period(&self) -> anyhow::Result<chrono::Duration> {
        parse_duration(&self.rating.period).context("rating.period")
    }

    /// Where rated-line files go: beside the raw store (`<data_dir>/rated`,
    /// or a `rated/` prefix next to a remote raw store's).
    pub fn rated_store(&self) -> anyhow::Result<tally_store::objects::RawObjects> {
        let url = match &self.raw_store_url {
            Some(raw) if raw.contains("://") && !raw.starts_with("file://") => {
                format!("{}/rated", raw.trim_end_matches('/'))
            }
            _ => format!("file://{}", self.data_dir.join("rated").display()),
        };
        tally_store::objects::RawObjects::open(&url)
            .with_context(|| format!("cannot open the rated-line store at {url}"))
    }

    /// The HTTP limits in force.
    pub fn api_limits(&self) -> tally_api::ApiLimits {
        tally_api::ApiLimits {
            max_body_bytes: self.ingest.max_body_bytes,
            max_batch_records: self.ingest.max_batch_records,
        }
    }
}

fn filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

fn init_logging_with(cfg: &Config, default_filter: &str) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(default_filter))
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Logging for the server: info and up, text or JSON lines on stderr.
pub fn init_logging(cfg: &Config) {
    init_logging_with(cfg, "info,sqlx=warn");
}

/// Logging for one-shot commands: warnings only, so output stays readable.
pub fn init_logging_quiet(cfg: &Config) {
    init_logging_with(cfg, "warn");
}

#[cfg(test)]
// figment's test jail returns its large error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "listen = \"0.0.0.0:9000\"\n[ingest]\nmax_body_bytes = 100\n",
            )?;
            jail.set_env("TALLY_INGEST__MAX_BATCH_RECORDS", "7");
            jail.set_env("TALLY_LISTEN", "127.0.0.1:9999");
            let c = Config::load(Some(Path::new("t.toml"))).unwrap();
            assert_eq!(c.listen, "127.0.0.1:9999");
            assert_eq!(c.ingest.max_body_bytes, 100);
            assert_eq!(c.ingest.max_batch_records, 7);
            assert_eq!(c.ingest.dedupe_window_days, 35);
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_reported() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TALLY_INGEST__MAX_BODY_BYTES", "lots");
            let err = Config::load(None).unwrap_err();
            let text = format!("{err:#}").to_lowercase();
            assert!(
                text.contains("max_body_bytes") && text.contains("tally_"),
                "{text}"
            );
            Ok(())
        });
    }
}
