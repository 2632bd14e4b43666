//! kill -9 at a random moment while several clients stream batches: every
//! acknowledged record is present exactly once after the restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, client, event};
use rand::Rng;
use serde_json::Value;

async fn run_once(kill_after: Duration, round: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        // Small log files so kills also land during rotation and flushes.
        &[
            ("TALLY_STORE__WAL_ROTATE_BYTES", "200000"),
            ("TALLY_STORE__FLUSH_INTERVAL_SECS", "1"),
        ],
    );
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..4 {
        let url = format!("{}/v1/events", server.url);
        let key = server.key.clone();
        let acked = acked.clone();
        let sent = sent.clone();
        clients.push(tokio::spawn(async move {
            // Bounded so the check after the restart stays quick in debug builds.
            for b in 0..40 {
                let ids: Vec<String> = (0..200)
                    .map(|i| format!("r{round}-c{c}-b{b}-{i}"))
                    .collect();
                let body: Vec<String> = ids.iter().map(|id| event(id, "p", "1")).collect();
                sent.lock().unwrap().extend(ids.iter().cloned());
                let resp = client()
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/x-ndjson")
                    .body(body.join("\n"))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        assert_eq!(v["accepted"], 200);
                        acked.lock().unwrap().extend(ids);
                    }
                    _ => return, // the server is gone
                }
            }
        }));
    }
    // Start the clock at the first acknowledgement, so that a slow machine
    // still kills the server under load, never before it took any.
    let waited = std::time::Instant::now();
    while acked.lock().unwrap().is_empty() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no batch was acknowledged within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(kill_after).await;
    server.kill9();
    for c in clients {
        let _ = c.await;
    }
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "some batches were acknowledged before the kill"
    );

    let server = Server::start(dir.path());
    let events = server.all_events().await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *counts
            .entry(e["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for id in &acked {
        assert_eq!(
            counts.get(id).copied(),
            Some(1),
            "acknowledged {id} must be stored exactly once"
        );
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "no record is stored twice"
    );
    assert!(
        counts.keys().all(|id| sent.contains(id)),
        "nothing appears that was not sent"
    );

    // Redelivering everything that was sent stores each missing record once.
    let all: Vec<String> = sent.iter().cloned().collect();
    let mut accepted = 0;
    let mut duplicates = 0;
    for chunk in all.chunks(1000) {
        let body: Vec<String> = chunk.iter().map(|id| event(id, "p", "1")).collect();
        let v: Value = server.post_ndjson(body.join("\n")).await;
        accepted += v["accepted"].as_u64().unwrap();
        duplicates += v["duplicates"].as_u64().unwrap();
    }
    assert_eq!(
        duplicates as usize,
        counts.len(),
        "everything stored is recognised"
    );
    assert_eq!(accepted as usize + counts.len(), sent.len());
    assert_eq!(server.all_events().await.len(), sent.len());
    server.stop();
    eprintln!(
        "round {round}: killed after {kill_after:?}; {} acknowledged, {} stored before redelivery, {} sent",
        acked.len(),
        counts.len(),
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_kill_9_exactly_once() {
    let mut rng = rand::rng();
    for round in 0..3 {
        let ms = rng.random_range(0..800);
        run_once(Duration::from_millis(ms), round).await;
    }
}
