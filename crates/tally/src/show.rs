//! `tally costs`, `tally usage` and `tally export`: what was used and what
//! it costs, from the data directory or a running server.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tally_core::billing::PeriodLabel;
use tally_core::{Identity, Role};
use tally_db::Database;
use tally_show::focus::{self, ExportOptions};
use tally_show::summary::{self, Summary, SummaryQuery};

use crate::client;
use crate::config::Config;
use crate::output::ReportFormat;

/// Arguments shared by `tally costs` and `tally usage`.
#[derive(clap::Args, Debug)]
pub struct SummaryArgs {
    /// A calendar month (YYYY-MM), instead of --from/--to.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub period: Option<String>,
    /// Start (RFC 3339); default the start of this month.
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (RFC 3339); default the end of this month.
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
    /// Comma-separated dimensions: account, project, service, meter,
    /// resource, or an attribute name (flavor_name, volume_type,
    /// availability_zone, region).
    #[arg(long, default_value = "")]
    pub group_by: String,
    /// hour, day, month or total.
    #[arg(long, default_value = "total")]
    pub bucket: String,
    /// Only this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only this billing account's projects.
    #[arg(long)]
    pub account: Option<String>,
    /// Only this service (Compute, Block Storage, Images, Networking,
    /// Object Storage, Other).
    #[arg(long)]
    pub service: Option<String>,
    /// Only this meter.
    #[arg(long)]
    pub meter: Option<String>,
    /// Only this resource.
    #[arg(long)]
    pub resource: Option<String>,
    /// Only lines whose attribute has a value: NAME=VALUE (repeatable).
    #[arg(long = "attribute", value_name = "NAME=VALUE")]
    pub attributes: Vec<String>,
    /// Rows skipped first.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Most rows printed.
    #[arg(long, default_value_t = summary::DEFAULT_LIMIT)]
    pub limit: usize,
    #[command(flatten)]
    pub remote: client::ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: ReportFormat,
}

/// A range whose ends may be left to the default.
type OpenRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

impl SummaryArgs {
    fn range(&self) -> anyhow::Result<OpenRange> {
        match &self.period {
            Some(p) => {
                let label: PeriodLabel = p.parse().with_context(|| format!("--period '{p}'"))?;
                let month = tally_core::billing::BillingPeriod::new(label, 1, chrono_tz::Tz::UTC)?;
                Ok((Some(month.start), Some(month.end)))
            }
            None => Ok((self.from, self.to)),
        }
    }

    fn query(&self, usage: bool) -> anyhow::Result<SummaryQuery> {
        let (from, to) = self.range()?;
        let mut group_by = summary::parse_group_by(&self.group_by)?;
        if usage && !group_by.contains(&summary::Dimension::Meter) {
            group_by.push(summary::Dimension::Meter);
        }
        let mut attributes = BTreeMap::new();
        for a in &self.attributes {
            let (k, v) = a
                .split_once('=')
                .with_context(|| format!("--attribute '{a}' is not NAME=VALUE"))?;
            attributes.insert(k.to_string(), v.to_string());
        }
        Ok(SummaryQuery {
            from,
            to,
            group_by,
            bucket: self.bucket.parse()?,
            project_id: self.project.clone(),
            account_id: self.account.clone(),
            service: self.service.clone(),
            meter: self.meter.clone(),
            resource_id: self.resource.clone(),
            attributes,
            offset: self.offset,
            limit: Some(self.limit),
        })
    }

    /// The query string of the same request to `GET /v1/costs`.
    fn params(&self, usage: bool) -> anyhow::Result<Vec<(String, String)>> {
        let q = self.query(usage)?;
        let mut p: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                p.push((k.to_string(), v));
            }
        };
        push("from", q.from.map(|t| t.to_rfc3339()));
        push("to", q.to.map(|t| t.to_rfc3339()));
        push(
            "group_by",
            Some(
                q.group_by
                    .iter()
                    .map(|d| d.key())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        );
        push("bucket", Some(self.bucket.clone()));
        push("project_id", q.project_id);
        push("account_id", q.account_id);
        push("service", q.service);
        push("meter", q.meter);
        push("resource_id", q.resource_id);
        push("offset", Some(q.offset.to_string()));
        push("limit", q.limit.map(|l| l.to_string()));
        for (k, v) in q.attributes {
            p.push((format!("attr.{k}"), v));
        }
        Ok(p)
    }
}

/// The identity of a local command: the operator at the machine.
pub fn local_operator() -> Identity {
    Identity {
        principal: "local-cli".into(),
        role: Role::Admin,
    }
}

