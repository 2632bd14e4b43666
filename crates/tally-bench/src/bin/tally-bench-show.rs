//! `tally-bench-show`: latency of the summary API and the dashboard pages
//! under concurrent load (`scripts/bench-show`).
//!
//! For each target it keeps `--concurrency` requests in flight for
//! `--seconds` (after a warm-up whose answers are not counted), records
//! every answer's latency and reports p50, p90, p99, the maximum and the
//! rate. API targets send the key as a bearer token; dashboard targets
//! (`/ui...`) sign in once through the login form, as a browser does, and
//! send the session cookie. Any answer other than 200 is counted as an
//! error and makes the program fail: a fast error is not a latency.
//!
//! A path may name `{KEY}` for a list given with `--each KEY=FILE`: its
//! requests then take the file's values in turn (every project of the
//! cloud, say), so that a server remembering answers is measured on the
//! questions it has not seen yet as well as those it has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

/// Load the summary API and dashboard of a running `tally serve`.
#[derive(Parser, Debug)]
struct Args {
    /// The server, `http://host:port`.
    #[arg(long)]
    url: String,
    /// API key to ask with (and to sign in to the dashboard with).
    #[arg(long)]
    key: String,
    /// `NAME=PATH` of a GET to load; repeat for several (run one after the
    /// other).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured seconds per target.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// `KEY=FILE`: a path's `{KEY}` takes the file's lines in turn.
    #[arg(long = "each")]
    each: Vec<String>,
}

/// The URLs one target asks, in turn: one, or one per value of the list
/// its path names.
fn target_urls(
    url: &str,
    path: &str,
    lists: &[(String, Vec<String>)],
) -> anyhow::Result<Vec<String>> {
    for (key, values) in lists {
        let slot = format!("{{{key}}}");
        if path.contains(&slot) {
            anyhow::ensure!(!values.is_empty(), "the list for {{{key}}} is empty");
            return Ok(values
                .iter()
                .map(|v| format!("{url}{}", path.replace(&slot, v)))
                .collect());
        }
    }
    anyhow::ensure!(!path.contains('{'), "{path} names a list no --each gives");
    Ok(vec![format!("{url}{path}")])
}

/// What one target measured.
struct Figures {
    name: String,
    path: String,
    requests: usize,
    errors: usize,
    per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    bytes: usize,
}

/// Signs in to the dashboard with the key; returns the session cookie.
async fn sign_in(http: &reqwest::Client, url: &str, key: &str) -> anyhow::Result<String> {
    let form = http.get(format!("{url}/ui/login")).send().await?;
    let csrf_cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("tally_csrf="))
        .context("the login page set no CSRF cookie")?
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    let html = form.text().await?;
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the login page has no CSRF field")?
        .to_string();
    // Form-encoded: everything but unreserved characters as %XX.
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let body = format!("key={}&csrf={}", enc(key), enc(&token));
    let resp = http
        .post(format!("{url}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", csrf_cookie)
        .body(body)
        .send()
        .await?;
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("tally_session="))
        .map(|c| c.split(';').next().unwrap_or_default().to_string())
        .with_context(|| format!("sign-in failed: {}", resp.status()))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank: the smallest latency with at least p% of answers at or
    // below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

async fn load(
    http: &reqwest::Client,
    url: &str,
    auth: (&'static str, String),
    name: &str,
    path: &str,
    lists: &[(String, Vec<String>)],
    args: &Args,
) -> anyhow::Result<Figures> {
    let targets = Arc::new(target_urls(url, path, lists)?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let auth = Arc::new(auth);
    let run = |seconds: u64| {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| {
                let (http, targets, next, auth) =
                    (http.clone(), targets.clone(), next.clone(), auth.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let (mut errors, mut bytes) = (0usize, 0usize);
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let target = &targets[i % targets.len()];
                        let started = Instant::now();
                        let resp = http
                            .get(target.as_str())
                            .header(auth.0, auth.1.as_str())
                            .send()
                            .await;
                        match resp {
                            Ok(r) if r.status() == 200 => match r.bytes().await {
                                Ok(b) => {
                                    bytes = b.len();
                                    latencies.push(started.elapsed());
                                }
                                Err(_) => errors += 1,
                            },
                            _ => errors += 1,
                        }
                    }
                    (latencies, errors, bytes)
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            let (mut errors, mut bytes) = (0, 0);
            for t in tasks {
                let (l, e, b) = t.await.expect("a load task panicked");
                all.extend(l);
                errors += e;
                bytes = bytes.max(b);
            }
            (all, errors, bytes)
        }
    };
    run(args.warmup_seconds).await;
    let started = Instant::now();
    let (mut latencies, errors, bytes) = run(args.seconds).await;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(Figures {
        name: name.to_string(),
        path: path.to_string(),
        requests: latencies.len(),
        errors,
        per_second: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 50.0),
        p90_ms: percentile(&latencies, 90.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        bytes,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = args.url.trim_end_matches('/').to_string();
    let mut lists = Vec::new();
    for e in &args.each {
        let (key, file) = e
            .split_once('=')
            .with_context(|| format!("--each '{e}' is not KEY=FILE"))?;
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
        let values = text.lines().filter(|l| !l.trim().is_empty());
        lists.push((key.to_string(), values.map(str::to_string).collect()));
    }
    let mut session = None;
    let mut results = Vec::new();
    for t in &args.targets {
        let (name, path) = t
            .split_once('=')
            .with_context(|| format!("--target '{t}' is not NAME=PATH"))?;
        let auth = if path.starts_with("/ui") {
            if session.is_none() {
                session = Some(sign_in(&http, &url, &args.key).await?);
            }
            ("cookie", session.clone().expect("signed in above"))
        } else {
            ("authorization", format!("Bearer {}", args.key))
        };
        eprintln!("==> {name}: GET {path}, {} in flight", args.concurrency);
        let f = load(&http, &url, auth, name, path, &lists, &args).await?;
        eprintln!(
            "    {} answers, {} errors, p50 {:.1} ms, p99 {:.1} ms",
            f.requests, f.errors, f.p50_ms, f.p99_ms
        );
        results.push(f);
    }
    println!("| target | path | answers | answers/s | p50 ms | p90 ms | p99 ms | max ms | bytes |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for f in &results {
        println!(
            "| {} | `{}` | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            f.name,
            f.path,
            f.requests,
            f.per_second,
            f.p50_ms,
            f.p90_ms,
            f.p99_ms,
            f.max_ms,
            f.bytes
        );
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|f| f.errors > 0 || f.requests == 0)
        .map(|f| format!("{} ({} errors)", f.name, f.errors))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "targets answered other than 200: {}",
        failed.join(", ")
    );
    Ok(())
}
