//! `tally-bench-invoice`: the invoice-run benchmark (`scripts/bench-invoice`).
//!
//! Sets up N billing accounts, each owning two projects with ten metered
//! services apiece (20 invoice lines per account), and a month of rated
//! lines behind them (one per project and meter for the month, or one per
//! day with `--rated-per-line 31`), written as the rating job writes them
//! (Parquet files plus a coverage row). Then
//! it times `run_invoices` for the month — the measured part — and,
//! optionally, finalizing a number of the drafts. Prints one JSON object.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use clap::Parser;
use rust_decimal::Decimal;
use tally_bill::invoices::{self, InvoiceSettings};
use tally_core::RatedLine;
use tally_core::billing::PeriodLabel;
use tally_db::Database;
use tally_rate::runs::FileSink;
use tally_store::objects::RawObjects;

// The allocator `tally` itself runs with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Time an invoice run over many accounts.
#[derive(Parser, Debug)]
struct Args {
    /// Billing database URL (sqlite://… or postgres://…); must be empty.
    #[arg(long)]
    database: String,
    /// Directory for the rated-line files.
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Accounts.
    #[arg(long, default_value_t = 100_000)]
    accounts: usize,
    /// Rated lines behind each invoice line (days of the month, 1–31; 1
    /// means one line for the whole month).
    #[arg(long, default_value_t = 1)]
    rated_per_line: i64,
    /// Finalize this many of the drafts afterwards (timed separately).
    #[arg(long, default_value_t = 0)]
    finalize: usize,
}

const METERS: [&str; 10] = [
    "instance.hours",
    "vcpu.hours",
    "ram.gib_hours",
    "disk.root.gib_hours",
    "volume.gib_hours",
    "snapshot.gib_hours",
    "image.gib_hours",
    "floating_ip.hours",
    "network.egress.gb",
    "object_storage.gib_hours",
];

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

/// A value of a bulk-loaded row.
#[derive(Clone)]
enum Cell {
    Text(String),
    Int(i64),
}

