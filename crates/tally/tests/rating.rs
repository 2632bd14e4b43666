//! Rating as a user runs it: ingest, apply a plan, rate, list lines,
//! re-rate, simulate, quote; locally and through the server.

mod common;

use std::path::Path;

use common::{Server, client};
use rust_decimal::Decimal;
use serde_json::Value;

/// A CloudEvent for `meter` of `resource` in `project`.
fn ev(
    id: &str,
    meter: &str,
    resource: &str,
    project: &str,
    time: &str,
    volume: &str,
    attrs: &str,
) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"nova","type":"{meter}","subject":"{resource}","time":"{time}","data":{{"project_id":"{project}","volume":{volume},"kind":"gauge","attributes":{attrs}}}}}"#
    )
}

/// One instance in p1 (small from 00:00, large from 10:30, deleted 12:00)
/// and one 100 GiB volume in p2 (00:00 to its deletion at 05:00).
fn usage() -> Vec<String> {
    let small = r#"{"status":"active","flavor_name":"m1.small"}"#;
    let large = r#"{"status":"active","flavor_name":"m1.large"}"#;
    let deleted = r#"{"status":"deleted","flavor_name":"m1.large","event_type":"compute.instance.delete.end"}"#;
    vec![
        ev(
            "i1",
            "instance",
            "vm-1",
            "p1",
            "2026-10-01T00:00:00Z",
            "1",
            small,
        ),
        ev(
            "c1",
            "vcpus",
            "vm-1",
            "p1",
            "2026-10-01T00:00:00Z",
            "1",
            "{}",
        ),
        ev(
            "i2",
            "instance",
            "vm-1",
            "p1",
            "2026-10-01T10:30:00Z",
            "1",
            large,
        ),
        ev(
            "c2",
            "vcpus",
            "vm-1",
            "p1",
            "2026-10-01T10:30:00Z",
            "4",
            "{}",
        ),
        ev(
            "i3",
            "instance",
            "vm-1",
            "p1",
            "2026-10-01T12:00:00Z",
            "0",
            deleted,
        ),
        ev(
            "v1",
            "volume.size",
            "vol-1",
            "p2",
            "2026-10-01T00:00:00Z",
            "100",
            r#"{"volume_type":"ssd"}"#,
        ),
        ev(
            "v2",
            "volume.size",
            "vol-1",
            "p2",
            "2026-10-01T05:00:00Z",
            "100",
            r#"{"volume_type":"ssd","event_type":"volume.delete.end"}"#,
        ),
    ]
}

const PLAN: &str = r#"
id = "public"
currency = "EUR"
[[versions]]
effective_from = "2026-01-01T00:00:00Z"
[[versions.rules]]
meter = "instance.hours"
match = { flavor_name = "m1.small" }
charge = { type = "per_unit", unit_price = "0.01" }
[[versions.rules]]
meter = "instance.hours"
match = { flavor_name = "m1.large" }
charge = { type = "per_unit", unit_price = "0.04" }
[[versions.rules]]
meter = "vcpu.hours"
charge = { type = "per_unit", unit_price = "0.005" }
[[versions.rules]]
meter = "volume.gib_hours"
charge = { type = "graduated", tiers = [ { up_to = "50", unit_price = "0.0002" }, { unit_price = "0.0001" } ] }
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn d(v: &Value) -> Decimal {
    v.as_str().expect("decimals are strings").parse().unwrap()
}

