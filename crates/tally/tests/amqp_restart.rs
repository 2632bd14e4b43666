//! Restarting RabbitMQ in the middle of a stream loses nothing and counts
//! nothing twice. Its own test binary, so no other test sees the broker go
//! away; it restarts the broker's application with `rabbitmqctl`
//! (`stop_app`, `start_app`), which keeps durable queues and persistent
//! messages, as a broker restart does.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Server;
use common::amqp::{
    bound_queue, broker, config, connect, delete_queues, publish_exists, ready, stored_records,
    unique,
};
use lapin::BasicProperties;

const KEY: &str = "notifications.info";

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

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_loses_nothing_and_counts_nothing_twice() {
    let u = unique();
    let (exchange, queue) = (
        format!("test-restart-{u}"),
        format!("tally.test.restart.{u}"),
    );
    let (_conn, channel) = connect().await;
    bound_queue(&channel, &exchange, &queue, KEY).await;
    const N: u32 = 3000;
    // Persistent, so the messages survive the broker's restart.
    publish_exists(
        &channel,
        &exchange,
        KEY,
        "r",
        N,
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &queue,
        &exchange,
        KEY,
        "prefetch = 20\nbatch_max = 10\nbatch_wait_ms = 1\n",
    );
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
    for _ in 0..50 {
        let up = lapin::Connection::connect(&broker(), Default::default()).await;
        if up.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_conn, channel) = connect().await;
    for _ in 0..600 {
        if ready(&channel, &queue).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.stop();
    assert_eq!(
        stored_records(&data).await,
        i64::from(N) * 4,
        "nothing lost, nothing twice"
    );
    delete_queues(&channel, &[&queue, &format!("{queue}.dead")]).await;
}
