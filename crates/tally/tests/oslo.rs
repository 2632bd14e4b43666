//! The real oslo.messaging Notifier (Python, `messagingv2` driver, from a
//! virtualenv `scripts/test` prepares: `TALLY_TEST_OSLO_PYTHON`) publishes
//! a scripted Nova lifecycle to a real RabbitMQ; `tally serve` consumes it
//! and rating gives the instance hours by flavor worked out by hand.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::amqp::{bound_queue, broker, config, connect, delete_queues, unique};
use common::{Server, client};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// A legacy Nova payload of vm-9 in p9.
fn payload(flavor: &str, vcpus: u32, state: &str) -> Value {
    json!({"tenant_id": "p9", "user_id": "u9", "instance_id": "vm-9",
           "instance_type": flavor, "instance_type_id": 7, "vcpus": vcpus,
           "memory_mb": vcpus * 1024, "root_gb": 10, "state": state})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_oslo_notifier_feeds_a_lifecycle_billed_by_flavor() {
    let python = std::env::var("TALLY_TEST_OSLO_PYTHON").unwrap_or_else(|_| {
        panic!("TALLY_TEST_OSLO_PYTHON is not set: run scripts/test, which installs oslo.messaging in a virtualenv")
    });
    let u = unique();
    let topic = format!("tallytest{u}");
    let key = format!("{topic}.info");
    let queue = format!("tally.test.oslo.{u}");
    let (_conn, channel) = connect().await;
    // oslo.messaging's notifier publishes to the control exchange
    // `openstack` (topic, not durable by default).
    bound_queue(&channel, "openstack", &queue, &key).await;

    // Small from 00:00, large from 06:00, off 08:00–09:00, shelved and
    // offloaded 12:00–15:00, deleted at 18:00.
    let lifecycle = [
        (
            "2026-10-01T00:00:00",
            "compute.instance.create.end",
            payload("m1.small", 1, "active"),
        ),
        (
            "2026-10-01T06:00:00",
            "compute.instance.finish_resize.end",
            payload("m1.large", 4, "active"),
        ),
        (
            "2026-10-01T08:00:00",
            "compute.instance.power_off.end",
            payload("m1.large", 4, "stopped"),
        ),
        (
            "2026-10-01T09:00:00",
            "compute.instance.power_on.end",
            payload("m1.large", 4, "active"),
        ),
        (
            "2026-10-01T12:00:00",
            "compute.instance.shelve_offload.end",
            payload("m1.large", 4, "shelved_offloaded"),
        ),
        (
            "2026-10-01T15:00:00",
            "compute.instance.unshelve.end",
            payload("m1.large", 4, "active"),
        ),
        (
            "2026-10-01T18:00:00",
            "compute.instance.delete.end",
            payload("m1.large", 4, "deleted"),
        ),
    ];
    let url = broker()
        .replace("amqp://", "rabbit://")
        .replace("/%2f", "/");
    let mut child = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oslo_notify.py"))
        .args([&url, &topic, "compute.host-9"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    {
        let stdin = child.stdin.as_mut().unwrap();
        for (time, event, p) in &lifecycle {
            let line = json!({"time": time, "event_type": event, "payload": p});
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the oslo publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &queue, "openstack", &key, "");
    let server = Server::start_with(
        &dir.path().join("data"),
        &[("TALLY_CONFIG", config.to_str().unwrap())],
    );
    let mut events = Vec::new();
    for _ in 0..150 {
        events = server.all_events().await;
        if events.len() >= 28 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(events.len(), 28, "7 notifications × 4 records: {events:?}");
    assert!(
        events.iter().all(|e| e["project_id"] == "p9"),
        "billed to the owner, not the admin actor"
    );

    let run = client()
        .post(format!("{}/v1/rating/runs", server.url))
        .bearer_auth(&server.key)
        .json(&json!({"from": "2026-10-01T00:00:00Z", "to": "2026-10-02T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 201, "{}", run.text().await.unwrap());
    let lines: Value = client()
        .get(format!(
            "{}/v1/rated-lines?meter=instance.hours&limit=1000",
            server.url
        ))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut hours: BTreeMap<String, Decimal> = BTreeMap::new();
    for l in lines["lines"].as_array().unwrap() {
        let q: Decimal = l["quantity"].as_str().unwrap().parse().unwrap();
        *hours
            .entry(l["group"]["flavor_name"].as_str().unwrap().to_string())
            .or_default() += q;
    }
    // Small 00–06: 6 h. Large 06–08, 09–12, 15–18: 8 h (off and offloaded
    // hours are not billed).
    assert_eq!(hours.get("m1.small"), Some(&Decimal::from(6)), "{hours:?}");
    assert_eq!(hours.get("m1.large"), Some(&Decimal::from(8)), "{hours:?}");
    server.stop();
    // The notifier declares a queue named after its topic too.
    delete_queues(&channel, &[&queue, &format!("{queue}.dead"), &key]).await;
}
