//! Notifications from a real RabbitMQ: published as a service publishes them
//! (oslo v2 envelopes on a topic exchange), consumed by `tally serve` into
//! durable records; an undecodable one dead-lettered with its reason; a
//! `kill -9` in the middle of consumption loses nothing. The broker is the
//! one `scripts/test` starts; the tests fail when it is down.

mod common;

use std::time::Duration;

use common::amqp::{
    bound_queue, config, connect, delete_queues, publish, publish_exists, ready, stored_records,
    unique,
};
use common::{Server, nova};
use lapin::BasicProperties;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;

const KEY: &str = "notifications.info";

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_in_the_middle_of_consumption_loses_nothing() {
    let u = unique();
    let (exchange, queue) = (format!("test-nova-{u}"), format!("tally.test.{u}"));
    let (_conn, channel) = connect().await;
    bound_queue(&channel, &exchange, &queue, KEY).await;
    const N: u32 = 4000;
    publish_exists(&channel, &exchange, KEY, "k", N, BasicProperties::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // Small batches, so the consumer is still busy when it is killed.
    let config = config(
        dir.path(),
        &queue,
        &exchange,
        KEY,
        "prefetch = 20\nbatch_max = 10\nbatch_wait_ms = 1\n",
    );
    let data = dir.path().join("data");
    let env = [("TALLY_CONFIG", config.to_str().unwrap())];
    let server = Server::start_with(&data, &env);
    let mut left = N;
    for _ in 0..500 {
        left = ready(&channel, &queue).await;
        if left < N * 3 / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    assert!(left > 0, "the consumer finished before it could be killed");
    // A new process takes over; every message is stored exactly once.
    let server = Server::start_with(&data, &env);
    for _ in 0..600 {
        if ready(&channel, &queue).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last prefetched messages (at most 20) are being stored and
    // acknowledged; give them time, then flush to Parquet by stopping.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.stop();
    assert_eq!(
        stored_records(&data).await,
        i64::from(N) * 4,
        "four records per message, none lost, none twice"
    );
    delete_queues(&channel, &[&queue, &format!("{queue}.dead")]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_from_rabbitmq_become_durable_records() {
    let u = unique();
    let (exchange, queue) = (format!("test-nova-{u}"), format!("tally.test.{u}"));
    let dead = format!("{queue}.dead");
    let (_conn, channel) = connect().await;
    bound_queue(&channel, &exchange, &queue, KEY).await;
    let messages = [
        nova(
            "a1",
            "compute.instance.create.start",
            "2026-10-01 00:00:00.000000",
            "m1.small",
            1,
            "building",
        ),
        nova(
            "a2",
            "compute.instance.create.end",
            "2026-10-01 00:00:00.000000",
            "m1.small",
            1,
            "active",
        ),
        nova(
            "a3",
            "compute.instance.delete.end",
            "2026-10-01 05:00:00.000000",
            "m1.small",
            1,
            "deleted",
        ),
        // Redelivered by a publisher retry: counted once.
        nova(
            "a3",
            "compute.instance.delete.end",
            "2026-10-01 05:00:00.000000",
            "m1.small",
            1,
            "deleted",
        ),
        r#"{"oslo.version": "2.0", "oslo.message": "{not json"}"#.to_string(),
    ];
    for m in &messages {
        publish(
            &channel,
            &exchange,
            KEY,
            m.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &queue, &exchange, KEY, "");
    let server = Server::start_with(
        &dir.path().join("data"),
        &[("TALLY_CONFIG", config.to_str().unwrap())],
    );
    // Two billed messages × (instance, vcpus, memory, disk).
    let mut events = Vec::new();
    for _ in 0..100 {
        events = server.all_events().await;
        if events.len() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(events.len(), 8, "{events:?}");
    assert!(events.iter().all(|e| e["project_id"] == "p1"));
    // The undecodable message waits in the dead-letter queue with why.
    let mut got = None;
    for _ in 0..50 {
        got = channel
            .basic_get(dead.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead_message = got.expect("a dead-lettered message");
    let headers = dead_message
        .delivery
        .properties
        .headers()
        .clone()
        .expect("headers");
    let reason = match headers.inner().get("x-tally-reason") {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("no reason header: {other:?}"),
    };
    assert!(reason.contains("oslo.message"), "{reason}");
    // The operator's ingest status counts both outcomes.
    let status: serde_json::Value = common::client()
        .get(format!("{}/v1/ingest/status", server.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["counts"]["accepted"], 8, "{status}");
    assert_eq!(status["counts"]["dead_lettered"], 1, "{status}");
    // Each stage of the consumer's batches is timed in /metrics.
    let metrics = server.metrics().await;
    for stage in ["wait", "gather", "decode", "queued", "durable", "ack"] {
        assert!(
            metrics.contains(&format!(
                "tally_amqp_stage_seconds_count{{stage=\"{stage}\"}}"
            )),
            "no timing of stage {stage} in /metrics:\n{metrics}"
        );
    }
    server.stop();
    delete_queues(&channel, &[&queue, &dead]).await;
}