/// Runs `tally costs` (or `tally usage` when `usage`).
pub async fn run_summary(cfg: Config, args: SummaryArgs, usage: bool) -> anyhow::Result<()> {
    let summary: serde_json::Value = match args.remote.connect(&cfg)? {
        Some(server) => {
            let path = if usage { "/v1/usage" } else { "/v1/costs" };
            server
                .json(
                    server
                        .request(reqwest::Method::GET, path)
                        .query(&args.params(usage)?),
                )
                .await?
        }
        None => {
            let db = Database::open(&cfg.database_url()).await?;
            let rated = cfg.rated_store()?;
            let s: Summary = summary::summarize(
                &db,
                &rated,
                &local_operator(),
                &args.query(usage)?,
                Utc::now(),
            )
            .await?;
            serde_json::to_value(s)?
        }
    };
    print_summary(&summary, args.output)
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints a summary document (from the data layer or a server alike).
fn print_summary(s: &serde_json::Value, format: ReportFormat) -> anyhow::Result<()> {
    if format == ReportFormat::Json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let mut columns: Vec<String> = Vec::new();
    let bucketed = s["bucket"].as_str().is_some_and(|b| b != "total");
    if bucketed {
        columns.push("bucket_start".into());
    }
    for g in s["group_by"].as_array().into_iter().flatten() {
        columns.push(text(g));
    }
    columns.extend(
        ["quantity", "unit", "amount", "currency", "lines"]
            .iter()
            .map(|c| c.to_string()),
    );
    let rows: Vec<Vec<String>> = s["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| columns.iter().map(|c| text(&r[c])).collect())
        .collect();
    let mut out = std::io::stdout().lock();
    if format == ReportFormat::Csv {
        let mut w = csv::Writer::from_writer(&mut out);
        w.write_record(&columns)?;
        for r in &rows {
            w.write_record(r)?;
        }
        w.flush()?;
        return Ok(());
    }
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(&columns))?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    let totals: Vec<String> = s["totals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| format!("{} {}", text(&t["amount"]), text(&t["currency"])))
        .collect();
    writeln!(
        out,
        "{} of {} rows, {} to {}; total {}",
        rows.len(),
        text(&s["total_rows"]),
        text(&s["from"]),
        text(&s["to"]),
        if totals.is_empty() {
            "0".to_string()
        } else {
            totals.join(", ")
        }
    )?;
    Ok(())
}

/// `tally export ...`
#[derive(clap::Subcommand, Debug)]
pub enum ExportCommand {
    /// FOCUS 1.2 cost and usage rows of a billing period's invoices
    /// (docs/focus.md).
    Focus {
        /// The billing period (YYYY-MM).
        #[arg(long)]
        period: String,
        /// csv or parquet.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Also draft invoices (their figures may still change).
        #[arg(long)]
        include_drafts: bool,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        remote: client::ServerArgs,
    },
}

/// Runs `tally export`.
pub async fn run_export(cfg: Config, command: ExportCommand) -> anyhow::Result<()> {
    let ExportCommand::Focus {
        period,
        format,
        include_drafts,
        out,
        remote,
    } = command;
    if format != "csv" && format != "parquet" {
        anyhow::bail!("--format '{format}' is not csv or parquet");
    }
    let bytes: Vec<u8> = match remote.connect(&cfg)? {
        Some(server) => {
            let resp = server
                .request(reqwest::Method::GET, "/v1/exports/focus")
                .query(&[
                    ("period", period.as_str()),
                    ("format", format.as_str()),
                    (
                        "include_drafts",
                        if include_drafts { "true" } else { "false" },
                    ),
                ])
                .send()
                .await?;
            client::check(resp).await?.bytes().await?.to_vec()
        }
        None => {
            let label: PeriodLabel = period.parse()?;
            let db = Database::open(&cfg.database_url()).await?;
            let rated = cfg.rated_store()?;
            let rows = focus::period_rows(
                &db,
                &rated,
                &local_operator(),
                label,
                ExportOptions { include_drafts },
            )
            .await?;
            let mut buf = Vec::new();
            if format == "csv" {
                focus::write_csv(&rows, &mut buf)?;
            } else {
                focus::write_parquet(&rows, &mut buf)?;
            }
            buf
        }
    };
    match out {
        Some(path) => {
            std::fs::write(&path, &bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
        }
        None => std::io::stdout().lock().write_all(&bytes)?,
    }
    Ok(())
}

/// Arguments of `tally explain`.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The line's id, as `tally lines` lists it
    /// (PROJECT~RESOURCE~METER~YYYYMMDDTHHMMSSZ); or name the line with
    /// --project, --resource, --meter and --at.
    #[arg(required_unless_present_all = ["project", "resource", "meter", "at"], conflicts_with_all = ["project", "resource", "meter", "at"])]
    pub line_id: Option<String>,
    /// The line's project.
    #[arg(long)]
    pub project: Option<String>,
    /// The line's resource.
    #[arg(long)]
    pub resource: Option<String>,
    /// The line's rated meter.
    #[arg(long)]
    pub meter: Option<String>,
    /// Any instant inside the line's rating period (RFC 3339).
    #[arg(long)]
    pub at: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub remote: client::ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: ReportFormat,
}

/// Runs `tally explain`: the run, meter, plan rule and raw records behind a
/// rated line.
pub async fn run_explain(cfg: Config, args: ExplainArgs) -> anyhow::Result<()> {
    let line = match &args.line_id {
        Some(id) => {
            let (project_id, resource_id, meter, at) =
                tally_core::parse_line_id(id).map_err(|e| anyhow::anyhow!(e))?;
            tally_show::explain::LineRef {
                project_id,
                resource_id,
                meter,
                at,
            }
        }
        // clap requires all four when no id is given.
        None => tally_show::explain::LineRef {
            project_id: args.project.clone().unwrap_or_default(),
            resource_id: args.resource.clone().unwrap_or_default(),
            meter: args.meter.clone().unwrap_or_default(),
            at: args.at.unwrap_or_default(),
        },
    };
    let at = line.at.to_rfc3339();
    let body: serde_json::Value = match args.remote.connect(&cfg)? {
        Some(server) => {
            server
                .json(server.request(reqwest::Method::GET, "/v1/explain").query(&[
                    ("project_id", line.project_id.as_str()),
                    ("resource_id", line.resource_id.as_str()),
                    ("meter", line.meter.as_str()),
                    ("at", at.as_str()),
                ]))
                .await?
        }
        None => {
            let _lock = tally_store::DataDirLock::acquire(
                &cfg.data_dir,
                &tally_store::LockHolder {
                    pid: std::process::id(),
                    command: "explain".into(),
                    listen: None,
                },
            )
            .map_err(|e| anyhow::anyhow!("{e}: ask it with --server http://ADDR instead"))?;
            let db = Database::open(&cfg.database_url()).await?;
            let rated = cfg.rated_store()?;
            let lookback = cfg.rating_config()?.carry_lookback;
            let store = tally_store::RawStore::open(cfg.store_config(), db.clone()).await?;
            let found = tally_show::explain::explain_line(
                &db,
                &rated,
                &store,
                &local_operator(),
                &line,
                lookback,
            )
            .await;
            store.shutdown().await?;
            let e = found?.with_context(|| {
                format!(
                    "no current rated line of {} {} {} at {at}: list them with `tally lines`",
                    line.project_id, line.resource_id, line.meter
                )
            })?;
            tally_api::show::explanation_json(e)
        }
    };
    if args.output != ReportFormat::Table {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    for l in body["lines"].as_array().into_iter().flatten() {
        println!(
            "line  {} {} {} {} to {}: {} {} -> {} {} ({} records{})",
            text(&l["project_id"]),
            text(&l["resource_id"]),
            text(&l["meter"]),
            text(&l["period_start"]),
            text(&l["period_end"]),
            text(&l["quantity"]),
            text(&l["unit"]),
            text(&l["amount"]),
            text(&l["currency"]),
            text(&l["raw_count"]),
            match l["group"].as_object() {
                Some(g) if !g.is_empty() =>
                    format!(", group {}", serde_json::Value::Object(g.clone())),
                _ => String::new(),
            }
        );
    }
    let run = &body["run"];
    println!(
        "run   {} ({} to {}, finished {})",
        text(&run["run_id"]),
        text(&run["from"]),
        text(&run["to"]),
        text(&run["finished_at"])
    );
    let m = &body["meter"];
    println!(
        "meter {}: {} of raw {} in {}",
        text(&m["name"]),
        text(&m["aggregation"]),
        text(&m["records"]),
        text(&m["unit"])
    );
    for p in body["priced_by"].as_array().into_iter().flatten() {
        println!(
            "plan  {} version {} (from {}), {}: {}",
            text(&p["plan_id"]),
            text(&p["version"]),
            text(&p["effective_from"]),
            text(&p["rule"]),
            p["price"]
        );
    }
    for r in body["records"].as_array().into_iter().flatten() {
        println!(
            "raw   {} {} {} = {} {}",
            text(&r["time"]),
            text(&r["id"]),
            text(&r["meter"]),
            text(&r["volume"]),
            text(&r["unit"])
        );
    }
    if body["records_truncated"] == serde_json::Value::Bool(true) {
        println!("(more records: see --output json, or tally events)");
    }
    Ok(())
}
