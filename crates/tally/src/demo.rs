//! `tally demo`: Tally's main job on the embedded default, in one command.
//!
//! Starts a server on a data directory (SQLite + local Parquet, nothing to
//! install), generates last month's usage for a small cloud as the cloud's own
//! notifications and Ceilometer samples (oslo.messaging envelopes), sends it over
//! HTTP exactly as a producer would, applies a sample price plan if none is
//! stored, rates the month, puts the cloud's projects under three billing
//! accounts, invoices and issues the month, and prints what it costs. Run it
//! twice and the second run reports every record as a duplicate (ids are
//! idempotency keys), rates to the same amount and finds the invoices
//! already issued.

use std::time::Instant;

use anyhow::Context;
use tally_core::IngestSummary;
use tally_core::billing::{BillingPeriod, PeriodLabel};
use tally_gen::Generator;
use tokio::sync::oneshot;

use crate::client;
use crate::config::Config;
use crate::gen_cmd::GenArgs;
use crate::output::{OutputFormat, print_summary};
use crate::serve;

/// Arguments of `tally demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Instances in the generated cloud.
    #[arg(long, default_value_t = 50)]
    pub instances: u32,
    /// The month to generate, rate and invoice (YYYY-MM); default the last
    /// full month.
    #[arg(long)]
    pub month: Option<String>,
    /// Days of generated usage from the month's start (default: all of it).
    #[arg(long)]
    pub days: Option<u32>,
    /// Stop after printing the summary instead of serving until Ctrl-C.
    #[arg(long, alias = "exit-after-ingest")]
    pub no_serve: bool,
}

/// The plan the demo applies when none is stored.
const DEMO_PLAN: &str = include_str!("../demo/plan.toml");

/// Applies the demo plan if no plan is stored, rates the generated days and
/// prints the run.
async fn rate(
    http: &reqwest::Client,
    addr: &str,
    key: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let plans: serde_json::Value = client::check(
        http.get(format!("http://{addr}/v1/plans"))
            .bearer_auth(key)
            .send()
            .await?,
    )
    .await?
    .json()
    .await?;
    if plans["plans"].as_array().is_none_or(|p| p.is_empty()) {
        client::check(
            http.post(format!("http://{addr}/v1/plans"))
                .bearer_auth(key)
                .body(DEMO_PLAN)
                .send()
                .await?,
        )
        .await?;
        eprintln!("applied the demo price plan (crates/tally/demo/plan.toml)");
    }
    let run: serde_json::Value = client::check(
        http.post(format!("http://{addr}/v1/rating/runs"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "from": from, "to": to }))
            .send()
            .await?,
    )
    .await?
    .json()
    .await?;
    let s = |k: &str| match &run[k] {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let amount: rust_decimal::Decimal = s("amount").parse().unwrap_or_default();
    // Shown rounded by the one money rule (docs/rounding.md); lines keep
    // full precision.
    let shown = tally_core::rounded_amount(amount, &s("currency"));
    println!(
        "rated {} to {}: {} records -> {} hourly lines ({} unpriced), total {} {}",
        s("from"),
        s("to"),
        s("records_read"),
        s("lines"),
        s("unpriced_lines"),
        shown,
        s("currency"),
    );
    Ok(())
}

/// The demo's billing accounts: the cloud's projects dealt out in turn.
const DEMO_ACCOUNTS: [(&str, &str, Option<&str>); 3] = [
    ("demo-a", "Aurora Analytics GmbH", Some("0.19")),
    ("demo-b", "Borealis Research", None),
    ("demo-c", "Cirrus Games Ltd", Some("0.20")),
];

