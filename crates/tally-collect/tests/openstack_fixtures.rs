//! Every OpenStack fixture in `../shared/fixtures/openstack` decodes to
//! records or is deliberately ignored with a reason: a table over the whole
//! folder, so a new fixture cannot slip through untested.
//!
//! The folder is found through `TALLY_OPENSTACK_FIXTURES` (set by
//! `scripts/test`) or beside the repository; the test fails when it is
//! missing rather than passing on nothing.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::Utc;
use serde_json::Value;
use tally_collect::Decoder;
use tally_collect::openstack::{self, OpenStackDecoder};
use tally_core::{AttributeValue, UsageRecord};

fn fixtures() -> PathBuf {
    let dir = std::env::var_os("TALLY_OPENSTACK_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/openstack")
        });
    assert!(
        dir.join("README.md").exists(),
        "OpenStack fixtures not found at {}: set TALLY_OPENSTACK_FIXTURES",
        dir.display()
    );
    dir
}

/// Files that hold no messages, and why.
fn not_messages(rel: &str) -> Option<&'static str> {
    if rel.starts_with("nova/common_payloads/") {
        Some("$ref targets of the Nova samples, not messages")
    } else if rel.starts_with("nova/api_samples/") {
        Some("os-simple-tenant-usage REST responses (for reconciliation), not messages")
    } else if rel.starts_with("nova/")
        && !rel.starts_with("nova/resolved/")
        && !rel.starts_with("nova/legacy/")
    {
        Some("Nova samples with $ref; their resolved copies in nova/resolved/ are decoded")
    } else if rel.starts_with("keystone/") && !rel.contains("identity.") {
        Some("Keystone REST bodies: tokens and projects, no usage")
    } else {
        None
    }
}

