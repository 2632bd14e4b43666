//! Starting `tally` as a user would, for end-to-end tests.
#![allow(dead_code)]

pub mod amqp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The tally binary built for these tests.
pub fn tally_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tally")
}

/// A `tally` command with a data directory and no stray configuration.
pub fn tally(data_dir: &Path) -> Command {
    let mut c = Command::new(tally_bin());
    c.arg("--data-dir").arg(data_dir);
    c.env_remove("TALLY_API_KEY").env("TALLY_LOG", "warn");
    // Every server a test starts checks each JSON answer against the
    // OpenAPI document: a drifted schema fails the test that met it.
    c.env("TALLY_CHECK_RESPONSES", "1");
    c
}

/// Runs a `tally` command that must succeed and print one JSON document.
pub fn run_json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("tally runs");
    assert!(
        out.status.success(),
        "tally failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is exactly one JSON document")
}

/// A running `tally serve` on a free loopback port.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub key: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts a server on `data_dir` with extra environment variables.
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = tally(data_dir);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("tally serve starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.strip_prefix("tally listening on ") {
                    let url = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(url);
                    sent = true;
                }
                if std::env::var_os("TALLY_TEST_VERBOSE").is_some() {
                    eprintln!("[serve] {line}");
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("tally serve did not report its address within 60 s");
            }
        };
        let key = match std::fs::read_to_string(data_dir.join("admin-key")) {
            Ok(k) => k.trim().to_string(),
            Err(e) => {
                // Not left running (and holding its database) after the panic.
                let _ = child.kill();
                let _ = child.wait();
                panic!("first start writes admin-key: {e}");
            }
        };
        Server {
            child,
            url,
            key,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Starts a server with default settings.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let status = self.child.wait().expect("server exits");
        assert!(status.success(), "server exited with {status}");
    }

    /// POST a body to /v1/events with the admin key.
    pub async fn post(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        client()
            .post(format!("{}/v1/events", self.url))
            .bearer_auth(&self.key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("a text body")
    }

    /// POST an NDJSON body with the admin key; the JSON answer.
    pub async fn post_ndjson(&self, body: impl Into<reqwest::Body>) -> serde_json::Value {
        self.post("application/x-ndjson", body)
            .await
            .json()
            .await
            .expect("a JSON answer")
    }

    /// Every raw record visible to the admin key, following cursors.
    pub async fn all_events(&self) -> Vec<serde_json::Value> {
        self.all_events_as(&self.key.clone(), "").await
    }

    /// Every raw record visible to `key`, with extra query text.
    pub async fn all_events_as(&self, key: &str, query: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/events?limit=1000{query}", self.url);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let resp = client().get(url).bearer_auth(key).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let page: serde_json::Value = resp.json().await.unwrap();
            out.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// A valid CloudEvent with id `id`.
pub fn event(id: &str, project: &str, volume: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"test","type":"volume.size","subject":"vol-1","time":"2026-10-01T12:00:00Z","data":{{"project_id":"{project}","volume":{volume},"unit":"GiB","kind":"gauge","attributes":{{"volume_type":"ssd"}}}}}}"#
    )
}

/// Runs `tally <args> --output json` on `data_dir`; it must succeed.
pub fn tally_json(data_dir: &Path, args: &[&str]) -> serde_json::Value {
    run_json(tally(data_dir).args(args).args(["--output", "json"]))
}

/// Imports a file with `tally ingest`; returns the summary.
pub fn ingest_file(data_dir: &Path, file: &Path) -> serde_json::Value {
    run_json(
        tally(data_dir)
            .args(["ingest", "--output", "json"])
            .arg(file),
    )
}

/// Stores a price plan with `tally plan apply`; it must succeed.
pub fn apply_plan(data_dir: &Path, file: &Path) {
    let out = tally(data_dir)
        .args(["plan", "apply"])
        .arg(file)
        .output()
        .expect("tally runs");
    assert!(
        out.status.success(),
        "plan apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a project_reader API key for `project`; returns its secret.
pub fn project_reader_key(data_dir: &Path, project: &str) -> String {
    let created = tally_json(
        data_dir,
        &[
            "admin",
            "key",
            "create",
            "--role",
            "project-reader",
            "--project",
            project,
        ],
    );
    created["key"].as_str().expect("the secret").to_string()
}

/// A legacy `compute.instance.*` notification of vm-1 in p1, as the v2
/// driver puts it on the bus (the envelope holds the message as a string).
pub fn nova(id: &str, event: &str, time: &str, flavor: &str, vcpus: u32, state: &str) -> String {
    let message = serde_json::json!({
        "message_id": id,
        "publisher_id": "compute.host-1",
        "event_type": event,
        "priority": "INFO",
        "timestamp": time,
        "_context_project_id": "admin-project",
        "payload": {
            "tenant_id": "p1",
            "user_id": "u1",
            "instance_id": "vm-1",
            "instance_type": flavor,
            "instance_type_id": 5,
            "vcpus": vcpus,
            "memory_mb": vcpus * 2048,
            "root_gb": 20,
            "state": state,
        }
    });
    serde_json::json!({"oslo.version": "2.0", "oslo.message": message.to_string()}).to_string()
}

/// Reads a FOCUS Parquet file with pyarrow (the Python that `scripts/test`
/// provides in `TALLY_TEST_PYTHON`), checks the FOCUS column types there,
/// and returns `{"rows": N, "totals": {InvoiceId: Σ BilledCost}}`. Fails
/// when no such Python is configured: the check never skips.
pub fn pyarrow_check_focus(path: &Path) -> serde_json::Value {
    let python = std::env::var("TALLY_TEST_PYTHON").expect(
        "TALLY_TEST_PYTHON is not set: run scripts/test, which provides a Python with pyarrow",
    );
    let script = r#"
import json, sys, decimal
import pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
types = {f.name: f.type for f in t.schema}
dec = pa.decimal128(38, 18)
ts = pa.timestamp("us", tz="UTC")
for c in ["BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ConsumedQuantity", "PricingQuantity", "ListUnitPrice", "ContractedUnitPrice"]:
    assert types[c] == dec, (c, types[c])
for c in ["BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"]:
    assert types[c] == ts, (c, types[c])
for c in ["BillingAccountId", "BillingCurrency", "ChargeCategory", "ChargeClass", "InvoiceId", "ResourceId", "ServiceCategory", "ServiceName", "SkuId", "SubAccountId"]:
    assert types[c] == pa.string(), (c, types[c])
assert set(t.column("ChargeCategory").to_pylist()) <= {"Usage", "Tax", "Credit", "Adjustment", "Purchase"}
totals = {}
for inv, cost in zip(t.column("InvoiceId").to_pylist(), t.column("BilledCost").to_pylist()):
    totals[inv] = totals.get(inv, decimal.Decimal(0)) + cost
print(json.dumps({"rows": t.num_rows, "totals": {k: format(v.normalize(), "f") for k, v in totals.items()}}))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "pyarrow check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the check prints JSON")
}
