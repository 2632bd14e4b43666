//! Restarting RabbitMQ in the middle of a stream loses nothing and counts
//! nothing twice. Its own test binary, so no other test sees the broker go
//! away; it restarts the broker's application with `rabbitmqctl`
//! (`stop_app`, `start_app`), which keeps durable queues and persistent
//! messages, as a broker restart does.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Server, nova};
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

fn broker() -> String {
    std::env::var("TALLY_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl is needed to restart the broker: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn connect() -> (Connection, lapin::Channel) {
    let conn = Connection::connect(&broker(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {}: {e}", broker()));
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

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
async fn a_broker_restart_loses_nothing_and_counts_nothing_twice() {
    let u = format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let (exchange, queue) = (
        format!("test-restart-{u}"),
        format!("tally.test.restart.{u}"),
    );
    let (_conn, channel) = connect().await;
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
    const N: u32 = 3000;
    for i in 0..N {
        let m = nova(
            &format!("r{i}"),
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
                BasicProperties::default().with_delivery_mode(2),
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
            "[amqp]\nurl = \"{}\"\nqueue = \"{queue}\"\ndead_letter_queue = \"{queue}.dead\"\nexchanges = [\"{exchange}\"]\nrouting_keys = [\"notifications.info\"]\nprefetch = 20\nbatch_max = 10\nbatch_wait_ms = 1\n",
            broker()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &[("TALLY_CONFIG", config.to_str().unwrap())]);
    let mut left = N;
    for _ in 0..500 {
        left = ready(&channel, &queue).await;
        if left < N * 3 / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rabbitmqctl(&["stop_app"]);
    rabbitmqctl(&["start_app"]);
    assert!(left > 0, "the stream ended before the broker restarted");
    // The consumer reconnects by itself and finishes the stream.
    let (_conn, channel) = loop {
        if let Ok(conn) = Connection::connect(&broker(), ConnectionProperties::default()).await {
            let channel = conn.create_channel().await.unwrap();
            break (conn, channel);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for _ in 0..600 {
        if ready(&channel, &queue).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        "nothing lost, nothing twice"
    );
    for q in [queue.clone(), format!("{queue}.dead")] {
        let _ = channel
            .queue_delete(q.as_str().into(), Default::default())
            .await;
    }
}
