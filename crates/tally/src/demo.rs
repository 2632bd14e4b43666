//! `tally demo`: Tally's main job on the embedded default, in one command.
//!
//! Starts a server on a data directory (SQLite + local Parquet, nothing to
//! install), generates a week of usage for a small cloud, sends it over HTTP
//! exactly as a producer would, applies a sample price plan if none is
//! stored, rates the week, and shows what it costs. Run it twice and the
//! second run reports every record as a duplicate (ids are idempotency keys)
//! and rates to the same amount.

use std::time::Instant;

use anyhow::Context;
use tally_core::IngestSummary;
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
    /// Days of generated usage.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Stop after sending the sample instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_after_ingest: bool,
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
    days: u32,
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
    let to = from + chrono::Duration::days(i64::from(days));
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
    let shown = match s("currency").parse::<tally_core::Currency>() {
        Ok(c) => {
            tally_core::Money::new(amount, c)
                .round_to_minor_unit()
                .amount
        }
        Err(_) => amount,
    };
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

/// Runs `tally demo`.
pub async fn run(mut cfg: Config, args: DemoArgs) -> anyhow::Result<()> {
    cfg.listen = args.listen.clone();
    let data_dir = cfg.data_dir.clone();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let exit_early = args.exit_after_ingest;
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
    let key = client::api_key(None, &data_dir)?;
    let gen_args = GenArgs {
        instances: args.instances,
        days: args.days,
        seed: 1,
        start: None,
        interval_minutes: 60,
        out: None,
    };
    let gen_config = gen_args.config();
    let rate_from = gen_config.start;
    let events: Vec<String> = Generator::new(gen_config).collect();
    eprintln!(
        "sending {} generated events ({} instances, {} days) to http://{addr}/v1/events ...",
        events.len(),
        args.instances,
        args.days
    );
    let http = client::http();
    let started = Instant::now();
    let mut summary = IngestSummary::default();
    for batch in events.chunks(5000) {
        let body = batch.join("\n");
        let resp = http
            .post(format!("http://{addr}/v1/events"))
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
    rate(&http, &addr.to_string(), &key, rate_from, args.days).await?;
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
        "  tally events --server http://{addr} --data-dir {} --meter instance --limit 5",
        data_dir.display()
    );
    if args.exit_after_ingest {
        let _ = stop_tx.send(());
    } else {
        eprintln!("\nserving on http://{addr}; Ctrl-C to stop");
    }
    server.await.context("the server task failed")??;
    Ok(())
}
