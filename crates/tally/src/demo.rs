//! `tally demo`: Tally's main job on the embedded default, in one command.
//!
//! Starts a server on a data directory (SQLite + local Parquet, nothing to
//! install), generates a week of usage for a small cloud, sends it over HTTP
//! exactly as a producer would, and shows what was stored. Run it twice and
//! the second run reports every record as a duplicate: ids are idempotency
//! keys.

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
    let events: Vec<String> = Generator::new(gen_args.config()).collect();
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
    eprintln!("\nTry:");
    eprintln!(
        "  curl -s -H \"Authorization: Bearer $(cat {}/admin-key)\" 'http://{addr}/v1/events?meter=volume.size&limit=2'",
        data_dir.display()
    );
    eprintln!("  curl -s http://{addr}/metrics | grep tally_");
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