/// The messages of one file: the file itself, or (listener captures keyed
/// by scenario) each value.
fn messages(rel: &str, bytes: &[u8]) -> Vec<(String, Bytes)> {
    let v: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let keyed = matches!(&v, Value::Object(m)
        if !m.contains_key("event_type") && !m.contains_key("oslo.message")
            && !m.contains_key("request") && !m.contains_key("payload")
            && m.values().all(Value::is_object));
    if keyed {
        v.as_object()
            .unwrap()
            .iter()
            // sg-core's test file keeps the message under `testInput`.
            .map(|(k, m)| (k, m.get("testInput").unwrap_or(m)))
            .map(|(k, m)| {
                (
                    format!("{rel} [{k}]"),
                    Bytes::from(serde_json::to_vec(m).unwrap()),
                )
            })
            .collect()
    } else {
        vec![(rel.to_string(), Bytes::copy_from_slice(bytes))]
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

fn decode_all() -> Vec<(String, Result<Vec<UsageRecord>, String>)> {
    let root = fixtures();
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if not_messages(&rel).is_some() {
            continue;
        }
        for (name, bytes) in messages(&rel, &std::fs::read(&f).unwrap()) {
            let r = OpenStackDecoder
                .decode(&bytes, Utc::now())
                .map_err(|e| format!("{:?}: {}", e.code, e.message));
            let r = match r {
                Ok(records) if records.is_empty() => {
                    let why = openstack::ignored(&bytes)
                        .unwrap_or_else(|| panic!("{name}: no records and no reason"));
                    Err(format!("ignored {}: {}", why.0, why.1))
                }
                other => other,
            };
            out.push((name, r));
        }
    }
    out
}

#[test]
fn every_fixture_decodes_or_is_ignored_with_a_reason() {
    let all = decode_all();
    assert!(all.len() > 100, "only {} messages found", all.len());
    let mut decoded = 0;
    let mut failures = Vec::new();
    for (name, r) in &all {
        match r {
            Ok(records) => {
                decoded += 1;
                for rec in records {
                    assert!(!rec.project_id.is_empty(), "{name}");
                    assert!(!rec.resource_id.is_empty(), "{name}");
                    assert_eq!(rec.source, "openstack");
                }
            }
            Err(reason) if reason.starts_with("ignored ") => {}
            Err(reason) => failures.push(format!("{name}: {reason}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(decoded > 60, "only {decoded} messages gave records");
}

fn records_of(name: &str) -> Vec<UsageRecord> {
    decode_all()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .1
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn attr<'a>(r: &'a UsageRecord, k: &str) -> Option<&'a str> {
    match r.attributes.get(k) {
        Some(AttributeValue::String(s)) => Some(s),
        _ => None,
    }
}

#[test]
fn legacy_nova_bills_the_payload_owner_with_flavor_and_sizes() {
    let r = records_of("nova/legacy/INSTANCE_FINISH_RESIZE_END.json");
    let meters: Vec<&str> = r.iter().map(|x| x.meter.as_str()).collect();
    assert_eq!(meters, ["instance", "vcpus", "memory", "disk.root.size"]);
    let inst = &r[0];
    assert_eq!(
        attr(inst, "event_type"),
        Some("compute.instance.finish_resize.end")
    );
    assert!(attr(inst, "flavor_name").is_some());
    assert_eq!(inst.id.len(), 36, "the message_id");
    assert_eq!(r[1].id, format!("{}:vcpus", inst.id));
}

#[test]
fn versioned_nova_without_ids_gets_a_stable_derived_id_and_the_payload_time() {
    let a = records_of("nova/resolved/instance-delete-end.json");
    let b = records_of("nova/resolved/instance-delete-end.json");
    assert_eq!(a[0].id, b[0].id);
    assert!(a[0].id.starts_with("sha256:"));
    assert_eq!(a[0].time.to_rfc3339(), "2012-10-29T13:42:11+00:00");
    assert_eq!(attr(&a[0], "status"), Some("deleted"));
    assert_eq!(attr(&a[0], "flavor_name"), Some("test_flavor"));
    assert_eq!(a[0].project_id, "6f70656e737461636b20342065766572");
}

#[test]
fn the_wire_envelope_is_decoded_twice() {
    // A glance image.create inside {"oslo.version", "oslo.message"}.
    let r = records_of("wire/glance-image.create-oslo2.json");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].meter, "image.size");
}

#[test]
fn bad_messages_are_errors_with_reasons() {
    let d = OpenStackDecoder;
    let now = Utc::now();
    let e = d
        .decode(
            &Bytes::from_static(br#"{"oslo.version":"2.0","oslo.message":"{not json"}"#),
            now,
        )
        .unwrap_err();
    assert!(e.message.contains("oslo.message"), "{}", e.message);
    let e = d
        .decode(&Bytes::from_static(br#"{"message_id":"m1","event_type":"volume.create.end","timestamp":"2018-05-29 20:12:38.640725","payload":{"volume_id":"v","size":1}}"#), now)
        .unwrap_err();
    assert!(e.message.contains("names no owner"), "{}", e.message);
    assert_eq!(e.id.as_deref(), Some("m1"));
    let e = d
        .decode(&Bytes::from_static(br#"{"message_id":"m2","event_type":"instance.create.end","timestamp":"2018-05-29 20:12:38","payload":{"nova_object.version":"3.0","nova_object.data":{}}}"#), now)
        .unwrap_err();
    assert!(
        e.message.contains("nova_object.version '3.0'"),
        "{}",
        e.message
    );
    let e = d
        .decode(&Bytes::from_static(br#"{"counter_name":"cpu","counter_type":"cumulative","counter_volume":"lots","counter_unit":"ns","project_id":"p","resource_id":"r","timestamp":"2026-10-01T00:00:00Z","message_id":"s1"}"#), now)
        .unwrap_err();
    assert!(e.message.contains("must be a number"), "{}", e.message);
    // The naive UTC time of the bus is read as UTC.
    let r = d
        .decode(&Bytes::from_static(br#"{"message_id":"m3","event_type":"volume.create.end","timestamp":"2018-05-29 20:12:38.640725","payload":{"volume_id":"v","size":"10","tenant_id":"p","volume_type":"ssd"}}"#), now)
        .unwrap();
    assert_eq!(r[0].time.to_rfc3339(), "2018-05-29T20:12:38.640725+00:00");
    assert_eq!(r[0].volume.to_string(), "10");
    assert_eq!(attr(&r[0], "volume_type"), Some("ssd"));
}
