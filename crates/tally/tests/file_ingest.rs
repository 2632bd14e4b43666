//! `tally ingest` of files: compression, JSON summary, rejections, locking.

mod common;

use common::{Server, event, tally};
use serde_json::Value;

fn ingest_json(dir: &std::path::Path, files: &[&std::path::Path]) -> Value {
    common::run_json(
        tally(dir)
            .arg("ingest")
            .args(files)
            .args(["--output", "json"]),
    )
}

#[test]
fn generated_gzip_and_zstd_files_import_and_reimport_as_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gz = dir.path().join("usage.ndjson.gz");
    let zst = dir.path().join("more.ndjson.zst");
    for (path, seed) in [(&gz, "1"), (&zst, "2")] {
        let out = tally(&data)
            .args([
                "gen",
                "--instances",
                "10",
                "--days",
                "2",
                "--start",
                "2026-10-01",
                "--seed",
                seed,
                "--out",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v = ingest_json(&data, &[&gz, &zst]);
    let accepted = v["accepted"].as_u64().unwrap();
    assert!(accepted > 1000, "{v}");
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["rejected"], serde_json::json!([]));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["accepted", "duplicates", "rejected"]);

    let again = ingest_json(&data, &[&zst, &gz]);
    assert_eq!(again["accepted"], 0);
    assert_eq!(again["duplicates"].as_u64().unwrap(), accepted);

    let page = common::run_json(tally(&data).args([
        "events", "--output", "json", "--limit", "1000", "--meter", "instance",
    ]));
    assert!(!page["events"].as_array().unwrap().is_empty());
}

#[test]
fn bad_records_in_a_file_are_reported_and_the_rest_land() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("mixed.json");
    let body = format!(
        "[{}, {}, {}, {}]",
        event("m1", "p", "1"),
        event("m2", "p", "\"1e999\""),
        event("m3", "", "3"),
        event("m4", "p", "4")
    );
    std::fs::write(&file, body).unwrap();
    let out = tally(&data)
        .args(["ingest", "--output", "json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!("mixed_file_summary", String::from_utf8(out.stdout).unwrap());
}

#[test]
fn local_ingest_while_a_server_runs_says_what_to_do_and_server_mode_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("e.ndjson");
    std::fs::write(
        &file,
        [event("l1", "p", "1"), event("l2", "p", "2")].join("\n"),
    )
    .unwrap();
    let server = Server::start(&data);
    let out = tally(&data).arg("ingest").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tally ingest --server"), "{err}");
    assert!(err.contains(&server.url.replace("http://", "")), "{err}");

    let v = common::run_json(
        tally(&data)
            .args(["ingest", "--output", "json", "--server", &server.url])
            .arg(&file),
    );
    assert_eq!(v["accepted"], 2);
    server.stop();
}

#[test]
fn a_broken_array_file_reports_how_far_it_got() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("broken.json");
    std::fs::write(
        &file,
        format!(
            "[{}, {}, {{\"id\":",
            event("b1", "p", "1"),
            event("b2", "p", "2")
        ),
    )
    .unwrap();
    let out = tally(&data).arg("ingest").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("malformed JSON after element 2"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted 2"));
}