async fn bulk_insert(db: &Database, head: &str, rows: &[Vec<Cell>]) -> anyhow::Result<()> {
    let width = rows.first().map_or(0, Vec::len);
    for chunk in rows.chunks(30_000 / width.max(1)) {
        let sql = format!(
            "{head} VALUES {}",
            tally_db::values_placeholders(db.backend, chunk.len(), width)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in chunk.iter().flatten() {
            q = match v {
                Cell::Text(t) => q.bind(t.clone()),
                Cell::Int(i) => q.bind(*i),
            };
        }
        q.execute(&db.pool).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = Database::open(&args.database)
        .await
        .context("open the billing database")?;
    let backend = db.backend.name();
    let setup = Instant::now();

    let mut plan = String::from(
        "id = \"bench\"\ncurrency = \"EUR\"\n[[versions]]\neffective_from = \"2020-01-01T00:00:00Z\"\n",
    );
    for m in METERS {
        plan.push_str(&format!(
            "[[versions.rules]]\nmeter = \"{m}\"\ncharge = {{ type = \"per_unit\", unit_price = \"0.0123\" }}\n"
        ));
    }
    tally_rate::plans::apply_plan(&db, &plan, true).await?;

    let taxes = r#"[{"name":"VAT 19%","rate":"0.19"}]"#;
    let now_us = Utc::now().timestamp_micros();
    let text = |s: String| Cell::Text(s);
    let accounts: Vec<Vec<Cell>> = (0..args.accounts)
        .map(|i| {
            vec![
                text(format!("acct-{i:06}")),
                text(format!("Customer {i}")),
                text("EUR".into()),
                text("postpaid".into()),
                text(taxes.into()),
                text("{}".into()),
                Cell::Int(now_us),
            ]
        })
        .collect();
    bulk_insert(
        &db,
        "INSERT INTO billing_accounts (account_id, name, currency, payment_mode, taxes, contact, created_at_us)",
        &accounts,
    )
    .await?;
    let ownership: Vec<Vec<Cell>> = (0..args.accounts)
        .flat_map(|i| {
            (0..2).map(move |p| {
                vec![
                    Cell::Text("project".into()),
                    Cell::Text(format!("proj-{i:06}-{p}")),
                    Cell::Text(format!("acct-{i:06}")),
                ]
            })
        })
        .collect();
    bulk_insert(
        &db,
        "INSERT INTO account_ownership (kind, keystone_id, account_id)",
        &ownership,
    )
    .await?;

    // A month of daily lines per project and meter, written as rating writes
    // them, then made current for October.
    let start: DateTime<Utc> = "2026-10-01T00:00:00Z".parse()?;
    let end: DateTime<Utc> = "2026-11-01T00:00:00Z".parse()?;
    let rated = RawObjects::open(&format!("file://{}", args.dir.join("rated").display()))?;
    let run_id = "bench-run";
    let mut sink = FileSink::new(rated.clone(), format!("{run_id}/part-0.parquet"));
    let attributes = Arc::new(Default::default());
    let mut lines_written = 0u64;
    for i in 0..args.accounts {
        let mut batch = Vec::with_capacity(2 * METERS.len() * 31);
        for p in 0..2 {
            for (m, meter) in METERS.iter().enumerate() {
                let days = args.rated_per_line.clamp(1, 31);
                for day in 0..days {
                    let (from, to) = if days == 1 {
                        (start, end)
                    } else {
                        (start + Duration::days(day), start + Duration::days(day + 1))
                    };
                    let quantity = Decimal::from(((i as i64 + m as i64 + day) % 97) + 1);
                    let price = Decimal::new(123, 4);
                    batch.push(RatedLine {
                        project_id: format!("proj-{i:06}-{p}"),
                        resource_id: format!("res-{i}-{p}-{m}"),
                        meter: (*meter).to_string(),
                        group: Default::default(),
                        period_start: from,
                        period_end: to,
                        quantity,
                        unit: "unit".into(),
                        unit_price: Some(price),
                        amount: quantity * price,
                        currency: "EUR".into(),
                        plan_id: "bench".into(),
                        plan_version: 1,
                        rule: "rules[0]".into(),
                        raw_count: 1,
                        segments: Vec::new(),
                        attributes: Arc::clone(&attributes),
                        error: None,
                    });
                }
            }
        }
        lines_written += batch.len() as u64;
        sink.accept_rated(&batch).await?;
    }
    let file = sink.close().await?.context("lines were written")?;
    sqlx::query(
        "INSERT INTO rating_runs (run_id, from_us, to_us, period_seconds, plan_id, status, started_at_us, \
         finished_at_us, line_count, currency, files) VALUES ($1, $2, $3, 86400, 'bench', 'complete', $4, $4, $5, 'EUR', $6)",
    )
    .bind(run_id)
    .bind(start.timestamp_micros())
    .bind(end.timestamp_micros())
    .bind(Utc::now().timestamp_micros())
    .bind(lines_written as i64)
    .bind(serde_json::to_string(&[file])?)
    .execute(&db.pool)
    .await?;
    sqlx::query("INSERT INTO rated_coverage (run_id, from_us, to_us) VALUES ($1, $2, $3)")
        .bind(run_id)
        .bind(start.timestamp_micros())
        .bind(end.timestamp_micros())
        .execute(&db.pool)
        .await?;
    let setup_s = setup.elapsed().as_secs_f64();

    let settings = InvoiceSettings::default();
    let label: PeriodLabel = "2026-10".parse()?;
    let t = Instant::now();
    let summary = invoices::run_invoices(&db, &rated, &settings, label, None, Utc::now()).await?;
    let run_s = t.elapsed().as_secs_f64();
    let created = summary
        .accounts
        .iter()
        .filter(|o| o.outcome == "created")
        .count();
    anyhow::ensure!(created == args.accounts, "{created} invoices created");
    let invoice_lines: i64 = sqlx::query_scalar("SELECT count(*) FROM invoice_lines")
        .fetch_one(&db.pool)
        .await?;

    let mut finalize_s = None;
    if args.finalize > 0 {
        let t = Instant::now();
        for i in 0..args.finalize.min(args.accounts) {
            invoices::finalize(&db, &format!("acct-{i:06}-2026-10"), Utc::now()).await?;
        }
        finalize_s = Some(t.elapsed().as_secs_f64());
    }

    println!(
        "{}",
        serde_json::json!({
            "backend": backend,
            "accounts": args.accounts,
            "rated_lines": lines_written,
            "invoice_lines": invoice_lines,
            "setup_s": setup_s,
            "invoice_run_s": run_s,
            "invoices_per_s": args.accounts as f64 / run_s,
            "finalized": args.finalize.min(args.accounts),
            "finalize_s": finalize_s,
            "finalized_per_s": finalize_s.map(|s| args.finalize.min(args.accounts) as f64 / s),
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
