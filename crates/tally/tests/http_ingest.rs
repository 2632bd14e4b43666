//! `POST /v1/events` and `GET /v1/events` against a real `tally serve`.

mod common;

use common::{Server, client, event};
use serde_json::Value;

#[tokio::test]
async fn single_batch_and_ndjson_bodies_are_accepted_with_per_record_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());

    let r = server
        .post("application/cloudevents+json", event("a1", "p1", "\"0.1\""))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"accepted": 1, "duplicates": 0, "rejected": []})
    );

    let no_offset = event("a3", "p1", "1").replace("2026-10-01T12:00:00Z", "2026-10-01T12:00:00");
    let batch = format!(
        "[{},{},{},{}]",
        event("a2", "p1", "2"),
        no_offset,
        event("a4", "p1", "\"NaN\""),
        event("a5", "p2", "5")
    );
    let r = server
        .post("application/cloudevents-batch+json", batch)
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["duplicates"], 0);
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[0]["id"], "a3");
    assert_eq!(rejected[0]["code"], "invalid_time");
    assert_eq!(rejected[1]["index"], 2);
    assert_eq!(rejected[1]["code"], "invalid_volume");

    let nd = format!(
        "{}\nnot json\n{}\n",
        event("a6", "p1", "6"),
        event("a1", "p1", "1")
    );
    let v: Value = server.post_ndjson(nd).await;
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["duplicates"], 1);
    assert_eq!(v["rejected"][0]["index"], 1);
    assert_eq!(v["rejected"][0]["code"], "malformed_json");

    let events = server.all_events().await;
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["a1", "a2", "a5", "a6"]);
    let a1 = events.iter().find(|e| e["id"] == "a1").unwrap();
    assert_eq!(a1["volume"], "0.1", "volumes stay exact");
    assert_eq!(
        a1["payload"],
        event("a1", "p1", "\"0.1\""),
        "payload kept byte for byte"
    );
    assert_eq!(a1["attributes"]["volume_type"], "ssd");

    // The operator's ingest status counts every outcome of this process.
    let status: Value = common::client()
        .get(format!("{}/v1/ingest/status", server.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let counts = &status["counts"];
    assert_eq!(
        (
            &counts["accepted"],
            &counts["duplicates"],
            &counts["rejected"]
        ),
        (&Value::from(4), &Value::from(1), &Value::from(3)),
        "{status}"
    );
    assert_eq!(counts["dead_lettered"], 0);
    assert!(status["seconds_since_last_accepted"].as_f64().unwrap() < 60.0);
    let reader = common::project_reader_key(dir.path(), "p1");
    let refused = common::client()
        .get(format!("{}/v1/ingest/status", server.url))
        .bearer_auth(reader)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    server.stop();
}

#[tokio::test]
async fn requests_refused_as_a_whole_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("TALLY_INGEST__MAX_BODY_BYTES", "4000"),
            ("TALLY_INGEST__MAX_BATCH_RECORDS", "5"),
        ],
    );
    let url = format!("{}/v1/events", server.url);
    let body = format!("[{}]", event("x1", "p", "1"));

    // No key, wrong key.
    let r = client()
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "unauthorized");
    let r = client()
        .post(&url)
        .bearer_auth("tly_wrong")
        .header("content-type", "application/cloudevents-batch+json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Unsupported content type.
    let r = server.post("text/plain", body.clone()).await;
    assert_eq!(r.status(), 415);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "unsupported_media_type");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("application/x-ndjson")
    );

    // Malformed JSON array.
    let r = server
        .post(
            "application/cloudevents-batch+json",
            format!("[{}", event("x2", "p", "1")),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "malformed_json");

    // Too many records.
    let six: Vec<String> = (0..6).map(|i| event(&format!("y{i}"), "p", "1")).collect();
    let r = server.post("application/x-ndjson", six.join("\n")).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "too_many_records");

    // Body over the byte limit.
    let big: Vec<String> = (0..30).map(|i| event(&format!("z{i}"), "p", "1")).collect();
    let r = server.post("application/x-ndjson", big.join("\n")).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "payload_too_large");
    assert!(v["message"].as_str().unwrap().contains("max_body_bytes"));

    assert!(server.all_events().await.is_empty(), "nothing was stored");

    let r = client()
        .get(format!("{}/v1/events?limit=0", server.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_query");
    let r = client()
        .get(format!("{}/v1/events?cursor=zzz", server.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_cursor");
    server.stop();
}

#[tokio::test]
async fn redelivery_three_times_shuffled_and_concurrent_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let n = 3000;
    let events: Vec<String> = (0..n)
        .map(|i| event(&format!("r{i}"), "p", &i.to_string()))
        .collect();
    let mut tasks = Vec::new();
    for round in 0..3u64 {
        let mut mine = events.clone();
        // A different deterministic order for each delivery.
        let len = mine.len();
        for i in 0..len {
            let j = ((i as u64 * 7919 + round * 104729) % len as u64) as usize;
            mine.swap(i, j);
        }
        let url = format!("{}/v1/events", server.url);
        let key = server.key.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0;
            let mut duplicates = 0;
            for chunk in mine.chunks(500) {
                let v: Value = client()
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/x-ndjson")
                    .body(chunk.join("\n"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                accepted += v["accepted"].as_u64().unwrap();
                duplicates += v["duplicates"].as_u64().unwrap();
            }
            (accepted, duplicates)
        }));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for t in tasks {
        let (a, d) = t.await.unwrap();
        accepted += a;
        duplicates += d;
    }
    assert_eq!(accepted, n as u64);
    assert_eq!(duplicates, 2 * n as u64);
    assert_eq!(server.all_events().await.len(), n);
    server.stop();
}

#[tokio::test]
async fn dedupe_and_data_survive_a_restart_and_metrics_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let body: Vec<String> = (0..50).map(|i| event(&format!("s{i}"), "p", "1")).collect();
    let v: Value = server.post_ndjson(body.join("\n")).await;
    assert_eq!(v["accepted"], 50);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("tally_ingest_records_accepted_total 50"),
        "{metrics}"
    );
    // Histograms are exported with buckets (they add up across servers),
    // not as summaries.
    assert!(
        metrics.contains("tally_wal_fsync_seconds_bucket{le=\"0.001\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tally_wal_group_records_bucket{le=\"500\"}"),
        "{metrics}"
    );
    server.stop();

    let server = Server::start(dir.path());
    let v: Value = server.post_ndjson(body.join("\n")).await;
    assert_eq!(v["accepted"], 0);
    assert_eq!(v["duplicates"], 50);
    assert_eq!(server.all_events().await.len(), 50);
    let health: Value = client()
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    server.stop();
}

#[tokio::test]
async fn project_reader_keys_see_only_their_project_and_cannot_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let body = [
        event("k1", "p1", "1"),
        event("k2", "p2", "2"),
        event("k3", "p2", "3"),
    ]
    .join("\n");
    server.post("application/x-ndjson", body).await;
    let key = &common::project_reader_key(dir.path(), "p2");

    let mine = server.all_events_as(key, "").await;
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|e| e["project_id"] == "p2"));
    assert!(server.all_events_as(key, "&project_id=p1").await.is_empty());

    let r = client()
        .post(format!("{}/v1/events", server.url))
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(event("k4", "p2", "1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    server.stop();
}
