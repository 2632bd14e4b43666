//! OpenStack usage as an operator sends it: Nova notifications imported
//! with `tally ingest --format openstack` and rated into instance hours by
//! flavor; Ceilometer's HTTP publisher posting samples with the key in the
//! URL's userinfo.

mod common;

use std::collections::BTreeMap;

use common::{Server, client, nova};
use rust_decimal::Decimal;
use serde_json::Value;

#[test]
fn a_nova_lifecycle_rates_into_instance_hours_by_flavor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Created small at 00:00, resized to large at 10:00, off 12:00 to
    // 14:00, deleted at 20:00: 10 h small; large 10–12 and 14–20, 8 h
    // (the 2 h switched off are not billed).
    let lifecycle = [
        nova(
            "m1",
            "compute.instance.create.start",
            "2026-10-01 00:00:00.000000",
            "m1.small",
            1,
            "building",
        ),
        nova(
            "m2",
            "compute.instance.create.end",
            "2026-10-01 00:00:00.000000",
            "m1.small",
            1,
            "active",
        ),
        nova(
            "m3",
            "compute.instance.finish_resize.end",
            "2026-10-01 10:00:00.000000",
            "m1.large",
            4,
            "active",
        ),
        nova(
            "m4",
            "compute.instance.power_off.end",
            "2026-10-01 12:00:00.000000",
            "m1.large",
            4,
            "stopped",
        ),
        nova(
            "m5",
            "compute.instance.power_on.end",
            "2026-10-01 14:00:00.000000",
            "m1.large",
            4,
            "active",
        ),
        nova(
            "m6",
            "compute.instance.delete.end",
            "2026-10-01 20:00:00.000000",
            "m1.large",
            4,
            "deleted",
        ),
        // Redelivered by the bus: counted once.
        nova(
            "m3",
            "compute.instance.finish_resize.end",
            "2026-10-01 10:00:00.000000",
            "m1.large",
            4,
            "active",
        ),
    ];
    let file = dir.path().join("nova.ndjson");
    std::fs::write(&file, lifecycle.join("\n")).unwrap();
    let summary = common::run_json(
        common::tally(&data)
            .args(["ingest", "--format", "openstack", "--output", "json"])
            .arg(&file),
    );
    assert_eq!(summary["rejected"], serde_json::json!([]));
    // 5 billed messages × (instance, vcpus, memory, disk) = 20; the start
    // event gives none; the repeat is a duplicate of 4.
    assert_eq!(summary["accepted"], 20, "{summary}");
    assert_eq!(summary["duplicates"], 4, "{summary}");

    let out = common::tally(&data)
        .args([
            "rate",
            "--from",
            "2026-10-01T00:00:00Z",
            "--to",
            "2026-10-02T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = common::tally_json(&data, &["lines", "--limit", "10000"]);
    let mut hours: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for l in lines["lines"].as_array().unwrap() {
        let flavor = l["group"]["flavor_name"]
            .as_str()
            .unwrap_or("-")
            .to_string();
        let q: Decimal = l["quantity"].as_str().unwrap().parse().unwrap();
        *hours
            .entry((l["meter"].as_str().unwrap().to_string(), flavor))
            .or_default() += q;
        assert_eq!(l["project_id"], "p1", "billed to the owner, not the actor");
    }
    let h = |m: &str, f: &str| {
        hours
            .get(&(m.into(), f.into()))
            .copied()
            .unwrap_or_default()
    };
    assert_eq!(h("instance.hours", "m1.small"), Decimal::from(10));
    assert_eq!(h("instance.hours", "m1.large"), Decimal::from(8));
    // vCPUs are allocated while stopped: 10 × 1 + 10 × 4 = 50.
    assert_eq!(h("vcpu.hours", "-"), Decimal::from(50));

    // Nova's os-simple-tenant-usage for the day says 20 h at m1.large (it
    // ignores power states and prices the window at the current flavor).
    let nova = serde_json::json!({"tenant_usage": {
        "start": "2026-10-01T00:00:00.000000", "stop": "2026-10-02T00:00:00.000000",
        "tenant_id": "p1", "total_hours": 20.0,
        "server_usages": [{"instance_id": "vm-1", "name": "web", "flavor": "m1.large",
            "hours": 20.0, "started_at": "2026-10-01T00:00:00.000000",
            "ended_at": "2026-10-01T20:00:00.000000", "state": "terminated",
            "tenant_id": "p1", "vcpus": 4, "memory_mb": 8192, "local_gb": 20, "uptime": 72000}]}});
    let file = dir.path().join("usage.json");
    std::fs::write(&file, nova.to_string()).unwrap();
    let rows = common::run_json(
        common::tally(&data)
            .args(["reconcile", "nova-usage", "--output", "json"])
            .arg(&file),
    );
    let row = &rows[0];
    assert_eq!(row["tally_hours"], "18");
    assert_eq!(row["difference"], "-2");
    let why = row["explanation"].as_str().unwrap();
    assert!(
        why.contains("resized") && why.contains("m1.small 10"),
        "{why}"
    );
    assert!(
        why.contains("2 h less") && why.contains("ignores power states"),
        "{why}"
    );
}

#[tokio::test]
async fn ceilometer_posts_samples_with_the_key_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let samples = serde_json::json!([
        {"source": "openstack", "counter_name": "volume.size", "counter_type": "gauge",
         "counter_unit": "GB", "counter_volume": 10, "user_id": "u1", "project_id": "p1",
         "resource_id": "vol-1", "timestamp": "2026-10-01T00:00:00.000000",
         "resource_metadata": {"volume_type": "ssd", "status": "available"},
         "message_id": "s-1"},
        {"source": "openstack", "counter_name": "cpu", "counter_type": "cumulative",
         "counter_unit": "ns", "counter_volume": "not a number", "user_id": "u1",
         "project_id": "p1", "resource_id": "vm-1", "timestamp": "2026-10-01T00:05:00",
         "message_id": "s-2"}
    ]);
    let url = format!("{}/v1/ceilometer/samples", server.url);
    let answer: Value = client()
        .post(&url)
        .basic_auth("ceilometer", Some(&server.key))
        .json(&samples)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["id"], "s-2");
    assert_eq!(answer["rejected"][0]["code"], "invalid_volume");
    // A wrong key in the userinfo is refused.
    let refused = client()
        .post(&url)
        .basic_auth("ceilometer", Some("tly_wrong"))
        .json(&samples)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let events = server.all_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["meter"], "volume.size");
    assert_eq!(events[0]["attributes"]["volume_type"], "ssd");
    server.stop();
}