fn project_total(lines: &Value, project: &str) -> Decimal {
    lines["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["project_id"] == project)
        .map(|l| d(&l["amount"]))
        .sum()
}

fn run_files(data: &Path, run: &Value) -> Vec<Vec<u8>> {
    run["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| std::fs::read(data.join("rated").join(f.as_str().unwrap())).unwrap())
        .collect()
}

#[test]
fn a_hand_computed_day_rates_exactly_and_re_rating_writes_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let events = write(dir.path(), "usage.ndjson", &(usage().join("\n") + "\n"));
    common::ingest_file(&data, &events);
    let plan = write(dir.path(), "plan.toml", PLAN);
    let out = common::tally(&data)
        .args(["plan", "apply"])
        .arg(&plan)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = common::tally_json(&data, &["rate", "--period", "2026-10"]);
    assert_eq!(run["status"], "complete");
    assert_eq!(run["records_read"], 7);
    assert_eq!(run["currency"], "EUR");
    let lines = common::tally_json(&data, &["lines", "--limit", "1000"]);
    // p1: small 10.5 h × 0.01 + large 1.5 h × 0.04 + vCPU (10.5 × 1 + 1.5 × 4) × 0.005
    //   = 0.105 + 0.06 + 0.0825 = 0.2475
    assert_eq!(project_total(&lines, "p1"), "0.2475".parse().unwrap());
    // p2: 5 hours of 100 GiB; each hour 50 × 0.0002 + 50 × 0.0001 = 0.015.
    assert_eq!(project_total(&lines, "p2"), "0.075".parse().unwrap());
    assert_eq!(d(&run["amount"]), "0.3225".parse().unwrap());
    let first_hour_small = lines["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["meter"] == "instance.hours"
                && l["period_start"] == "2026-10-01T10:00:00Z"
                && l["group"]["flavor_name"] == "m1.small"
        })
        .expect("the resize hour has a small line");
    assert_eq!(first_hour_small["quantity"], "0.5");
    assert_eq!(first_hour_small["rule"], "rules[0]");
    assert_eq!(first_hour_small["plan_id"], "public");
    assert_eq!(first_hour_small["plan_version"], 1);
    assert_eq!(
        first_hour_small["raw_count"], 0,
        "the 10:30 record is m1.large's"
    );
    assert_eq!(first_hour_small["segments"].as_array().unwrap().len(), 0);

    // Pages are slices of the one listing order; totals cover every line.
    let page = common::tally_json(&data, &["lines", "--limit", "2", "--offset", "1"]);
    assert_eq!(
        page["lines"].as_array().unwrap()[..],
        lines["lines"].as_array().unwrap()[1..3]
    );
    assert_eq!(page["total"], lines["total"]);
    assert_eq!(page["amount"], lines["amount"]);

    // Re-rating replaces the lines and writes byte-identical files.
    let again = common::tally_json(&data, &["rate", "--period", "2026-10"]);
    assert_ne!(again["run_id"], run["run_id"]);
    assert_eq!(run_files(&data, &again), run_files(&data, &run));
    let lines_again = common::tally_json(&data, &["lines", "--limit", "1000"]);
    assert_eq!(lines_again, lines, "one set of current lines, not two");

    // A period without data rates to nothing, without error.
    let empty = common::tally_json(&data, &["rate", "--period", "2026-09"]);
    assert_eq!(empty["lines"], 0);
    assert_eq!(empty["amount"], "0");
}

