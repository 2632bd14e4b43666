//! `tally rate`, `tally lines` and the plan commands that touch stored
//! configuration (`plan apply`, `plan import-cloudkitty`, `plan list`,
//! `plan simulate`).
//!
//! Commands that only read or change the billing database (lines, plans,
//! simulation) work beside a running server: SQLite serializes writers.
//! `tally rate` writes rated lines from the raw store, so it either takes
//! the data directory (replaying any log first) or asks a server with
//! `--server`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tally_core::{Identity, Role};
use tally_db::Database;
use tally_rate::service::{LineFilter, Simulation};
use tally_rate::{RatingService, RatingWindow};
use tally_store::{DataDirLock, LockHolder, RawStore};

use crate::client;
use crate::config::{Config, parse_duration};
use crate::output::OutputFormat;

/// A time range given as `--period YYYY-MM` or `--from`/`--to`.
#[derive(clap::Args, Debug, Clone)]
pub struct RangeArgs {
    /// A calendar month (UTC), e.g. 2026-10.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub period: Option<String>,
    /// Start (RFC 3339, inclusive).
    #[arg(long, requires = "to")]
    pub from: Option<DateTime<Utc>>,
    /// End (RFC 3339, exclusive).
    #[arg(long, requires = "from")]
    pub to: Option<DateTime<Utc>>,
}

impl RangeArgs {
    /// The range, if one was given.
    pub fn range(&self) -> anyhow::Result<Option<(DateTime<Utc>, DateTime<Utc>)>> {
        if let Some(p) = &self.period {
            let label = p
                .parse::<tally_core::billing::PeriodLabel>()
                .with_context(|| format!("--period '{p}'"))?;
            let month = tally_core::billing::BillingPeriod::new(label, 1, chrono_tz::Tz::UTC)?;
            return Ok(Some((month.start, month.end)));
        }
        Ok(self.from.zip(self.to))
    }

    pub(crate) fn required(&self) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
        self.range()?
            .context("give the range: --period YYYY-MM, or --from and --to (RFC 3339)")
    }
}

/// Arguments of `tally rate`.
#[derive(clap::Args, Debug)]
pub struct RateArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    /// Rating period length (default from `rating.period`, 1h).
    #[arg(long)]
    pub rating_period: Option<String>,
    #[command(flatten)]
    pub remote: client::ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `tally lines`.
#[derive(clap::Args, Debug)]
pub struct LinesArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    /// Only this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only this resource.
    #[arg(long)]
    pub resource: Option<String>,
    /// Only this rated meter.
    #[arg(long)]
    pub meter: Option<String>,
    /// Most lines printed.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Lines skipped first.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    #[command(flatten)]
    pub remote: client::ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: crate::output::ReportFormat,
}

/// The rating service over the configured stores, without taking the data
/// directory (for commands that do not write raw data).
async fn service(
    cfg: &Config,
    db: Database,
    raw: tally_store::objects::RawObjects,
) -> anyhow::Result<RatingService> {
    Ok(RatingService {
        db,
        raw,
        rated: cfg.rated_store()?,
        config: cfg.rating_config()?,
    })
}

async fn read_only_service(cfg: &Config) -> anyhow::Result<RatingService> {
    let db = Database::open(&cfg.database_url()).await?;
    let raw_url = cfg
        .raw_store_url
        .clone()
        .unwrap_or_else(|| format!("file://{}", cfg.data_dir.join("raw").display()));
    let raw = tally_store::objects::RawObjects::open(&raw_url)?;
    service(cfg, db, raw).await
}

fn window(cfg: &Config, range: &RangeArgs, period: Option<&str>) -> anyhow::Result<RatingWindow> {
    let (from, to) = range.required()?;
    let period = match period {
        Some(p) => parse_duration(p)?,
        None => cfg.rating_period()?,
    };
    Ok(RatingService::window(from, to, Some(period))?)
}