/// Creates the demo accounts (once), invoices `month` and issues the
/// invoices, then prints cost per service and the invoices.
async fn bill(
    http: &reqwest::Client,
    addr: &str,
    key: &str,
    month: PeriodLabel,
) -> anyhow::Result<()> {
    let get = |path: String| {
        let request = http.get(format!("http://{addr}{path}")).bearer_auth(key);
        async move {
            anyhow::Ok(
                client::check(request.send().await?)
                    .await?
                    .json::<serde_json::Value>()
                    .await?,
            )
        }
    };
    let post = |path: String, body: serde_json::Value| {
        let request = http
            .post(format!("http://{addr}{path}"))
            .bearer_auth(key)
            .json(&body);
        async move {
            anyhow::Ok(
                client::check(request.send().await?)
                    .await?
                    .json::<serde_json::Value>()
                    .await?,
            )
        }
    };
    let accounts = get("/v1/accounts".into()).await?;
    if accounts["accounts"].as_array().is_none_or(|a| a.is_empty()) {
        let by_project = get(format!(
            "/v1/costs?period={month}&group_by=project&limit=10000"
        ))
        .await?;
        let mut projects: Vec<String> = by_project["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["project_id"].as_str().map(str::to_string))
            .collect();
        projects.sort();
        projects.dedup();
        for (i, (id, name, vat)) in DEMO_ACCOUNTS.iter().enumerate() {
            let owned: Vec<&String> = projects
                .iter()
                .skip(i)
                .step_by(DEMO_ACCOUNTS.len())
                .collect();
            let taxes = match vat {
                Some(rate) => serde_json::json!([{ "name": "VAT", "rate": rate }]),
                None => serde_json::json!([]),
            };
            post(
                "/v1/accounts".into(),
                serde_json::json!({
                    "account_id": id, "name": name, "currency": "EUR", "taxes": taxes,
                    "contact": { "name": name, "address": ["1 Demo Street", "Demo City"] },
                    "projects": owned,
                }),
            )
            .await?;
        }
        eprintln!(
            "created {} billing accounts over {} projects",
            DEMO_ACCOUNTS.len(),
            projects.len()
        );
    }
    post(
        "/v1/invoices/runs".into(),
        serde_json::json!({ "period": month.to_string() }),
    )
    .await?;
    let invoices = get(format!("/v1/invoices?period={month}")).await?;
    for i in invoices["invoices"].as_array().into_iter().flatten() {
        if i["status"] == "draft"
            && let Some(id) = i["invoice_id"].as_str()
        {
            post(format!("/v1/invoices/{id}/finalize"), serde_json::json!({})).await?;
        }
    }
    let by_service = get(format!("/v1/costs?period={month}&group_by=service")).await?;
    println!("\ncost of {month} by service:");
    for r in by_service["rows"].as_array().into_iter().flatten() {
        let currency = r["currency"].as_str().unwrap_or("");
        let amount: rust_decimal::Decimal = r["amount"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or_default();
        // Summaries keep the exact sum; shown here rounded by the money
        // rule, as an invoice would.
        let shown = tally_core::rounded_amount(amount, currency);
        println!(
            "  {:<16} {:>12} {currency}",
            r["service"].as_str().unwrap_or("-"),
            shown.to_string(),
        );
    }
    let invoices = get(format!("/v1/invoices?period={month}")).await?;
    println!("invoices of {month}:");
    for i in invoices["invoices"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:<11} {:<10} total {} {}",
            i["invoice_id"].as_str().unwrap_or("-"),
            i["number"].as_str().unwrap_or("-"),
            i["status"].as_str().unwrap_or("-"),
            i["total"].as_str().unwrap_or("-"),
            i["currency"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Runs `tally demo`.
pub async fn run(mut cfg: Config, args: DemoArgs) -> anyhow::Result<()> {
    cfg.listen = args.listen.clone();
    let data_dir = cfg.data_dir.clone();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let exit_early = args.no_serve;
    let server = tokio::spawn(serve::run(cfg, Some(ready_tx), async move {
        if exit_early {
            let _ = stop_rx.await;
        } else {
            tokio::select! {
                _ = serve::shutdown_signal() => {},
                _ = stop_rx => {},
            }
        }
    }));
    let addr = match ready_rx.await {
        Ok(a) => a,
        Err(_) => {
            return match server.await {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("the server did not start")),
            };
        }
    };
    // The demo talks to the server it just started: its own admin key, not
    // whatever key the environment or configuration names for other servers.
    let key_path = data_dir.join("admin-key");
    let key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("reading the demo's admin key {}", key_path.display()))?
        .trim()
        .to_string();
    let month = match &args.month {
        Some(m) => m
            .parse::<PeriodLabel>()
            .with_context(|| format!("--month '{m}'"))?,
        None => PeriodLabel::containing(chrono::Utc::now(), 1, chrono_tz::Tz::UTC).plus(-1),
    };
    let bounds = BillingPeriod::new(month, 1, chrono_tz::Tz::UTC)?;
    let month_days = (bounds.end - bounds.start).num_days() as u32;
    let gen_args = GenArgs {
        instances: args.instances,
        days: args.days.unwrap_or(month_days).min(month_days),
        seed: 1,
        start: Some(bounds.start.date_naive()),
        interval_minutes: 60,
        shape: crate::gen_cmd::ShapeArg::Openstack,
        out: None,
    };
    let gen_config = gen_args.config();
    let events: Vec<String> = Generator::new(gen_config).collect();
    eprintln!(
        "sending {} generated OpenStack notifications ({} instances, {} days of {month}) to http://{addr}/v1/events?format=openstack ...",
        events.len(),
        args.instances,
        gen_args.days
    );
    let http = client::http();
    let started = Instant::now();
    let mut summary = IngestSummary::default();
    for batch in events.chunks(5000) {
        let body = batch.join("\n");
        let resp = http
            .post(format!("http://{addr}/v1/events?format=openstack"))
            .bearer_auth(&key)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .context("cannot reach the demo server")?;
        summary.merge(client::check(resp).await?.json().await?);
    }
    print_summary(&summary, OutputFormat::Table);
    eprintln!(
        "ingested in {:.2} s; every accepted record was fsynced before its batch was answered",
        started.elapsed().as_secs_f64()
    );
    let addr_text = addr.to_string();
    rate(&http, &addr_text, &key, bounds.start, bounds.end).await?;
    bill(&http, &addr_text, &key, month).await?;
    println!("\ndashboard: http://{addr}/ui (sign in with the admin API key)");
    println!("admin API key: {key}");
    eprintln!("\nTry:");
    eprintln!(
        "  curl -s -H \"Authorization: Bearer $(cat {}/admin-key)\" 'http://{addr}/v1/events?meter=volume.size&limit=2'",
        data_dir.display()
    );
    eprintln!("  curl -s http://{addr}/metrics | grep tally_");
    eprintln!(
        "  tally lines --server http://{addr} --data-dir {} --meter instance.hours --limit 5",
        data_dir.display()
    );
    eprintln!(
        "  tally costs --server http://{addr} --data-dir {} --period {month} --group-by account,service",
        data_dir.display()
    );
    eprintln!(
        "  curl -s -H \"Authorization: Bearer $(cat {}/admin-key)\" http://{addr}/v1/invoices/demo-a-{month}/pdf -o invoice.pdf",
        data_dir.display()
    );
    eprintln!(
        "  tally events --server http://{addr} --data-dir {} --meter instance --limit 5",
        data_dir.display()
    );
    if args.no_serve {
        let _ = stop_tx.send(());
    } else {
        eprintln!("\nserving on http://{addr}; Ctrl-C to stop");
    }
    server.await.context("the server task failed")??;
    Ok(())
}
