//! `tally-loadgen`: the load generator of the HTTP ingest benchmark
//! (`scripts/bench-ingest`). Reads NDJSON events, posts them to
//! `POST /v1/events` in batches over several connections, and prints
//! throughput and latency percentiles as JSON.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;

/// Post events to a Tally server as fast as it acknowledges them.
#[derive(Parser, Debug)]
struct Args {
    /// Server base URL, e.g. http://127.0.0.1:8080
    #[arg(long)]
    url: String,
    /// API key (admin).
    #[arg(long)]
    key: String,
    /// NDJSON file of events (plain).
    #[arg(long)]
    file: PathBuf,
    /// Events per request.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Use at most this many events of the file.
    #[arg(long, default_value_t = 2_000_000)]
    limit: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let mut bodies: Vec<(usize, Bytes)> = Vec::new();
    let mut current = Vec::new();
    let mut in_batch = 0;
    let lines = std::io::BufReader::with_capacity(1 << 20, file).lines();
    for line in lines.take(args.limit) {
        let line = line?;
        current.extend_from_slice(line.as_bytes());
        current.push(b'\n');
        in_batch += 1;
        if in_batch == args.batch {
            bodies.push((in_batch, Bytes::from(std::mem::take(&mut current))));
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        bodies.push((in_batch, Bytes::from(current)));
    }
    let events_sent: usize = bodies.iter().map(|(n, _)| n).sum();
    let queue = Arc::new(Mutex::new(bodies));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(Mutex::new(0u64));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let url = format!("{}/v1/events", args.url.trim_end_matches('/'));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (queue, latencies, accepted, client, url, key) = (
            queue.clone(),
            latencies.clone(),
            accepted.clone(),
            client.clone(),
            url.clone(),
            args.key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().expect("queue").pop();
                let Some((_, body)) = next else {
                    return Ok::<(), anyhow::Error>(());
                };
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "server answered {}",
                    resp.status()
                );
                let v: serde_json::Value = resp.json().await?;
                latencies.lock().expect("lat").push(t.elapsed());
                *accepted.lock().expect("acc") += v["accepted"].as_u64().unwrap_or(0);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().expect("lat").clone();
    lat.sort();
    let out = serde_json::json!({
        "events": events_sent,
        "accepted": *accepted.lock().expect("acc"),
        "seconds": secs,
        "events_per_second": events_sent as f64 / secs,
        "requests": lat.len(),
        "batch": args.batch,
        "connections": args.connections,
        "latency_ms_p50": percentile(&lat, 0.50),
        "latency_ms_p99": percentile(&lat, 0.99),
        "latency_ms_max": percentile(&lat, 1.0),
    });
    println!("{out}");
    Ok(())
}