/// Runs `tally rate`.
pub async fn rate(cfg: Config, args: RateArgs) -> anyhow::Result<()> {
    let run: serde_json::Value = match args.remote.connect(&cfg)? {
        Some(server) => {
            let (from, to) = args.range.required()?;
            let body = serde_json::json!({
                "from": from,
                "to": to,
                "rating_period": args.rating_period,
            });
            server
                .json(
                    server
                        .request(reqwest::Method::POST, "/v1/rating/runs")
                        .json(&body),
                )
                .await?
        }
        None => {
            let window = window(&cfg, &args.range, args.rating_period.as_deref())?;
            let _lock = DataDirLock::acquire(
                &cfg.data_dir,
                &LockHolder {
                    pid: std::process::id(),
                    command: "rate".into(),
                    listen: None,
                },
            )
            .map_err(|e| anyhow::anyhow!("{e}: ask it with --server http://ADDR instead"))?;
            // Records still in a write-ahead log (a server stopped before
            // flushing) must reach Parquet first; opening the store replays
            // them. Without logs, opening it would only load the dedupe
            // index, which rating does not need.
            if tally_store::wal::has_records(&cfg.data_dir.join("wal")) {
                let db = Database::open(&cfg.database_url()).await?;
                RawStore::open(cfg.store_config(), db)
                    .await
                    .context("cannot open the raw usage store")?
                    .shutdown()
                    .await?;
            }
            let svc = read_only_service(&cfg).await?;
            let mut run = serde_json::to_value(svc.rate(window).await?)?;
            // What the server does after a run: prepaid drawdowns, budgets.
            let after = tally_bill::after_rating(&svc.db, &svc.rated, chrono::Utc::now())
                .await
                .context("rated, but prepaid drawdowns and budget checks failed")?;
            run["billing"] = serde_json::to_value(after)?;
            run
        }
    };
    match args.output {
        OutputFormat::Json => println!("{run}"),
        OutputFormat::Table => {
            let s = |k: &str| match &run[k] {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            println!(
                "run {}: {} to {}, {} records ({} duplicates) -> {} lines ({} unpriced, {} in error), amount {} {}",
                s("run_id"),
                s("from"),
                s("to"),
                s("records_read"),
                s("duplicates"),
                s("lines"),
                s("unpriced_lines"),
                s("error_lines"),
                s("amount"),
                s("currency"),
            );
            for a in run["billing"]["alerts"].as_array().into_iter().flatten() {
                println!("alert: {}", a["message"].as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// Runs `tally lines`.
pub async fn lines(cfg: Config, args: LinesArgs) -> anyhow::Result<()> {
    let range = args.range.range()?;
    let page: serde_json::Value = match args.remote.connect(&cfg)? {
        Some(server) => {
            let mut q: Vec<(&str, String)> = vec![
                ("limit", args.limit.to_string()),
                ("offset", args.offset.to_string()),
            ];
            let opt = [
                ("project_id", args.project.clone()),
                ("resource_id", args.resource.clone()),
                ("meter", args.meter.clone()),
                ("from", range.map(|r| r.0.to_rfc3339())),
                ("to", range.map(|r| r.1.to_rfc3339())),
            ];
            q.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
            server
                .json(
                    server
                        .request(reqwest::Method::GET, "/v1/rated-lines")
                        .query(&q),
                )
                .await?
        }
        None => {
            let svc = read_only_service(&cfg).await?;
            let operator = Identity {
                principal: "local".into(),
                role: Role::Admin,
            };
            let filter = LineFilter {
                from: range.map(|r| r.0),
                to: range.map(|r| r.1),
                project_id: args.project.clone(),
                resource_id: args.resource.clone(),
                meter: args.meter.clone(),
                offset: args.offset,
                limit: Some(args.limit),
            };
            serde_json::to_value(svc.lines(&operator, &filter).await?)?
        }
    };
    match args.output {
        crate::output::ReportFormat::Json => println!("{page}"),
        crate::output::ReportFormat::Csv => {
            let lines: Vec<tally_core::RatedLine> = serde_json::from_value(page["lines"].clone())?;
            tally_show::csv_export::rated_lines(&lines, std::io::stdout().lock())?;
        }
        crate::output::ReportFormat::Table => {
            let s = |v: &serde_json::Value, k: &str| match &v[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!(
                "{:<20}  {:<20}  {:<24}  {:<22}  {:>14}  {:<10}  {:>14}  {:<4}  {:<16}  line id (tally explain ID)",
                "period start",
                "project",
                "resource",
                "meter",
                "quantity",
                "unit",
                "amount",
                "cur",
                "rule"
            );
            for l in page["lines"].as_array().into_iter().flatten() {
                println!(
                    "{:<20}  {:<20}  {:<24}  {:<22}  {:>14}  {:<10}  {:>14}  {:<4}  {:<16}  {}",
                    s(l, "period_start"),
                    s(l, "project_id"),
                    s(l, "resource_id"),
                    s(l, "meter"),
                    trim(&s(l, "quantity")),
                    s(l, "unit"),
                    trim(&s(l, "amount")),
                    s(l, "currency"),
                    s(l, "rule"),
                    s(l, "line_id"),
                );
            }
            println!("{} lines, amount {}", s(&page, "total"), s(&page, "amount"));
        }
    }
    Ok(())
}

/// Shortens a full-precision decimal for a table (JSON keeps every digit).
fn trim(text: &str) -> String {
    match text.split_once('.') {
        Some((i, f)) if f.len() > 6 => format!("{i}.{}…", &f[..6]),
        _ => text.to_string(),
    }
}

/// `tally plan apply`.
pub async fn plan_apply(
    cfg: Config,
    file: PathBuf,
    make_default: bool,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let svc = read_only_service(&cfg).await?;
    match tally_rate::plans::apply_plan(&svc.db, &text, make_default).await {
        Ok(plan) => {
            println!(
                "applied plan {} ({} versions, currency {})",
                plan.id,
                plan.versions.len(),
                plan.currency
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}; the plans in force are unchanged", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `tally plan import-cloudkitty`.
pub async fn plan_import_cloudkitty(
    cfg: Config,
    file: PathBuf,
    id: String,
    currency: String,
    make_default: bool,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let currency: tally_core::Currency = currency.parse().context("--currency")?;
    let svc = read_only_service(&cfg).await?;
    match tally_rate::plans::import_cloudkitty(&svc.db, &id, currency, &text, make_default).await {
        Ok(plan) => {
            println!(
                "imported plan {} from CloudKitty: {} services priced ({})",
                plan.id,
                plan.cloudkitty.len(),
                plan.cloudkitty
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}; the plans in force are unchanged", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `tally plan list`.
pub async fn plan_list(cfg: Config, output: OutputFormat) -> anyhow::Result<()> {
    let svc = read_only_service(&cfg).await?;
    let plans = tally_rate::plans::list_plans(&svc.db).await?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&plans)?),
        OutputFormat::Table => {
            println!(
                "{:<24}  {:<10}  {:<8}  {:<7}  applied",
                "plan", "format", "currency", "default"
            );
            for p in plans {
                println!(
                    "{:<24}  {:<10}  {:<8}  {:<7}  {}",
                    p.plan_id,
                    p.format,
                    p.currency,
                    if p.is_default { "yes" } else { "" },
                    p.applied_at
                );
            }
        }
    }
    Ok(())
}

/// `tally plan simulate`.
pub async fn plan_simulate(
    cfg: Config,
    plan_file: PathBuf,
    range: RangeArgs,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&plan_file)
        .with_context(|| format!("cannot read {}", plan_file.display()))?;
    let svc = read_only_service(&cfg).await?;
    let meters = tally_rate::plans::current_meters(&svc.db).await?;
    let candidate = match tally_price::PricePlan::from_toml(&text, Some(&meters.names())) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {e}", plan_file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let window = window(&cfg, &range, None)?;
    let sim: Simulation = svc.simulate(candidate, window).await?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&sim)?),
        OutputFormat::Table => {
            println!(
                "{:<32}  {:<24}  {:>16}  {:>16}  {:>16}",
                "project", "meter", "current", "candidate", "difference"
            );
            for r in &sim.rows {
                println!(
                    "{:<32}  {:<24}  {:>16}  {:>16}  {:>16}",
                    r.project_id,
                    r.meter,
                    trim(&r.current.normalize().to_string()),
                    trim(&r.candidate.normalize().to_string()),
                    trim(&r.difference.normalize().to_string()),
                );
            }
            println!(
                "total: current {}  candidate {}  difference {}",
                sim.current_total.normalize(),
                sim.candidate_total.normalize(),
                (sim.candidate_total - sim.current_total).normalize()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
