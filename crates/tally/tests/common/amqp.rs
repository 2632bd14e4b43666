//! A real RabbitMQ for the consumer's tests: the broker `scripts/test`
//! starts (`TALLY_TEST_AMQP`), queues no other test uses, and what a
//! `[amqp]` configuration for them looks like.

use std::path::{Path, PathBuf};

use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

/// The broker's URL.
pub fn broker() -> String {
    std::env::var("TALLY_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// A suffix no other test (or earlier run) uses.
pub fn unique() -> String {
    format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A connection and a channel; fails (never skips) when the broker is down.
pub async fn connect() -> (Connection, lapin::Channel) {
    let conn = Connection::connect(&broker(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is not reachable at {}: {e}; run scripts/test, which starts it",
                broker()
            )
        });
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

/// Declares a topic exchange (not durable, as oslo.messaging declares
/// them) and Tally's durable queue bound to it with `key`, so nothing
/// published before Tally starts is lost.
pub async fn bound_queue(channel: &lapin::Channel, exchange: &str, queue: &str, key: &str) {
    channel
        .exchange_declare(
            exchange.into(),
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
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Publishes one message and waits for the broker to take it.
pub async fn publish(
    channel: &lapin::Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Publishes `n` Nova `compute.instance.exists` notifications with ids
/// `{prefix}0`, `{prefix}1`, ...: a stream whose every message is billed.
pub async fn publish_exists(
    channel: &lapin::Channel,
    exchange: &str,
    key: &str,
    prefix: &str,
    n: u32,
    props: BasicProperties,
) {
    for i in 0..n {
        let m = super::nova(
            &format!("{prefix}{i}"),
            "compute.instance.exists",
            "2026-10-01 00:00:00.000000",
            "m1.small",
            1,
            "active",
        );
        publish(channel, exchange, key, m.as_bytes(), props.clone()).await;
    }
}

/// Ready messages in a queue (a passive declare reports them).
pub async fn ready(channel: &lapin::Channel, queue: &str) -> u32 {
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

/// Removes the test's queues (Tally leaves its own for the operator).
pub async fn delete_queues(channel: &lapin::Channel, queues: &[&str]) {
    for q in queues {
        let _ = channel
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Writes a `tally.toml` whose consumer reads `queue` (dead letters to
/// `<queue>.dead`) bound to `exchange` with `key`; `extra` adds lines to
/// `[amqp]`.
pub fn config(dir: &Path, queue: &str, exchange: &str, key: &str, extra: &str) -> PathBuf {
    let path = dir.join("tally.toml");
    std::fs::write(
        &path,
        format!(
            "[amqp]\nurl = \"{}\"\nqueue = \"{queue}\"\ndead_letter_queue = \"{queue}.dead\"\nexchanges = [\"{exchange}\"]\nrouting_keys = [\"{key}\"]\n{extra}",
            broker()
        ),
    )
    .unwrap();
    path
}

/// Records stored in a stopped server's data directory (every record is
/// in a segment once the server has flushed at shutdown).
pub async fn stored_records(data: &Path) -> i64 {
    let db = tally_db::Database::open(&tally_db::Database::sqlite_url_in(data))
        .await
        .unwrap();
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(sum(row_count) AS BIGINT) FROM raw_segments WHERE state = 'active'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    n.unwrap_or(0)
}
