//! Notifications from a real RabbitMQ: published as a service publishes them
//! (oslo v2 envelopes on a topic exchange), consumed by `tally serve` into
//! durable records; an undecodable one dead-lettered with its reason. The
//! broker is the one `scripts/test` starts (`TALLY_TEST_AMQP`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f); the test fails when it is down.

mod common;

use std::time::Duration;

use common::{Server, nova};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

fn broker() -> String {
    std::env::var("TALLY_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Names no other test uses.
fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Ready messages in a queue (a passive declare reports them).
async fn ready(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_in_the_middle_of_consumption_loses_nothing() {
    let u = unique();
    let (exchange, queue, dead) = (
        format!("test-nova-{u}"),
        format!("tally.test.{u}"),
        format!("tally.test.{u}.dead"),
    );
    let conn = Connection::connect(&broker(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {}: {e}", broker()));
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "notifications.info".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    const N: u32 = 4000;
    for i in 0..N {
        let m = nova(
            &format!("k{i}"),
            "compute.instance.exists",
            "2026-10-01 00:00:00.000000",
            "m1.small",
            1,
            "active",
        );
        channel
            .basic_publish(
                exchange.as_str().into(),
                "notifications.info".into(),
                BasicPublishOptions::default(),
                m.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tally.toml");
    // Small batches, so the consumer is still busy when it is killed.
    std::fs::write(
        &config,
        format!(
            "[amqp]\nurl = \"{}\"\nqueue = \"{queue}\"\ndead_letter_queue = \"{dead}\"\nexchanges = [\"{exchange}\"]\nrouting_keys = [\"notifications.info\"]\nprefetch = 20\nbatch_max = 10\nbatch_wait_ms = 1\n",
            broker()
        ),
    )
    .unwrap();
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
    let db = tally_db::Database::open(&tally_db::Database::sqlite_url_in(&data))
        .await
        .unwrap();
    let stored: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(sum(row_count) AS BIGINT) FROM raw_segments WHERE state = 'active'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        Some(i64::from(N) * 4),
        "four records per message, none lost, none twice"
    );
    for q in [&queue, &dead] {
        let _ = channel
            .queue_delete(q.as_str().into(), Default::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_from_rabbitmq_become_durable_records() {
    let unique = unique();
    let (exchange, queue, dead) = (
        format!("test-nova-{unique}"),
        format!("tally.test.{unique}"),
        format!("tally.test.{unique}.dead"),
    );
    let conn = Connection::connect(&broker(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is not reachable at {}: {e}; run scripts/test, which starts it",
                broker()
            )
        });
    let channel = conn.create_channel().await.unwrap();
    // Declared as the service and Tally declare them, so nothing published
    // before Tally binds is lost.
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "notifications.info".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
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
        channel
            .basic_publish(
                exchange.as_str().into(),
                "notifications.info".into(),
                BasicPublishOptions::default(),
                m.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tally.toml");
    std::fs::write(
        &config,
        format!(
            "[amqp]\nurl = \"{}\"\nqueue = \"{queue}\"\ndead_letter_queue = \"{dead}\"\nexchanges = [\"{exchange}\"]\nrouting_keys = [\"notifications.info\"]\n",
            broker()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &[("TALLY_CONFIG", config.to_str().unwrap())]);
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
    server.stop();
    // Tally's own queues are left for the operator; remove the test's.
    for q in [&queue, &dead] {
        let _ = channel
            .queue_delete(q.as_str().into(), Default::default())
            .await;
    }
}