#[test]
fn shuffled_and_duplicated_delivery_rates_to_the_same_lines() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write(dir.path(), "plan.toml", PLAN);
    let ordered = write(dir.path(), "a.ndjson", &(usage().join("\n") + "\n"));
    let mut shuffled = usage();
    shuffled.reverse();
    shuffled.extend(usage().into_iter().step_by(2));
    shuffled.swap(0, 3);
    let shuffled = write(dir.path(), "b.ndjson", &(shuffled.join("\n") + "\n"));
    let mut results = Vec::new();
    for (name, file, extra) in [("one", &ordered, None), ("two", &shuffled, Some(&ordered))] {
        let data = dir.path().join(name);
        common::ingest_file(&data, file);
        if let Some(f) = extra {
            // The same ids again in a later import: all duplicates.
            common::ingest_file(&data, f);
        }
        common::apply_plan(&data, &plan);
        common::tally_json(&data, &["rate", "--period", "2026-10"]);
        let mut lines = common::tally_json(&data, &["lines", "--limit", "1000"]);
        // Segment file names differ between data directories; nothing else may.
        for l in lines["lines"].as_array_mut().unwrap() {
            l["segments"] = Value::Null;
        }
        results.push(lines);
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn a_bad_plan_changes_nothing_and_simulation_compares_a_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let events = write(dir.path(), "usage.ndjson", &(usage().join("\n") + "\n"));
    common::ingest_file(&data, &events);
    let plan = write(dir.path(), "plan.toml", PLAN);
    common::apply_plan(&data, &plan);

    let broken = write(
        dir.path(),
        "broken.toml",
        &PLAN.replace("currency = \"EUR\"\n", ""),
    );
    let out = common::tally(&data)
        .args(["plan", "apply"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("currency") && err.contains("unchanged"),
        "{err}"
    );
    let plans = common::tally_json(&data, &["plan", "list"]);
    assert_eq!(plans.as_array().unwrap().len(), 1);
    assert_eq!(plans[0]["currency"], "EUR");

    common::tally_json(&data, &["rate", "--period", "2026-10"]);
    let doubled = write(
        dir.path(),
        "candidate.toml",
        &PLAN
            .replace("\"0.01\"", "\"0.02\"")
            .replace("id = \"public\"", "id = \"candidate\""),
    );
    let sim = common::run_json(
        common::tally(&data)
            .args([
                "plan", "simulate", "--period", "2026-10", "--output", "json", "--plan",
            ])
            .arg(&doubled),
    );
    let row = sim["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["project_id"] == "p1" && r["meter"] == "instance.hours")
        .unwrap()
        .clone();
    // Only m1.small doubles: 10.5 h × 0.01 more.
    assert_eq!(d(&row["difference"]), "0.105".parse().unwrap());
    assert_eq!(d(&sim["current_total"]), "0.3225".parse().unwrap());
    // Simulation stores nothing: the current lines still total as before.
    let lines = common::tally_json(&data, &["lines"]);
    assert_eq!(d(&lines["amount"]), "0.3225".parse().unwrap());
}

#[tokio::test]
async fn the_server_rates_lists_scoped_lines_and_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let resp = server
        .post("application/x-ndjson", usage().join("\n"))
        .await;
    assert_eq!(resp.status(), 200);
    let applied = client()
        .post(format!("{}/v1/plans", server.url))
        .bearer_auth(&server.key)
        .body(PLAN)
        .send()
        .await
        .unwrap();
    assert_eq!(applied.status(), 201, "{}", applied.text().await.unwrap());

    // Right after ingest: the run must see records not yet flushed.
    let run: Value = client()
        .post(format!("{}/v1/rating/runs", server.url))
        .bearer_auth(&server.key)
        .json(&serde_json::json!({"from": "2026-10-01T00:00:00Z", "to": "2026-10-02T00:00:00Z"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["records_read"], 7, "{run}");
    assert_eq!(run["amount"], "0.3225");

    let unaligned = client()
        .post(format!("{}/v1/rating/runs", server.url))
        .bearer_auth(&server.key)
        .json(&serde_json::json!({"from": "2026-10-01T00:30:00Z", "to": "2026-10-02T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unaligned.status(), 400);
    let body: Value = unaligned.json().await.unwrap();
    assert_eq!(body["code"], "invalid_range");
    assert!(body["message"].as_str().unwrap().contains("--from"));

    let reader = &common::project_reader_key(dir.path(), "p2");
    let mine: Value = client()
        .get(format!("{}/v1/rated-lines?project_id=p1", server.url))
        .bearer_auth(reader)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["total"], 0, "a p2 reader asking for p1 sees nothing");
    let mine: Value = client()
        .get(format!("{}/v1/rated-lines", server.url))
        .bearer_auth(reader)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["total"], 5);
    assert!(
        mine["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["project_id"] == "p2")
    );
    assert_eq!(mine["amount"], "0.075");
    let forbidden = client()
        .post(format!("{}/v1/rating/runs", server.url))
        .bearer_auth(reader)
        .json(&serde_json::json!({"from": "2026-10-01T00:00:00Z", "to": "2026-10-02T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    let quote: Value = client()
        .post(format!("{}/v1/quote", server.url))
        .bearer_auth(&server.key)
        .json(&serde_json::json!({
            "meter": "volume.gib_hours", "quantity": "120", "project_id": "p2",
            "time": "2026-10-05T00:00:00Z"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // 50 × 0.0002 + 70 × 0.0001 = 0.017
    assert_eq!(d(&quote["amount"]), "0.017".parse().unwrap(), "{quote}");
    assert_eq!(quote["currency"], "EUR");
    assert_eq!(quote["rule"], "rules[3]");
    let unknown = client()
        .post(format!("{}/v1/quote", server.url))
        .bearer_auth(&server.key)
        .json(&serde_json::json!({"meter": "gpu.hours", "quantity": "1", "project_id": "p2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);

    // Meter definitions: a bad document is refused and changes nothing.
    let put = client()
        .put(format!("{}/v1/meters", server.url))
        .bearer_auth(&server.key)
        .body("[[meters]]\nname = \"x\"\nunit = \"u\"\nrecords = { meter = \"x\" }\naggregation = { type = \"median\" }\n")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 400);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["code"], "invalid_document");
    assert!(
        body["message"].as_str().unwrap().contains("median"),
        "{body}"
    );
    let meters: Value = client()
        .get(format!("{}/v1/meters", server.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meters["meters"].as_array().unwrap().len(), 10);
    server.stop();
}

#[test]
fn a_cloudkitty_listing_prices_lines_like_cloudkitty() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let events = write(dir.path(), "usage.ndjson", &(usage().join("\n") + "\n"));
    common::ingest_file(&data, &events);
    // Flavor mappings (per-unit flats) in one group, and a service threshold
    // at level 1 that halves the price of a data point (a line) whose
    // quantity reaches one hour.
    let listing = r#"{
      "services": [{"service_id": "s", "name": "instance.hours"}, {"service_id": "x", "name": "cpu"}],
      "fields": [{"field_id": "f", "service_id": "s", "name": "flavor_name"}],
      "groups": [{"group_id": "g", "name": "flavors"}],
      "mappings": [
        {"mapping_id": "m1", "value": "m1.small", "type": "flat", "cost": "0.01", "field_id": "f", "group_id": "g"},
        {"mapping_id": "m2", "value": "m1.large", "type": "flat", "cost": "0.04", "field_id": "f", "group_id": "g"}
      ],
      "thresholds": [
        {"threshold_id": "t", "level": "1", "type": "rate", "cost": "0.5", "service_id": "s", "group_id": "g"}
      ]
    }"#;
    let import = |file: &Path| {
        common::tally(&data)
            .args([
                "plan",
                "import-cloudkitty",
                "--id",
                "ck",
                "--currency",
                "EUR",
            ])
            .arg(file)
            .output()
            .unwrap()
    };
    let file = write(dir.path(), "hashmap.json", listing);
    let out = import(&file);
    assert!(!out.status.success(), "'cpu' is no meter here");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services[name=cpu]") && err.contains("define a meter"),
        "{err}"
    );

    let file = write(
        dir.path(),
        "hashmap.json",
        &listing.replace(r#", {"service_id": "x", "name": "cpu"}"#, ""),
    );
    let out = import(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::tally_json(&data, &["rate", "--period", "2026-10"]);
    let lines = common::tally_json(
        &data,
        &["lines", "--meter", "instance.hours", "--limit", "100"],
    );
    // Small: hours 0–9 are full (1 h ≥ level 1: × 0.5) = 10 × 0.01 × 0.5 = 0.05,
    // hour 10 has 0.5 h (below the level) = 0.005. Large: hour 10 has 0.5 h
    // = 0.02, hour 11 is full = 0.04 × 0.5 = 0.02. Total 0.095.
    assert_eq!(project_total(&lines, "p1"), "0.095".parse().unwrap());
    let l = &lines["lines"][0];
    assert_eq!(l["rule"], "cloudkitty:instance.hours");
    assert_eq!(l["plan_id"], "ck");
}

#[test]
fn a_range_shuffled_through_buckets_on_disk_rates_like_one_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let events = dir.path().join("gen.ndjson");
    let out = common::tally(&data)
        .args([
            "gen",
            "--instances",
            "40",
            "--days",
            "2",
            "--seed",
            "7",
            "--start",
            "2026-10-01",
            "--out",
        ])
        .arg(&events)
        .output()
        .unwrap();
    assert!(out.status.success());
    common::ingest_file(&data, &events);
    let plan = write(dir.path(), "plan.toml", PLAN);
    common::apply_plan(&data, &plan);
    let rate = |memory_mb: &str| {
        let run = common::run_json(
            common::tally(&data)
                .env("TALLY_RATING__MEMORY_LIMIT_MB", memory_mb)
                .args(["rate", "--period", "2026-10", "--output", "json"]),
        );
        let lines = common::tally_json(&data, &["lines", "--limit", "100000"]);
        (run, lines)
    };
    // 1 MiB: buckets of 1,000 rows, so the ~9,000 records go through files.
    let (small_run, small) = rate("1");
    let (big_run, big) = rate("1024");
    assert!(small_run["records_read"].as_u64().unwrap() > 5_000);
    assert_eq!(small_run["records_read"], big_run["records_read"]);
    assert_eq!(small_run["lines"], big_run["lines"]);
    assert_eq!(small["lines"], big["lines"]);
    assert!(
        !data.join("tmp/rating-spill").exists()
            || std::fs::read_dir(data.join("tmp/rating-spill"))
                .unwrap()
                .next()
                .is_none(),
        "shuffle files are removed after the run"
    );
}

#[tokio::test]
async fn serve_puts_a_meters_file_in_force_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let meters = write(
        dir.path(),
        "meters.toml",
        "[[meters]]\nname = \"gpu.hours\"\nunit = \"hour\"\nrecords = { meter = \"gpu\" }\naggregation = { type = \"time_weighted\" }\n",
    );
    let data = dir.path().join("data");
    let server = Server::start_with(
        &data,
        &[("TALLY_RATING__METERS_FILE", meters.to_str().unwrap())],
    );
    let listed: Value = client()
        .get(format!("{}/v1/meters", server.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["meters"][0]["name"], "gpu.hours");
    assert_eq!(listed["meters"].as_array().unwrap().len(), 1);
    server.stop();

    let bad = write(dir.path(), "bad.toml", "[[meters]]\nname = \"x\"\n");
    let out = common::tally(&data)
        .env("TALLY_RATING__METERS_FILE", &bad)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("missing field"),
        "{err}"
    );
}

/// The volume-hours of `vol-1` rated between `from` and `to`, and the
/// instant of the carry snapshot the run started from (null: it read the
/// whole history).
fn volume_hours(data: &Path, from: &str, to: &str) -> (Decimal, Value) {
    let run = common::tally_json(data, &["rate", "--from", from, "--to", to]);
    assert_eq!(run["status"], "complete", "{run}");
    let lines = common::tally_json(
        data,
        &["lines", "--from", from, "--to", to, "--limit", "1000"],
    );
    let hours = lines["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["meter"] == "volume.gib_hours")
        .map(|l| d(&l["quantity"]))
        .sum::<Decimal>();
    (hours, run["carried_from"].clone())
}

#[test]
fn a_gauge_carries_from_any_age_and_late_history_is_not_hidden_by_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let volume = |id: &str, time: &str, size: &str, attrs: &str| {
        ev(id, "volume.size", "vol-1", "p2", time, size, attrs)
    };
    let ssd = r#"{"volume_type":"ssd"}"#;
    let first = write(
        dir.path(),
        "first.ndjson",
        &(volume("v1", "2026-10-01T00:00:00Z", "100", ssd) + "\n"),
    );
    common::ingest_file(&data, &first);

    // Rated from the whole history (no snapshot yet), then from the
    // snapshot the first run left at its end: the only record is 19 days
    // old and is not read again.
    let whole = volume_hours(&data, "2026-10-01T00:00:00Z", "2026-10-02T00:00:00Z");
    assert_eq!(whole, (Decimal::from(2400), Value::Null));
    let carried = volume_hours(&data, "2026-10-20T10:00:00Z", "2026-10-20T11:00:00Z");
    assert_eq!(carried.0, Decimal::from(100));
    assert_eq!(
        carried.1, "2026-10-02T00:00:00Z",
        "started from the snapshot"
    );

    // A resize on 10 October arrives late, after the snapshots of 20
    // October were taken without it: they are stale, and the re-rating
    // starts from the 2 October one and sees 200.
    let late = write(
        dir.path(),
        "late.ndjson",
        &(volume("v2", "2026-10-10T00:00:00Z", "200", ssd) + "\n"),
    );
    common::ingest_file(&data, &late);
    let resized = volume_hours(&data, "2026-10-20T10:00:00Z", "2026-10-20T11:00:00Z");
    assert_eq!(resized.0, Decimal::from(200));
    assert_eq!(
        resized.1, "2026-10-02T00:00:00Z",
        "the 20 October snapshots are stale"
    );
    // That run's own snapshots saw the resize: the next run uses them.
    let again = volume_hours(&data, "2026-10-20T11:00:00Z", "2026-10-20T12:00:00Z");
    assert_eq!(again, (Decimal::from(200), "2026-10-20T11:00:00Z".into()));

    // Deleted on 15 October: nothing carries past it, from a snapshot or not.
    let deleted = write(
        dir.path(),
        "deleted.ndjson",
        &(volume(
            "v3",
            "2026-10-15T00:00:00Z",
            "200",
            r#"{"volume_type":"ssd","event_type":"volume.delete.end"}"#,
        ) + "\n"),
    );
    common::ingest_file(&data, &deleted);
    assert_eq!(
        volume_hours(&data, "2026-10-14T00:00:00Z", "2026-10-16T00:00:00Z").0,
        Decimal::from(4800)
    );
    assert_eq!(
        volume_hours(&data, "2026-10-20T10:00:00Z", "2026-10-20T11:00:00Z").0,
        Decimal::ZERO
    );
    assert_eq!(
        volume_hours(&data, "2026-10-16T00:00:00Z", "2026-10-17T00:00:00Z").0,
        Decimal::ZERO
    );
}

#[test]
fn a_month_of_bytes_sums_exactly_past_64_bits_of_millionths() {
    // Two days of 5 TB each on a meter rated by the default definition (a
    // sum of raw bytes): each day's cell holds 5e18 millionths, and their
    // sum passes what a 64-bit integer holds.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let events = [
        ev(
            "b1",
            "network.incoming.bytes",
            "nic-1",
            "p1",
            "2026-10-01T10:00:00Z",
            "5000000000000",
            "{}",
        ),
        ev(
            "b2",
            "network.incoming.bytes",
            "nic-1",
            "p1",
            "2026-10-02T10:00:00Z",
            "5000000000000.5",
            "{}",
        ),
    ];
    let file = write(dir.path(), "bytes.ndjson", &(events.join("\n") + "\n"));
    common::ingest_file(&data, &file);
    let run = common::tally_json(&data, &["rate", "--period", "2026-10"]);
    assert_eq!(run["status"], "complete", "{run}");
    let costs = common::tally_json(
        &data,
        &["costs", "--period", "2026-10", "--group-by", "meter"],
    );
    let row = &costs["rows"][0];
    assert_eq!(row["meter"], "network.incoming.bytes", "{costs}");
    assert_eq!(
        d(&row["quantity"]),
        "10000000000000.5".parse().unwrap(),
        "{costs}"
    );
}
