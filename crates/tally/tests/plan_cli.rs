//! `tally plan check` and `tally meters` as a user runs them.

mod common;

use serde_json::Value;

#[test]
fn a_valid_plan_is_described_and_a_bad_one_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("plan.toml");
    std::fs::write(
        &good,
        r#"
id = "public"
currency = "EUR"
[[versions]]
effective_from = "2026-10-01T00:00:00Z"
[[versions.rules]]
meter = "instance.hours"
match = { flavor_name = "m1.small" }
charge = { type = "per_unit", unit_price = "0.0125" }
"#,
    )
    .unwrap();
    let v = common::run_json(
        common::tally(dir.path())
            .args(["plan", "check", "--output", "json"])
            .arg(&good),
    );
    assert_eq!(v["valid"], true);
    assert_eq!(
        v["versions"][0]["rules"][0]["charge"]["unit_price"],
        "0.0125"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace("instance.hours", "gpu.hours"),
    )
    .unwrap();
    let out = common::tally(dir.path())
        .args(["plan", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("versions[0].rules[0].meter: unknown meter 'gpu.hours'"),
        "{err}"
    );
}

#[test]
fn meters_lists_the_default_openstack_set() {
    let dir = tempfile::tempdir().unwrap();
    let list: Vec<Value> = serde_json::from_value(common::run_json(
        common::tally(dir.path()).args(["meters", "--output", "json"]),
    ))
    .unwrap();
    assert!(
        list.iter()
            .any(|m| m["name"] == "volume.gib_hours" && m["records"] == "volume.size")
    );
}
