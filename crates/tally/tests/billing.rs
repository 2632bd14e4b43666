//! Billing as an operator runs it, on SQLite and on PostgreSQL: accounts,
//! a month of usage rated and invoiced, finalization, payments, credit
//! notes, the ledger, and the database refusing changes to issued
//! invoices. Every scenario runs once per backend (`_sqlite`, `_postgres`);
//! the PostgreSQL ones need the server `scripts/test` starts and fail when
//! it is not there.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use rust_decimal::Decimal;
use serde_json::Value;

/// A data directory and the billing database a scenario uses.
struct Env {
    dir: tempfile::TempDir,
    database: String,
}

impl Env {
    fn new(backend: &str, label: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let database = match backend {
            "sqlite" => tally_db::Database::sqlite_url_in(dir.path()),
            _ => tally_db::testing::fresh_postgres_url(label),
        };
        Env { dir, database }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn tally(&self) -> Command {
        let mut c = common::tally(self.path());
        c.arg("--database").arg(&self.database);
        c
    }

    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.tally().args(args).output().expect("tally runs");
        assert!(
            out.status.success(),
            "tally {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(&[args, &["--output", "json"]].concat());
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Runs a command that must fail; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.tally().args(args).output().expect("tally runs");
        assert!(
            !out.status.success(),
            "tally {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn ingest(&self, events: &[String]) {
        let file = self.write("usage.ndjson", &events.join("\n"));
        let out = self.ok(&["ingest", file.to_str().unwrap()]);
        assert!(out.contains("rejected 0"), "{out}");
    }

    fn apply_plan(&self, name: &str, text: &str) {
        let file = self.write(name, text);
        self.ok(&["plan", "apply", file.to_str().unwrap()]);
    }

    /// Creates a reader key (`account-reader` of an account or
    /// `project-reader` of a project); returns its secret.
    fn reader_key(&self, role: &str, id: &str) -> String {
        let scope = if role == "account-reader" {
            "--account"
        } else {
            "--project"
        };
        let created = self.json(&["admin", "key", "create", "--role", role, scope, id]);
        created["key"].as_str().expect("the secret").to_string()
    }

    async fn connect(&self) -> tally_db::Database {
        tally_db::Database::open(&self.database).await.unwrap()
    }
}

/// Runs a scenario once on each backend.
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$name(super::Env::new("sqlite", stringify!($name))).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$name(super::Env::new("postgres", stringify!($name))).await;
            }
        }
    };
}

/// A `vcpus` gauge of `n` for `resource` in `project` from 1 October on:
/// `n` × 744 vCPU-hours in October.
fn vcpus(id: &str, resource: &str, project: &str, n: u32) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"nova","type":"vcpus","subject":"{resource}","time":"2026-10-01T00:00:00Z","data":{{"project_id":"{project}","volume":{n},"kind":"gauge","attributes":{{}}}}}}"#
    )
}

/// The event with the Keystone domain of its project named.
fn in_domain(event: String, domain: &str) -> String {
    event.replace(
        r#""kind":"gauge""#,
        &format!(r#""kind":"gauge","domain_id":"{domain}""#),
    )
}

const STANDARD: &str = r#"
id = "standard"
currency = "EUR"
[[versions]]
effective_from = "2020-01-01T00:00:00Z"
[[versions.rules]]
meter = "vcpu.hours"
charge = { type = "per_unit", unit_price = "0.01" }
"#;

fn d(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// Three accounts with October usage rated: `pre` (prepaid, p-pre, 2
/// vCPUs), `post` (postpaid, p-post, 4 vCPUs, VAT 19%, 10% coupon), `dom`
/// (domain `dom`: d-1, d-2, d-3 with 1, 1, 2 vCPUs, minimum commitment 50;
/// d-1 and d-2 known to be in it from their records, d-3 mapped by hand),
/// and p-orphan (1 vCPU) that no account owns.
fn three_accounts(env: &Env) {
    env.apply_plan("standard.toml", STANDARD);
    env.ingest(&[
        vcpus("e1", "vm-a", "p-pre", 2),
        vcpus("e2", "vm-b", "p-post", 4),
        in_domain(vcpus("e3", "vm-c", "d-1", 1), "dom"),
        in_domain(vcpus("e4", "vm-d", "d-2", 1), "dom"),
        vcpus("e5", "vm-e", "d-3", 2),
        vcpus("e6", "vm-z", "p-orphan", 1),
    ]);
    // 11 vCPUs × 744 h × 0.01 = 81.84.
    let rate = env.ok(&["rate", "--period", "2026-10"]);
    assert!(
        rate.contains("4464 lines") && rate.contains("amount 81.84 EUR"),
        "{rate}"
    );
    env.ok(&[
        "account",
        "create",
        "pre",
        "--name",
        "Pre Ltd",
        "--currency",
        "EUR",
        "--mode",
        "prepaid",
        "--project",
        "p-pre",
    ]);
    env.ok(&[
        "account",
        "create",
        "post",
        "--name",
        "Post GmbH",
        "--currency",
        "EUR",
        "--tax",
        "VAT 19%=0.19",
        "--project",
        "p-post",
        "--email",
        "billing@post.example",
        "--address",
        "Hauptstraße 1",
        "--address",
        "10115 Berlin",
    ]);
    env.ok(&[
        "account",
        "coupon",
        "post",
        "TEN",
        "--percent",
        "10",
        "--first-period",
        "2026-10",
    ]);
    env.ok(&[
        "account",
        "create",
        "dom",
        "--name",
        "Domain Corp",
        "--currency",
        "EUR",
        "--domain",
        "dom",
        "--minimum-commitment",
        "50",
    ]);
    // d-1 and d-2 are found through the domain their records name; d-3's
    // records name none, so the operator maps it.
    env.ok(&["account", "map-project", "d-3", "--domain", "dom"]);
}

fn outcomes(run: &Value) -> Vec<(String, String, Option<Decimal>)> {
    run["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["account_id"].as_str().unwrap().to_string(),
                o["outcome"].as_str().unwrap().to_string(),
                o["total"].as_str().map(|t| t.parse().unwrap()),
            )
        })
        .collect()
}

async fn a_month_for_three_accounts(env: Env) {
    three_accounts(&env);
    env.ok(&["account", "top-up", "pre", "20.00", "--reference", "wire-1"]);

    let run = env.json(&["invoice", "run", "--period", "2026-10"]);
    // pre: 2 × 744 × 0.01 = 14.88.
    // post: 4 × 744 × 0.01 = 29.76; 10% = 2.976 → 2.98; 26.78 × 0.19 =
    //   5.0882 → 5.09; total 31.87.
    // dom: 4 × 744 × 0.01 = 29.76 over three lines; commitment tops it up
    //   to 50.00 (+20.24); no tax.
    assert_eq!(
        outcomes(&run),
        vec![
            ("dom".into(), "created".into(), Some(dec("50.00"))),
            ("post".into(), "created".into(), Some(dec("31.87"))),
            ("pre".into(), "created".into(), Some(dec("14.88"))),
        ]
    );
    assert_eq!(run["unbilled_lines"], 744, "p-orphan's hours");
    let unbilled = env.json(&["report", "unbilled", "--period", "2026-10"]);
    assert_eq!(unbilled.as_array().unwrap().len(), 1);
    assert_eq!(unbilled[0]["project_id"], "p-orphan");
    assert_eq!(d(&unbilled[0]["amount"]), dec("7.44"));

    let dom = env.json(&["invoice", "show", "dom-2026-10"]);
    let lines = dom["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines
            .iter()
            .map(|l| l["project_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["d-1", "d-2", "d-3"]
    );
    assert_eq!(d(&lines[2]["amount"]), dec("14.88"));
    assert_eq!(d(&lines[2]["quantity"]), dec("1488"));
    assert_eq!(d(&lines[2]["unit_price"]), dec("0.01"));
    assert_eq!(d(&dom["commitment_top_up"]), dec("20.24"));

    let post = env.json(&["invoice", "show", "post-2026-10"]);
    assert_eq!(post["status"], "draft");
    assert_eq!(post["number"], Value::Null);
    assert_eq!(post["buyer"]["name"], "Post GmbH");
    assert_eq!(post["buyer"]["address"][1], "10115 Berlin");
    assert_eq!(post["discounts"][0]["code"], "TEN");
    assert_eq!(d(&post["discounts"][0]["amount"]), dec("2.98"));
    assert_eq!(d(&post["taxes"][0]["amount"]), dec("5.09"));

    // A second run regenerates the drafts to the same figures.
    let again = env.json(&["invoice", "run", "--period", "2026-10"]);
    assert!(outcomes(&again).iter().all(|(_, o, _)| o == "regenerated"));
    assert_eq!(
        env.json(&["invoice", "show", "post-2026-10"])["revision"],
        2
    );

    // Finalizing numbers them without gaps, in account order.
    let done = env.json(&["invoice", "finalize", "--period", "2026-10"]);
    let numbers: Vec<&str> = done
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["INV-000001", "INV-000002", "INV-000003"]);
    // The prepaid account's balance paid its invoice at once.
    let pre = env.json(&["invoice", "show", "pre-2026-10"]);
    assert_eq!(pre["status"], "paid");
    let pre_balance = env.json(&["account", "balance", "pre"]);
    assert_eq!(d(&pre_balance["prepaid"]), dec("5.12"));
    assert_eq!(d(&pre_balance["receivable"]), dec("0"));
    let post_balance = env.json(&["account", "balance", "post"]);
    assert_eq!(d(&post_balance["receivable"]), dec("31.87"));
    assert!(
        env.fails(&["invoice", "finalize", "post-2026-10"])
            .contains("is finalized")
    );

    // Credit notes: 10.00 returns 1.60 of tax (10 × 5.09 / 31.87 = 1.597…);
    // never more than what remains.
    let cn = env.json(&[
        "invoice",
        "credit",
        "post-2026-10",
        "--amount",
        "10.00",
        "--reason",
        "outage",
    ]);
    assert_eq!(cn["number"], "CN-000001");
    assert_eq!((d(&cn["net"]), d(&cn["tax"])), (dec("8.40"), dec("1.60")));
    let too_much = env.fails(&[
        "invoice",
        "credit",
        "post-2026-10",
        "--amount",
        "21.88",
        "--reason",
        "x",
    ]);
    assert!(too_much.contains("exceeds what remains"), "{too_much}");
    env.json(&["invoice", "credit", "post-2026-10", "--reason", "goodwill"]);
    assert_eq!(
        d(&env.json(&["account", "balance", "post"])["receivable"]),
        dec("0.00")
    );
    let shown = env.json(&["invoice", "show", "post-2026-10"]);
    assert_eq!(d(&shown["credited"]), dec("31.87"));
    assert_eq!(shown["credit_notes"][1]["number"], "CN-000002");

    // dom pays; the ledger has every movement and balances.
    env.ok(&["invoice", "pay", "dom-2026-10", "--reference", "wire-7"]);
    assert_eq!(
        env.json(&["invoice", "show", "dom-2026-10"])["status"],
        "paid"
    );
    // A line's credit is its share of the total: d-3's 14.88 of a 29.76
    // subtotal on a 50.00 invoice is 25.00; paid money goes back to the
    // prepaid balance; the line cannot be credited twice.
    let line = env.json(&[
        "invoice",
        "credit",
        "dom-2026-10",
        "--line",
        "3",
        "--reason",
        "d-3 was a test project",
    ]);
    assert_eq!(d(&line["total"]), dec("25.00"));
    assert_eq!(line["line_no"], 3);
    assert_eq!(
        d(&env.json(&["account", "balance", "dom"])["prepaid"]),
        dec("25.00")
    );
    let twice = env.fails(&[
        "invoice",
        "credit",
        "dom-2026-10",
        "--line",
        "3",
        "--amount",
        "0.01",
        "--reason",
        "again",
    ]);
    assert!(twice.contains("line 3 can take 0"), "{twice}");
    let db = env.connect().await;
    let amounts: Vec<(String, String)> =
        sqlx::query_as("SELECT currency, amount FROM ledger_entries")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let sum: Decimal = amounts.iter().map(|(_, a)| dec(a)).sum();
    assert_eq!(sum, Decimal::ZERO, "the books balance");
    let revenue: Decimal = sqlx::query_as::<_, (String,)>(
        "SELECT amount FROM ledger_entries WHERE ledger_account = 'revenue'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|(a,)| dec(a))
    .sum();
    // Credited: 50.00 + 14.88 + 26.78; debited back by the two notes on
    // post (26.78) and the line note on dom (25.00, no tax).
    assert_eq!(revenue, dec("-39.88"));

    // Runs after finalization leave issued invoices alone.
    let after = env.json(&["invoice", "run", "--period", "2026-10"]);
    assert!(
        outcomes(&after)
            .iter()
            .all(|(_, o, t)| o == "finalized" && t.is_none())
    );
    let table = env.ok(&["invoice", "show", "post-2026-10"]);
    assert!(table.contains("INVOICE INV-000002"), "{table}");
    assert!(table.contains("credit note CN-000001"), "{table}");
}
on_both_backends!(a_month_for_three_accounts);

async fn finalized_invoices_cannot_be_changed(env: Env) {
    three_accounts(&env);
    env.json(&["invoice", "run", "--period", "2026-10"]);
    env.json(&["invoice", "finalize", "post-2026-10"]);
    let db = env.connect().await;
    let attempts = [
        "UPDATE invoices SET total = '0' WHERE invoice_id = 'post-2026-10'",
        "UPDATE invoices SET status = 'draft', number = NULL WHERE invoice_id = 'post-2026-10'",
        "DELETE FROM invoices WHERE invoice_id = 'post-2026-10'",
        "UPDATE invoice_lines SET amount = '0' WHERE invoice_id = 'post-2026-10'",
        "DELETE FROM invoice_lines WHERE invoice_id = 'post-2026-10'",
        "INSERT INTO invoice_lines (invoice_id, line_no, project_id, meter, unit, plan_id, \
         service_start_us, service_end_us, quantity, amount, rounded_amount, correction) \
         VALUES ('post-2026-10', 99, 'p', 'm', 'u', 'standard', 0, 1, '1', '1', '1', FALSE)",
        "UPDATE ledger_entries SET amount = '0'",
        "DELETE FROM ledger_transactions",
    ];
    for sql in attempts {
        let err = sqlx::query(sql)
            .execute(&db.pool)
            .await
            .expect_err(&format!("the database accepted: {sql}"));
        let message = err.to_string();
        assert!(
            message.contains("finalized") || message.contains("append-only"),
            "{sql}: {message}"
        );
    }
    if db.backend == tally_db::Backend::Postgres {
        let err = sqlx::query("TRUNCATE invoice_lines, invoices CASCADE")
            .execute(&db.pool)
            .await
            .expect_err("TRUNCATE accepted");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    // Drafts stay editable by the database (invoice runs regenerate them).
    sqlx::query("UPDATE invoices SET revision = revision + 1 WHERE invoice_id = 'pre-2026-10'")
        .execute(&db.pool)
        .await
        .unwrap();

    // Through the API: no deletion, no second finalization, no new lines.
    let server = common::Server::start_with(env.path(), &[("TALLY_DATABASE_URL", &env.database)]);
    let client = common::client();
    let url = |p: &str| format!("{}{p}", server.url);
    let del = client
        .delete(url("/v1/invoices/post-2026-10"))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 409);
    let body: Value = del.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("never deleted"),
        "{body}"
    );
    let fin = client
        .post(url("/v1/invoices/post-2026-10/finalize"))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(fin.status(), 409);
    let shown: Value = client
        .get(url("/v1/invoices/post-2026-10"))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["number"], "INV-000001");
    assert_eq!(d(&shown["total"]), dec("31.87"));
    assert_eq!(shown["lines"].as_array().unwrap().len(), 1);
    // A draft can be deleted, and the next run creates it again.
    let del = client
        .delete(url("/v1/invoices/pre-2026-10"))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let run: Value = client
        .post(url("/v1/invoices/runs"))
        .bearer_auth(&server.key)
        .json(&serde_json::json!({ "period": "2026-10" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        outcomes(&run),
        vec![
            ("dom".into(), "regenerated".into(), Some(dec("50.00"))),
            ("post".into(), "finalized".into(), None),
            ("pre".into(), "created".into(), Some(dec("14.88"))),
        ]
    );

    // An account reader sees its own invoices only.
    let reader = env.reader_key("account-reader", "post");
    let list: Value = client
        .get(url("/v1/invoices"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["invoice_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["post-2026-10"]);
    let other = client
        .get(url("/v1/invoices/dom-2026-10"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let accounts: Value = client
        .get(url("/v1/accounts"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accounts["accounts"].as_array().unwrap().len(), 1);
    let forbidden = client
        .post(url("/v1/invoices/runs"))
        .bearer_auth(&reader)
        .json(&serde_json::json!({ "period": "2026-10" }))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    server.stop();
}
on_both_backends!(finalized_invoices_cannot_be_changed);

async fn concurrent_runs_give_one_invoice_per_account(env: Env) {
    three_accounts(&env);
    let spawn = |args: &[&str]| env.tally().args(args).output();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(&["invoice", "run", "--period", "2026-10"]));
        let b = s.spawn(|| spawn(&["invoice", "run", "--period", "2026-10"]));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let db = env.connect().await;
    let per_account: Vec<(String, i64)> = sqlx::query_as(
        "SELECT account_id, count(*) FROM invoices GROUP BY account_id ORDER BY account_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        per_account,
        vec![("dom".into(), 1), ("post".into(), 1), ("pre".into(), 1)]
    );
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM invoice_lines")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(lines, 5, "3 dom lines + post + pre, not doubled");

    // Two finalizations at once: each invoice numbered once, no gaps.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(&["invoice", "finalize", "--period", "2026-10"]));
        let b = s.spawn(|| spawn(&["invoice", "finalize", "--period", "2026-10"]));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut numbers: Vec<String> =
        sqlx::query_scalar("SELECT number FROM invoices WHERE status = 'finalized'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    numbers.sort();
    assert_eq!(numbers, ["INV-000001", "INV-000002", "INV-000003"]);
    let postings: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger_transactions WHERE kind = 'invoice_finalized'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(postings, 3);
}
on_both_backends!(concurrent_runs_give_one_invoice_per_account);

const PREMIUM: &str = r#"
id = "premium"
currency = "EUR"
[[versions]]
effective_from = "2020-01-01T00:00:00Z"
[[versions.rules]]
meter = "vcpu.hours"
charge = { type = "per_unit", unit_price = "0.02" }
"#;

async fn a_plan_change_in_the_middle_of_a_month(env: Env) {
    env.apply_plan("standard.toml", STANDARD);
    env.apply_plan("premium.toml", PREMIUM);
    env.apply_plan(
        "dollars.toml",
        &STANDARD
            .replace("\"standard\"", "\"dollars\"")
            .replace("EUR", "USD"),
    );
    env.ingest(&[vcpus("e1", "vm-a", "p-x", 1)]);
    env.ok(&[
        "account",
        "create",
        "acme",
        "--name",
        "Acme",
        "--currency",
        "EUR",
        "--project",
        "p-x",
        "--plan",
        "standard",
    ]);
    env.ok(&[
        "account",
        "assign-plan",
        "acme",
        "premium",
        "--from",
        "2026-10-16T00:00:00Z",
        "--until",
        "2026-10-26T00:00:00Z",
    ]);
    let e = env.fails(&["account", "assign-plan", "acme", "dollars"]);
    assert!(
        e.contains("plan 'dollars' is in USD but account 'acme' is billed in EUR"),
        "{e}"
    );
    env.ok(&["rate", "--period", "2026-10"]);
    env.json(&["invoice", "run", "--period", "2026-10"]);
    let inv = env.json(&["invoice", "show", "acme-2026-10"]);
    // Standard 1–16 October (360 h) and again from the 26th (144 h) at
    // 0.01 = 5.04, one line over its whole span; premium 16–26 October
    // (240 h) at 0.02 = 4.80.
    let lines = inv["lines"].as_array().unwrap();
    let summary: Vec<(&str, &str, &str, Decimal)> = lines
        .iter()
        .map(|l| {
            (
                l["plan_id"].as_str().unwrap(),
                l["service_start"].as_str().unwrap(),
                l["service_end"].as_str().unwrap(),
                d(&l["amount"]),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "premium",
                "2026-10-16T00:00:00Z",
                "2026-10-26T00:00:00Z",
                dec("4.80")
            ),
            (
                "standard",
                "2026-10-01T00:00:00Z",
                "2026-11-01T00:00:00Z",
                dec("5.04")
            ),
        ]
    );
    assert_eq!(d(&inv["total"]), dec("9.84"));
    let e = env.fails(&[
        "account",
        "assign-plan",
        "acme",
        "premium",
        "--from",
        "2026-10-26T00:00:00Z",
        "--until",
        "2026-10-20T00:00:00Z",
    ]);
    assert!(e.contains("the end must be later"), "{e}");
}
on_both_backends!(a_plan_change_in_the_middle_of_a_month);

async fn bad_input_changes_nothing(env: Env) {
    three_accounts(&env);
    // Each refusal says what is wrong (every listed phrase must appear).
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["invoice", "run", "--period", "2026-10", "--account", "nope"],
            &["no billing account 'nope'"],
        ),
        (
            &["invoice", "run", "--period", "2099-01"],
            &["has not ended"],
        ),
        (
            &["invoice", "run", "--period", "2026-09"],
            &["has not been rated", "tally rate"],
        ),
        (&["invoice", "run", "--period", "october"], &["YYYY-MM"]),
        (
            &[
                "account",
                "coupon",
                "post",
                "OLD",
                "--fixed",
                "5",
                "--first-period",
                "2026-01",
            ],
            &["coupon 'OLD' expired after 2026-01"],
        ),
        (
            &[
                "account",
                "create",
                "post",
                "--name",
                "Again",
                "--currency",
                "EUR",
            ],
            &["already exists"],
        ),
        (
            &[
                "account",
                "create",
                "x",
                "--name",
                "X",
                "--currency",
                "EUR",
                "--timezone",
                "Mars/Base",
            ],
            &["IANA"],
        ),
        (
            &["account", "add-project", "pre", "p-post"],
            &["belongs to account 'post'"],
        ),
        (
            &["invoice", "pay", "post-2026-10"],
            &["no invoice 'post-2026-10'"],
        ),
        (
            &["account", "adjust", "post", "5", "--reason", " "],
            &["needs a reason"],
        ),
    ];
    for (args, phrases) in cases {
        let e = env.fails(args);
        for p in *phrases {
            assert!(e.contains(p), "{args:?}: {e}");
        }
    }
    // Nothing above stored anything.
    let db = env.connect().await;
    for table in [
        "invoices",
        "ledger_transactions",
        "coupons WHERE code = 'OLD'",
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_accounts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(accounts, 3);
}
on_both_backends!(bad_input_changes_nothing);

/// A `vcpus` gauge of `n` at `time`.
fn vcpus_at(id: &str, resource: &str, project: &str, n: u32, time: &str) -> String {
    vcpus(id, resource, project, n).replace("2026-10-01T00:00:00Z", time)
}

async fn late_usage_lands_on_the_next_invoice(env: Env) {
    env.apply_plan("standard.toml", STANDARD);
    env.ingest(&[
        vcpus_at("s1", "vm-b", "p-post", 4, "2026-09-01T00:00:00Z"),
        vcpus_at("o1", "vm-b", "p-post", 4, "2026-10-01T00:00:00Z"),
    ]);
    env.ok(&[
        "account",
        "create",
        "post",
        "--name",
        "Post GmbH",
        "--currency",
        "EUR",
        "--project",
        "p-post",
    ]);
    env.ok(&["rate", "--period", "2026-09"]);
    env.json(&["invoice", "run", "--period", "2026-09"]);
    let september = env.json(&["invoice", "finalize", "post-2026-09"]);
    // 4 vCPUs × 720 h × 0.01 = 28.80.
    assert_eq!(d(&september[0]["total"]), dec("28.80"));

    // A record for 30 September arrives after September was invoiced: one
    // vCPU for its last 24 hours (0.24).
    env.ingest(&[vcpus_at(
        "late",
        "vm-late",
        "p-post",
        1,
        "2026-09-30T00:00:00Z",
    )]);
    env.ok(&["rate", "--period", "2026-09"]);
    env.ok(&["rate", "--period", "2026-10"]);
    env.json(&["invoice", "run", "--period", "2026-10"]);
    let october = env.json(&["invoice", "show", "post-2026-10"]);
    let lines = october["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{october}");
    // October: vm-b's 4 vCPUs and the late VM's one, carried on from 30
    // September: 5 × 744 × 0.01 = 37.20.
    assert_eq!(lines[0]["correction"], false);
    assert_eq!(d(&lines[0]["amount"]), dec("37.20"));
    // The correction carries September as its service period.
    assert_eq!(lines[1]["correction"], true);
    assert_eq!(lines[1]["service_start"], "2026-09-01T00:00:00Z");
    assert_eq!(lines[1]["service_end"], "2026-10-01T00:00:00Z");
    assert_eq!(d(&lines[1]["quantity"]), dec("24"));
    assert_eq!(d(&lines[1]["amount"]), dec("0.24"));
    assert_eq!(d(&october["total"]), dec("37.44"));
    // September's invoice is as it was issued.
    let again = env.json(&["invoice", "show", "post-2026-09"]);
    assert_eq!(again["lines"], september[0]["lines"]);
    assert_eq!(d(&again["total"]), dec("28.80"));

    // Regenerating October does not claim the late usage twice, and once
    // October is finalized the correction is not repeated in November's
    // check of September.
    env.json(&["invoice", "run", "--period", "2026-10"]);
    let october = env.json(&["invoice", "show", "post-2026-10"]);
    assert_eq!(october["lines"].as_array().unwrap().len(), 2);
    env.json(&["invoice", "finalize", "post-2026-10"]);
    let db = env.connect().await;
    let corrections: i64 =
        sqlx::query_scalar("SELECT count(*) FROM invoice_lines WHERE correction = TRUE")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(corrections, 1);
}
on_both_backends!(late_usage_lands_on_the_next_invoice);

/// A webhook receiver on loopback: records every request, answers 500 to
/// the first and 200 after.
async fn webhook_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    use axum::http::{HeaderMap, StatusCode};
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let signature = headers
                    .get("x-tally-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let mut seen = state.lock().unwrap();
                seen.push((signature, body));
                if seen.len() == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn prepaid_drawdown_budgets_and_webhooks(env: Env) {
    let (hook_url, seen) = webhook_receiver().await;
    env.apply_plan("standard.toml", STANDARD);
    env.ingest(&[
        vcpus("e1", "vm-a", "p-pre", 2),
        vcpus_at("n1", "vm-b", "p-post", 4, "2026-11-01T00:00:00Z"),
    ]);
    env.ok(&[
        "account",
        "create",
        "pre",
        "--name",
        "Pre Ltd",
        "--currency",
        "EUR",
        "--mode",
        "prepaid",
        "--project",
        "p-pre",
        "--low-balance",
        "10",
    ]);
    env.ok(&[
        "account",
        "create",
        "post",
        "--name",
        "Post GmbH",
        "--currency",
        "EUR",
        "--project",
        "p-post",
    ]);
    let hook = env.json(&["alert", "add-webhook", &hook_url]);
    let secret = hook["secret"].as_str().unwrap().to_string();
    env.ok(&["account", "top-up", "pre", "20.00"]);

    // Rating October draws the prepaid balance down as it is rated:
    // 2 × 744 × 0.01 = 14.88 leaves 5.12, under the threshold of 10.
    let run = env.json(&["rate", "--period", "2026-10"]);
    let drawn = &run["billing"]["drawdowns"];
    assert!(
        drawn
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["period"] == "2026-10" && d["posted"] == "14.88"),
        "{run}"
    );
    assert_eq!(run["billing"]["alerts"][0]["kind"], "low_balance");
    assert_eq!(
        d(&env.json(&["account", "balance", "pre"])["prepaid"]),
        dec("5.12")
    );
    // Rating it again posts nothing more and raises nothing new.
    let again = env.json(&["rate", "--period", "2026-10"]);
    assert!(again["billing"]["alerts"].as_array().unwrap().is_empty());
    assert_eq!(
        d(&env.json(&["account", "balance", "pre"])["prepaid"]),
        dec("5.12")
    );

    // The invoice replaces the drawdowns: the balance ends where it says.
    env.json(&["invoice", "run", "--period", "2026-10", "--account", "pre"]);
    let fin = env.json(&["invoice", "finalize", "pre-2026-10"]);
    assert_eq!(fin[0]["status"], "paid");
    assert_eq!(
        d(&env.json(&["account", "balance", "pre"])["prepaid"]),
        dec("5.12")
    );

    // A budget of 1.00 for post's current period: one day of 4 vCPUs in
    // November is 0.96, 96%: the 50% and 80% thresholds are crossed.
    env.ok(&[
        "account",
        "budget",
        "post",
        "1.00",
        "--thresholds",
        "50,80,100",
    ]);
    let run = env.json(&[
        "rate",
        "--from",
        "2026-11-01T00:00:00Z",
        "--to",
        "2026-11-02T00:00:00Z",
    ]);
    let levels: Vec<&str> = run["billing"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["50", "80"], "{run}");
    let alerts = env.json(&["alert", "list"]);
    assert_eq!(alerts.as_array().unwrap().len(), 3);

    // Deliveries: the first attempt is answered 500 and stays pending; the
    // rest are delivered, signed with the webhook's secret.
    let check = env.json(&["alert", "check"]);
    assert_eq!(check["delivered"], 2, "{check}");
    let log = env.json(&["alert", "deliveries"]);
    let pending: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"] == "pending")
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["attempts"], 1);
    assert_eq!(pending[0]["last_status"], 500);
    // Its retry is due after the backoff, not before.
    let db = env.connect().await;
    let now = chrono::Utc::now();
    assert_eq!(tally_bill::alerts::deliver_due(&db, now).await.unwrap(), 0);
    let later = now + chrono::Duration::seconds(25);
    assert_eq!(
        tally_bill::alerts::deliver_due(&db, later).await.unwrap(),
        1
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for (signature, body) in &seen {
        assert_eq!(
            *signature,
            tally_bill::alerts::signature(&secret, body.as_bytes())
        );
        let alert: Value = serde_json::from_str(body).unwrap();
        assert!(alert["message"].as_str().unwrap().contains("account"));
    }
}
on_both_backends!(prepaid_drawdown_budgets_and_webhooks);

/// Amount per value of the first dimension of a `costs` answer.
fn amounts_by(summary: &Value, key: &str) -> Vec<(String, Decimal)> {
    summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let k = r[key].as_str().unwrap_or_else(|| panic!("no {key} in {r}"));
            (k.to_string(), d(&r["amount"]))
        })
        .collect()
}

/// Every summary level (per project × meter × day, per project × day, per
/// project × month, per cloud × day, per resource × month) answers as the resource cells do: each
/// question is asked again per resource and day, which only the resource
/// cells can answer, and those rows are added back up per row of the
/// first answer. Amounts, quantities and last days must agree exactly.
fn assert_levels_agree(env: &Env, period: &str) {
    // Each question is asked as is (answered from a level) and again per
    // resource and day (answered from the daily cells through the coverage
    // join); the cells, added up, must give the level's rows exactly.
    let questions = [
        ("service", "total"),
        ("meter", "day"),
        ("project,meter", "day"),
        ("account", "month"),
        ("project", "total"),
        ("project,meter", "total"),
        ("project", "day"),
        ("account", "day"),
        ("project,resource", "total"),
        ("resource,meter", "month"),
    ];
    for (group_by, bucket) in questions {
        let ask = |group_by: &str, bucket: &str| {
            env.json(&[
                "costs",
                "--period",
                period,
                "--group-by",
                group_by,
                "--bucket",
                bucket,
                "--limit",
                "10000",
            ])
        };
        let key = |row: &Value, bucket_start: String| -> Vec<String> {
            std::iter::once(bucket_start)
                .chain(group_by.split(',').map(|dim| {
                    let k = if dim == "service" || dim == "meter" {
                        dim.to_string()
                    } else {
                        format!("{dim}_id")
                    };
                    row[&k].to_string()
                }))
                .chain(std::iter::once(row["currency"].to_string()))
                .collect()
        };
        let coarse = ask(group_by, bucket);
        let fine = if group_by.contains("resource") {
            ask(group_by, "day")
        } else {
            ask(&format!("{group_by},resource"), "day")
        };
        let rows = coarse["rows"].as_array().unwrap();
        assert!(!rows.is_empty(), "{group_by} by {bucket}: no rows");
        // The period is one month: a fine row's day falls in the one
        // month bucket, or in no bucket at all.
        let coarse_start = |day_row: &Value| match bucket {
            "day" => day_row["bucket_start"].to_string(),
            "month" => rows[0]["bucket_start"].to_string(),
            _ => Value::Null.to_string(),
        };
        let mut added: std::collections::BTreeMap<Vec<String>, (Decimal, Decimal, String)> =
            Default::default();
        for row in fine["rows"].as_array().unwrap() {
            let e = added.entry(key(row, coarse_start(row))).or_default();
            e.0 += d(&row["amount"]);
            if !row["quantity"].is_null() {
                e.1 += d(&row["quantity"]);
            }
            let day = row["bucket_start"].as_str().unwrap().to_string();
            e.2 = e.2.clone().max(day);
        }
        assert_eq!(
            rows.len(),
            added.len(),
            "{group_by} by {bucket}: {coarse} against {fine}"
        );
        for row in rows {
            let (amount, quantity, last_day) = &added[&key(row, row["bucket_start"].to_string())];
            assert_eq!(d(&row["amount"]), *amount, "{group_by} by {bucket}: {row}");
            if group_by.contains("meter") {
                assert_eq!(
                    d(&row["quantity"]),
                    *quantity,
                    "{group_by} by {bucket}: {row}"
                );
            }
            // Over the whole range a row names its last day with usage
            // (unless it was read from monthly totals): the latest of its
            // cells'.
            match row.get("last_start").and_then(Value::as_str) {
                Some(day) => {
                    assert_eq!(bucket, "total", "{row}");
                    assert_eq!(day, last_day, "{group_by} by {bucket}: {row}");
                }
                None => assert!(
                    bucket != "total" || !group_by.contains("resource"),
                    "resource rows name their last day: {row}"
                ),
            }
        }
        assert_eq!(coarse["totals"], fine["totals"], "{group_by} by {bucket}");
    }
}

async fn summaries_exports_explanations_and_audit(env: Env) {
    three_accounts(&env);
    // Per account: the unowned project's usage has no account ('').
    assert_levels_agree(&env, "2026-10");
    let by_account = env.json(&["costs", "--period", "2026-10", "--group-by", "account"]);
    assert_eq!(
        amounts_by(&by_account, "account_id"),
        vec![
            ("dom".into(), dec("29.76")),
            ("post".into(), dec("29.76")),
            ("pre".into(), dec("14.88")),
            ("".into(), dec("7.44")),
        ]
    );
    assert_eq!(d(&by_account["totals"][0]["amount"]), dec("81.84"));
    // Per day and service: 11 vCPUs × 24 h × 0.01 = 2.64 a day.
    let daily = env.json(&[
        "usage",
        "--period",
        "2026-10",
        "--group-by",
        "service",
        "--bucket",
        "day",
    ]);
    let rows = daily["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 31);
    assert_eq!(rows[0]["bucket_start"], "2026-10-01T00:00:00Z");
    assert_eq!(rows[0]["service"], "Compute");
    assert_eq!(rows[0]["meter"], "vcpu.hours");
    assert_eq!(d(&rows[0]["quantity"]), dec("264"));
    assert_eq!(rows[0]["unit"], "vCPU-hour");
    assert_eq!(d(&rows[30]["amount"]), dec("2.64"));
    // Hourly buckets read the lines themselves.
    let hourly = env.json(&[
        "costs",
        "--from",
        "2026-10-05T00:00:00Z",
        "--to",
        "2026-10-05T03:00:00Z",
        "--bucket",
        "hour",
        "--project",
        "p-post",
    ]);
    assert_eq!(amounts_by_bucket(&hourly), vec![dec("0.04"); 3]);
    // Re-rating part of a day replaces that part once: totals unchanged,
    // and the day that was cut still adds up. The gauges' only records are
    // of 1 October: their values carry in from the month's run's snapshot,
    // however long ago they were sent.
    env.ok(&[
        "rate",
        "--from",
        "2026-10-25T06:00:00Z",
        "--to",
        "2026-10-25T12:00:00Z",
    ]);
    let again = env.json(&["costs", "--period", "2026-10", "--group-by", "account"]);
    assert_eq!(again["rows"], by_account["rows"]);
    assert_levels_agree(&env, "2026-10");
    let cut_day = env.json(&[
        "costs",
        "--from",
        "2026-10-25T00:00:00Z",
        "--to",
        "2026-10-26T00:00:00Z",
    ]);
    assert_eq!(d(&cut_day["totals"][0]["amount"]), dec("2.64"));
    assert!(
        env.fails(&["costs", "--bucket", "fortnight"])
            .contains("unknown bucket 'fortnight'")
    );

    // The same through the API, scoped by the caller.
    let server = common::Server::start_with(env.path(), &[("TALLY_DATABASE_URL", &env.database)]);
    let client = common::client();
    let get = |key: String, query: &'static str| {
        let client = client.clone();
        let url = format!("{}/v1/costs?{query}", server.url);
        async move {
            let resp = client.get(url).bearer_auth(key).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let dom_reader = env.reader_key("account-reader", "dom");
    let (status, dom) = get(dom_reader.clone(), "period=2026-10&group_by=project").await;
    assert_eq!(status, 200, "{dom}");
    assert_eq!(
        amounts_by(&dom, "project_id"),
        vec![
            ("d-3".into(), dec("14.88")),
            ("d-1".into(), dec("7.44")),
            ("d-2".into(), dec("7.44")),
        ]
    );
    // Asking for another account's projects gives nothing, not an error.
    let (_, other) = get(dom_reader.clone(), "period=2026-10&project_id=p-post").await;
    assert_eq!(other["rows"].as_array().unwrap().len(), 0);
    let pre_reader = env.reader_key("project-reader", "p-pre");
    let (status, pre) = get(
        pre_reader.clone(),
        "period=2026-10&group_by=account,project",
    )
    .await;
    assert_eq!(status, 200, "{pre}");
    assert_eq!(
        amounts_by(&pre, "project_id"),
        vec![("p-pre".into(), dec("14.88"))]
    );
    let (status, bad) = get(server.key.clone(), "period=2026-10&colour=red").await;
    assert_eq!(status, 400);
    assert!(bad["message"].as_str().unwrap().contains("colour"), "{bad}");
    // A query axum itself cannot parse is refused in the same JSON form.
    let resp = client
        .get(format!("{}/v1/reports/unbilled?from=yesterday", server.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let bad: Value = resp.json().await.unwrap();
    assert_eq!(bad["code"], "invalid_request", "{bad}");

    // FOCUS: one row per resource, discount, top-up and tax; BilledCost
    // adds up to each invoice's total.
    env.json(&["invoice", "run", "--period", "2026-10"]);
    env.json(&["invoice", "finalize", "--period", "2026-10"]);
    let csv_path = env.path().join("focus.csv");
    env.ok(&[
        "export",
        "focus",
        "--period",
        "2026-10",
        "--out",
        csv_path.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut per_invoice: std::collections::BTreeMap<String, Decimal> = Default::default();
    let mut categories = Vec::new();
    for rec in reader.records() {
        let rec = rec.unwrap();
        *per_invoice
            .entry(rec[col("InvoiceId")].to_string())
            .or_default() += dec(&rec[col("BilledCost")]);
        categories.push((
            rec[col("InvoiceId")].to_string(),
            rec[col("ChargeCategory")].to_string(),
            rec[col("ResourceId")].to_string(),
            rec[col("SubAccountId")].to_string(),
        ));
    }
    assert_eq!(
        per_invoice.into_iter().collect::<Vec<_>>(),
        vec![
            ("dom-2026-10".into(), dec("50.00")),
            ("post-2026-10".into(), dec("31.87")),
            ("pre-2026-10".into(), dec("14.88")),
        ]
    );
    let post: Vec<_> = categories
        .iter()
        .filter(|c| c.0 == "post-2026-10")
        .map(|c| (c.1.as_str(), c.2.as_str(), c.3.as_str()))
        .collect();
    assert_eq!(
        post,
        [
            ("Usage", "vm-b", "p-post"),
            ("Credit", "", ""),
            ("Tax", "", "")
        ]
    );
    assert!(categories.contains(&(
        "dom-2026-10".into(),
        "Adjustment".into(),
        "".into(),
        "".into()
    )));

    // A credit note is billed in the period it is issued in (now): a
    // Credit and a Tax row of class Correction under the note's own id,
    // adding up to minus its total.
    let cn = env.json(&[
        "invoice",
        "credit",
        "post-2026-10",
        "--amount",
        "11.90",
        "--reason",
        "outage",
    ]);
    let now_period = chrono::Utc::now().format("%Y-%m").to_string();
    let credit_csv = env.path().join("focus-credit.csv");
    env.ok(&[
        "export",
        "focus",
        "--period",
        &now_period,
        "--out",
        credit_csv.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&credit_csv).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut credited = Decimal::ZERO;
    let mut kinds = Vec::new();
    for rec in reader.records() {
        let rec = rec.unwrap();
        assert_eq!(
            &rec[col("InvoiceId")],
            cn["credit_note_id"].as_str().unwrap()
        );
        assert_eq!(&rec[col("ChargeClass")], "Correction");
        assert_eq!(&rec[col("ChargePeriodStart")][..10], "2026-10-01");
        credited += dec(&rec[col("BilledCost")]);
        kinds.push(rec[col("ChargeCategory")].to_string());
    }
    assert_eq!(kinds, ["Credit", "Tax"], "{text}");
    assert_eq!(credited, -d(&cn["total"]), "{text}");

    // CSV of invoices (a row per invoice line) and of rated lines.
    let csv_out = env.ok(&["invoice", "list", "--period", "2026-10", "--output", "csv"]);
    let rows: Vec<&str> = csv_out.lines().collect();
    assert_eq!(rows.len(), 1 + 5, "{csv_out}");
    assert!(rows[0].starts_with("invoice_id,number,status"), "{csv_out}");
    let lines_csv = env.ok(&[
        "lines",
        "--project",
        "p-pre",
        "--limit",
        "3",
        "--output",
        "csv",
    ]);
    assert_eq!(lines_csv.lines().count(), 1 + 3, "{lines_csv}");
    assert!(lines_csv.contains("p-pre,vm-a,vcpu.hours"), "{lines_csv}");
    let dom_csv = client
        .get(format!("{}/v1/invoices?format=csv", server.url))
        .bearer_auth(&dom_reader)
        .send()
        .await
        .unwrap();
    assert_eq!(dom_csv.headers()["content-type"], "text/csv; charset=utf-8");
    let dom_csv = dom_csv.text().await.unwrap();
    assert_eq!(dom_csv.lines().count(), 1 + 3, "{dom_csv}");
    assert!(
        dom_csv
            .lines()
            .skip(1)
            .all(|l| l.starts_with("dom-2026-10,")),
        "{dom_csv}"
    );

    // The Parquet file through the API, read back by pyarrow.
    let resp = client
        .get(format!(
            "{}/v1/exports/focus?period=2026-10&format=parquet",
            server.url
        ))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let parquet_path = env.path().join("focus.parquet");
    std::fs::write(&parquet_path, resp.bytes().await.unwrap()).unwrap();
    let checked = common::pyarrow_check_focus(&parquet_path);
    assert_eq!(
        checked["totals"],
        serde_json::json!({"dom-2026-10": "50", "post-2026-10": "31.87", "pre-2026-10": "14.88"}),
        "{checked}"
    );

    // The PDF of an issued invoice, and not for another account's reader.
    let pdf = |key: String| {
        let request = client
            .get(format!("{}/v1/invoices/post-2026-10/pdf", server.url))
            .bearer_auth(key);
        async move { request.send().await.unwrap() }
    };
    let resp = pdf(server.key.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/pdf");
    let bytes = resp.bytes().await.unwrap();
    let doc = lopdf::Document::load_mem(&bytes).unwrap();
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    // Pieces of a line may extract as separate lines: compare words.
    let text = doc
        .extract_text(&pages)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let post = env.json(&["invoice", "show", "post-2026-10"]);
    for needle in [
        post["number"].as_str().unwrap(),
        "Post GmbH",
        "Hauptstraße 1",
        "29.76 EUR",
        "-2.98 EUR",
        "5.09 EUR",
        "Total due 31.87 EUR",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert_eq!(pdf(dom_reader.clone()).await.status(), 404);

    // Explain one hour of vm-b: the run, the rule, the raw record and its
    // payload; another account's reader gets the same 404 as for nothing.
    let explain = |key: String, project: &'static str| {
        let request = client
            .get(format!("{}/v1/explain", server.url))
            .query(&[
                ("project_id", project),
                ("resource_id", "vm-b"),
                ("meter", "vcpu.hours"),
                ("at", "2026-10-05T10:30:00Z"),
            ])
            .bearer_auth(key);
        async move { request.send().await.unwrap() }
    };
    let resp = explain(server.key.clone(), "p-post").await;
    assert_eq!(resp.status(), 200);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["lines"].as_array().unwrap().len(), 1);
    assert_eq!(e["lines"][0]["period_start"], "2026-10-05T10:00:00Z");
    assert_eq!(d(&e["lines"][0]["amount"]), dec("0.04"));
    assert_eq!(e["priced_by"][0]["plan_id"], "standard");
    assert_eq!(e["priced_by"][0]["rule"], "rules[0]");
    assert_eq!(e["meter"]["records"], "vcpus");
    assert!(e["run"]["run_id"].as_str().unwrap().starts_with("run-"));
    // The gauge's one record, on 1 October, carried into the 5th.
    let records = e["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{e}");
    assert_eq!(records[0]["id"], "e2");
    assert!(
        records[0]["payload"]
            .as_str()
            .unwrap()
            .contains(r#""volume":4"#)
    );
    assert_eq!(explain(dom_reader.clone(), "p-post").await.status(), 404);
    // The same line by the id a listing gives it, through the API and the
    // CLI's positional LINE_ID.
    let get = |path: &str, query: Vec<(&str, String)>, key: &str| {
        client
            .get(format!("{}{path}", server.url))
            .query(&query)
            .bearer_auth(key)
            .send()
    };
    let listed: Value = get(
        "/v1/rated-lines",
        vec![
            ("project_id", "p-post".into()),
            ("from", "2026-10-05T10:00:00Z".into()),
            ("to", "2026-10-05T11:00:00Z".into()),
        ],
        &server.key,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let line_id = listed["lines"][0]["line_id"].as_str().unwrap().to_string();
    assert_eq!(line_id, "p-post~vm-b~vcpu.hours~20261005T100000Z");
    let by_id = |id: &str, key: &str| get("/v1/explain", vec![("line_id", id.to_string())], key);
    let explained: Value = by_id(&line_id, &server.key)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(explained["lines"], e["lines"]);
    let cli = env.json(&[
        "explain",
        &line_id,
        "--server",
        server.url.as_str(),
        "--api-key",
        server.key.as_str(),
    ]);
    assert_eq!(cli["lines"], e["lines"]);
    let resp = by_id("p-post~vm-b~vcpu.hours", &server.key).await.unwrap();
    assert_eq!(resp.status(), 400);
    let refused: Value = resp.json().await.unwrap();
    assert!(
        refused["message"].as_str().unwrap().contains("line_id"),
        "{refused}"
    );
    assert_eq!(by_id(&line_id, &dom_reader).await.unwrap().status(), 404);

    // A plan as a tenant reads it: versions, rules and each price in words.
    let plan: Value = client
        .get(format!("{}/v1/plans/standard", server.url))
        .bearer_auth(&pre_reader)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["plan_id"], "standard", "{plan}");
    assert_eq!(plan["currency"], "EUR");
    let rule = &plan["versions"][0]["rules"][0];
    assert_eq!(rule["meter"], "vcpu.hours");
    assert_eq!(rule["description"], "0.01 EUR per vCPU-hour", "{rule}");
    let missing = client
        .get(format!("{}/v1/plans/no-such-plan", server.url))
        .bearer_auth(&pre_reader)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Tenant isolation, generated from the OpenAPI document so that a new
    // endpoint is covered as soon as it is documented: every operation,
    // asked by another account's reader and by another project's reader
    // with post's ids, answers 403, 404 or a page without post's data;
    // no write succeeds; without a key, every protected operation is 401.
    let doc: Value = client
        .get(format!("{}/v1/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let requests = isolation_requests(&doc);
    assert!(requests.len() >= 47, "{} operations", requests.len());
    let secrets = ["p-post", "vm-b", "Post GmbH", "post-2026-10", "81.84"];
    for key in [Some(&dom_reader), Some(&pre_reader), None] {
        for r in &requests {
            let mut request = client.request(
                r.method.parse().unwrap(),
                format!("{}{}", server.url, r.url),
            );
            if let Some(body) = &r.body {
                request = request
                    .header("content-type", r.content_type)
                    .body(body.clone());
            }
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = String::from_utf8_lossy(&resp.bytes().await.unwrap()).to_string();
            let what = format!("{} {}", r.method, r.url);
            if key.is_none() {
                // Public operations need no key (metrics may be off: 404).
                if r.public {
                    assert_ne!(status, 401, "{what} without a key: {body}");
                } else {
                    assert_eq!(status, 401, "{what} without a key: {body}");
                }
                continue;
            }
            if r.method != "GET" {
                assert!(
                    [403, 404].contains(&status),
                    "{what} by a reader: {status} {body}"
                );
            } else {
                assert!([200, 403, 404].contains(&status), "{what}: {status} {body}");
            }
            if status != 200 {
                // A refusal may repeat the id the caller sent, nothing more.
                assert!(body.contains("\"code\""), "{what}: {body}");
                continue;
            }
            for s in secrets {
                assert!(
                    !body.contains(s),
                    "{what} answered a reader {status} with another tenant's '{s}': {body}"
                );
            }
        }
    }

    // The CLI against the server, with the key it is given.
    let remote = [
        "--server",
        server.url.as_str(),
        "--api-key",
        dom_reader.as_str(),
    ];
    let listed = env.json(&[&["invoice", "list"][..], &remote[..]].concat());
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["invoice_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dom-2026-10"]);
    // The same, with the server and key from the configuration file.
    let client_cfg = env.path().join("client.toml");
    std::fs::write(
        &client_cfg,
        format!(
            "[client]\nserver = \"{}\"\napi_key = \"{dom_reader}\"\n",
            server.url
        ),
    )
    .unwrap();
    let from_file = env.json(&["--config", client_cfg.to_str().unwrap(), "invoice", "list"]);
    assert_eq!(from_file, listed, "the configured server and key are used");
    let refused = env.fails(&[&["invoice", "show", "post-2026-10"][..], &remote[..]].concat());
    assert!(refused.contains("404"), "{refused}");
    let pdf_path = env.path().join("dom.pdf");
    env.ok(&[
        &[
            "invoice",
            "pdf",
            "dom-2026-10",
            "--out",
            pdf_path.to_str().unwrap(),
        ][..],
        &remote[..],
    ]
    .concat());
    assert!(std::fs::read(&pdf_path).unwrap().starts_with(b"%PDF-"));

    // The dashboard: sign-in with CSRF, a session cookie, the overview's
    // figures equal the API's, scoped to whoever signed in.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = |path: &str, session: Option<&str>| {
        let mut r = browser.get(format!("{}{path}", server.url));
        if let Some(s) = session {
            r = r.header("cookie", format!("tally_session={s}"));
        }
        async move { r.send().await.unwrap() }
    };
    // A page's HTML as a browser reads it: minijinja escapes '/' in
    // attributes as &#x2f;.
    let page_html = |path: &'static str, session: &str| {
        let resp = page(path, Some(session));
        async move { resp.await.text().await.unwrap().replace("&#x2f;", "/") }
    };
    let resp = page("/ui", None).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/ui/login");
    let cookie_value = |resp: &reqwest::Response, name: &str| -> Option<String> {
        resp.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(|v| {
                assert!(
                    v.contains("HttpOnly") && v.contains("SameSite=Strict"),
                    "{v}"
                );
                v[name.len() + 1..].split(';').next().unwrap().to_string()
            })
    };
    let sign_in = |key: String| {
        let browser = browser.clone();
        let url = server.url.clone();
        async move {
            let form = browser.get(format!("{url}/ui/login")).send().await.unwrap();
            let csrf_cookie = cookie_value(&form, "tally_csrf").expect("a CSRF cookie");
            let html = form.text().await.unwrap();
            assert!(
                html.contains(&format!("name=\"csrf\" value=\"{csrf_cookie}\"")),
                "{html}"
            );
            let post = |csrf: &str| {
                browser
                    .post(format!("{url}/ui/login"))
                    .header("cookie", format!("tally_csrf={csrf_cookie}"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("key={key}&csrf={csrf}"))
                    .send()
            };
            // A form posted from elsewhere (no matching token) is refused.
            assert_eq!(post("forged").await.unwrap().status(), 403);
            let ok = post(&csrf_cookie).await.unwrap();
            assert_eq!(ok.status(), 303);
            cookie_value(&ok, "tally_session").expect("a session cookie")
        }
    };
    let admin_session = sign_in(server.key.clone()).await;
    let resp = page("/ui?period=2026-10", Some(&admin_session)).await;
    assert_eq!(resp.status(), 200);
    // minijinja escapes '/' in attributes as &#x2f;, which browsers read back.
    let html = resp.text().await.unwrap().replace("&#x2f;", "/");
    // by_account (the API's answer above) totals 81.84 for the month.
    let api_total = d(&by_account["totals"][0]["amount"]);
    assert!(
        html.contains(&format!("id=\"revenue\">{api_total} EUR<")),
        "{html}"
    );
    assert!(
        html.contains("<svg") && html.contains("Cost per day, 2026-10"),
        "{html}"
    );
    assert!(html.contains("Top accounts"), "{html}");
    assert!(
        html.contains("<a href=\"/ui/accounts/post\">post</a>"),
        "{html}"
    );
    for external in ["<script", "<link", "src=", "https://"] {
        assert!(!html.contains(external), "the page requests {external}");
    }
    // The accounts page counts what each account owns (dom: its domain).
    let html = page_html("/ui/accounts?period=2026-10", &admin_session).await;
    assert!(
        html.contains("<td>Domain Corp</td><td>EUR</td><td class=\"num\">1</td>"),
        "{html}"
    );
    let dom_session = sign_in(dom_reader.clone()).await;
    let html = page_html("/ui?period=2026-10", &dom_session).await;
    assert!(html.contains("id=\"revenue\">29.76 EUR<"), "{html}");
    assert!(
        html.contains("<a href=\"/ui/projects/d-3\">d-3</a>") && !html.contains("p-post"),
        "{html}"
    );
    assert!(!html.contains("Top accounts"), "{html}");
    // The invoices page lists the reader's own invoice with its PDF link;
    // another account's PDF is a 404 there too.
    let html = page_html("/ui/invoices", &dom_session).await;
    assert!(
        html.contains("<a href=\"/ui/invoices/dom-2026-10\">dom-2026-10</a>"),
        "{html}"
    );
    assert!(
        html.contains("href=\"/ui/invoices/dom-2026-10/pdf\"") && !html.contains("post-2026-10"),
        "{html}"
    );
    let pdf = page("/ui/invoices/dom-2026-10/pdf", Some(&dom_session)).await;
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    assert_eq!(
        page("/ui/invoices/post-2026-10/pdf", Some(&dom_session))
            .await
            .status(),
        404
    );
    // The invoice view and its lines' explanations, for the reader's own
    // invoice; everything of the other account is a 404 page.
    let html = page_html("/ui/invoices/dom-2026-10", &dom_session).await;
    let own = env.json(&["invoice", "show", "dom-2026-10"]);
    assert!(
        html.contains(&format!(
            "id=\"total\">{} EUR<",
            own["total"].as_str().unwrap()
        )),
        "{html}"
    );
    assert!(
        html.contains("href=\"/ui/invoices/dom-2026-10/lines/1\""),
        "{html}"
    );
    let line = client
        .get(format!(
            "{}/v1/invoices/dom-2026-10/lines/1/explain",
            server.url
        ))
        .bearer_auth(&dom_reader)
        .send()
        .await
        .unwrap();
    assert_eq!(line.status(), 200);
    let line: serde_json::Value = line.json().await.unwrap();
    let shares: rust_decimal::Decimal = line["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| d(&r["amount"]))
        .sum();
    assert_eq!(shares, d(&line["current_amount"]), "{line}");
    assert_eq!(
        d(&line["current_amount"]),
        d(&line["line"]["exact_amount"]),
        "{line}"
    );
    assert_eq!(line["changed_since_invoiced"], false, "{line}");
    let html = page_html("/ui/invoices/dom-2026-10/lines/1", &dom_session).await;
    assert!(html.contains("href=\"/ui/explain?project_id="), "{html}");
    for (path, status) in [
        ("/ui/accounts", 303),
        ("/ui/accounts/dom", 200),
        ("/ui/projects/d-3?period=2026-10", 200),
        ("/ui/plans", 200),
        ("/ui/accounts/post", 404),
        ("/ui/projects/p-post", 404),
        ("/ui/invoices/post-2026-10", 404),
        ("/ui/invoices/post-2026-10/lines/1", 404),
        (
            "/ui/explain?project_id=p-post&resource_id=vm-b&meter=vcpu.hours&at=2026-10-05T10:30:00Z",
            404,
        ),
    ] {
        let resp = page(path, Some(&dom_session)).await;
        assert_eq!(resp.status(), status, "{path}");
        let body = resp.text().await.unwrap();
        for secret in ["p-post", "vm-b", "Post GmbH", "81.84"] {
            if status == 200 {
                assert!(!body.contains(secret), "{path} shows '{secret}'");
            }
        }
    }
    // Signing out needs the session's token, then the session is gone.
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let logout = |csrf: String| {
        browser
            .post(format!("{}/ui/logout", server.url))
            .header("cookie", format!("tally_session={dom_session}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
            .send()
    };
    assert_eq!(logout("forged".into()).await.unwrap().status(), 403);
    assert_eq!(logout(token).await.unwrap().status(), 303);
    assert_eq!(page("/ui", Some(&dom_session)).await.status(), 303);

    // An operator's write is in the audit log with the invoice before and
    // after; a reader's refused write and reads are not; readers cannot
    // read the log.
    let pay = |key: String| {
        let request = client
            .post(format!("{}/v1/invoices/post-2026-10/pay", server.url))
            .json(&serde_json::json!({ "reference": "wire-77" }))
            .bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(pay(dom_reader.clone()).await, 403);
    assert_eq!(pay(server.key.clone()).await, 200);
    let audit = |key: String| {
        let request = client
            .get(format!("{}/v1/audit?limit=1000", server.url))
            .bearer_auth(key);
        async move { request.send().await.unwrap() }
    };
    assert_eq!(audit(dom_reader.clone()).await.status(), 403);
    let log: Value = audit(server.key.clone()).await.json().await.unwrap();
    let entries = log["entries"].as_array().unwrap();
    let (api, local): (Vec<&Value>, Vec<&Value>) = entries
        .iter()
        .partition(|e| e["principal"].as_str().unwrap().starts_with("key:"));
    assert_eq!(api.len(), 1, "{log}");
    // Writes made with the CLI on the data directory are there too, with
    // the system user and the command line; reads are not.
    let actions: Vec<&str> = local
        .iter()
        .map(|e| {
            assert!(
                e["principal"].as_str().unwrap().starts_with("local:"),
                "{e}"
            );
            e["action"].as_str().unwrap()
        })
        .collect();
    for write in [
        "account create",
        "invoice finalize --period 2026-10",
        "invoice credit post-2026-10",
    ] {
        assert!(
            actions
                .iter()
                .any(|a| a.starts_with("cli: ") && a.contains(write)),
            "no '{write}' in {actions:?}"
        );
    }
    for read in ["invoice list", "invoice show", "export focus", "costs"] {
        assert!(
            !actions.iter().any(|a| a.contains(read)),
            "the read '{read}' was audited: {actions:?}"
        );
    }
    let credit = local
        .iter()
        .find(|e| e["action"].as_str().unwrap().contains("invoice credit"))
        .unwrap();
    assert_eq!(credit["subject"], "post-2026-10", "{credit}");
    let e = api[0];
    assert_eq!(e["action"], "POST /v1/invoices/post-2026-10/pay -> 200");
    assert_eq!(e["subject"], "invoice:post-2026-10");
    assert_eq!(e["before"]["status"], "finalized");
    assert_eq!(e["after"]["status"], "paid");
    let admin_key_id = server.key.split('_').nth(1).unwrap();
    assert_eq!(e["principal"], format!("key:{admin_key_id}"));
    // The database keeps it as written.
    let db = env.connect().await;
    assert!(
        sqlx::query("DELETE FROM audit_log")
            .execute(&db.pool)
            .await
            .is_err()
    );
    server.stop();
}
on_both_backends!(summaries_exports_explanations_and_audit);

/// The summary levels follow a re-rating that changes money: a late resize
/// of vm-a (2 → 8 vCPUs at noon on 10 October) re-rated from 06:00 to 18:00
/// adds 6 h × 6 vCPUs × 0.01 = 0.36 to every level at once (the cloud's
/// day, the project's month, the account's month), and each level still
/// agrees with the resource cells.
async fn summary_levels_follow_a_re_rating(env: Env) {
    three_accounts(&env);
    assert_levels_agree(&env, "2026-10");
    env.ingest(&[vcpus_at(
        "late-1",
        "vm-a",
        "p-pre",
        8,
        "2026-10-10T12:00:00Z",
    )]);
    env.ok(&[
        "rate",
        "--from",
        "2026-10-10T06:00:00Z",
        "--to",
        "2026-10-10T18:00:00Z",
    ]);
    let total = |args: &[&str]| {
        let s = env.json(&[&["costs"], args].concat());
        d(&s["totals"][0]["amount"])
    };
    // The cloud level (an operator's day and month).
    assert_eq!(total(&["--period", "2026-10"]), dec("82.20"));
    assert_eq!(
        total(&[
            "--from",
            "2026-10-10T00:00:00Z",
            "--to",
            "2026-10-11T00:00:00Z"
        ]),
        dec("3.00")
    );
    // The project month and the account month.
    assert_eq!(
        total(&["--period", "2026-10", "--project", "p-pre"]),
        dec("15.24")
    );
    let by_account = env.json(&["costs", "--period", "2026-10", "--group-by", "account"]);
    assert_eq!(
        amounts_by(&by_account, "account_id")[2],
        ("pre".into(), dec("15.24"))
    );
    assert_levels_agree(&env, "2026-10");
}
on_both_backends!(summary_levels_follow_a_re_rating);

/// A page about one project asks the database for its owner alone; the
/// answer must be the one every owner loaded at once gives: direct
/// ownership first, then the project's domain (recorded or mapped).
async fn one_projects_owner_is_resolved_as_all_owners_are(env: Env) {
    three_accounts(&env);
    // A project owned directly although its domain is owned too.
    env.ok(&["account", "map-project", "p-post", "--domain", "dom"]);
    let db = env.connect().await;
    let all = tally_rate::plans::Owners::load(&db).await.unwrap();
    for project in ["p-pre", "p-post", "d-1", "d-2", "d-3", "p-orphan", "nobody"] {
        let one = tally_rate::plans::Owners::owner_of_one(&db, project)
            .await
            .unwrap();
        assert_eq!(one.as_deref(), all.owner_of(project), "{project}");
    }
    assert_eq!(all.owner_of("p-post"), Some("post"));
    assert_eq!(all.owner_of("d-3"), Some("dom"));
}
on_both_backends!(one_projects_owner_is_resolved_as_all_owners_are);

/// A server remembers summary answers; a rating commit or a change of
/// ownership (through any process) must make it answer afresh, for the
/// operator and for a tenant alike.
async fn remembered_summaries_follow_rating_and_ownership(env: Env) {
    three_accounts(&env);
    let server = common::Server::start_with(env.path(), &[("TALLY_DATABASE_URL", &env.database)]);
    let pre_reader = env.reader_key("account-reader", "pre");
    let client = common::client();
    let url = |p: &str| format!("{}{p}", server.url);
    let costs = |key: String, query: &'static str| {
        let client = client.clone();
        let url = url(&format!("/v1/costs?{query}"));
        async move {
            let resp = client.get(url).bearer_auth(key).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let from_memory = || {
        let client = client.clone();
        let url = url("/metrics");
        async move {
            let text = client.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .find(|l| l.starts_with("tally_summary_answers_total{from=\"memory\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .map_or(0, |n| n.parse::<u64>().unwrap())
        }
    };
    let admin = server.key.clone();
    let by_account = "period=2026-10&group_by=account";
    let before = costs(admin.clone(), by_account).await;
    assert_eq!(
        amounts_by(&before, "account_id")[2],
        ("pre".into(), dec("14.88"))
    );
    let remembered = from_memory().await;
    assert_eq!(costs(admin.clone(), by_account).await, before);
    assert_eq!(
        from_memory().await,
        remembered + 1,
        "the second ask is remembered"
    );
    let pre_before = costs(pre_reader.clone(), "period=2026-10").await;
    assert_eq!(d(&pre_before["totals"][0]["amount"]), dec("14.88"));
    // Another scope's question is not the operator's answer.
    assert_eq!(from_memory().await, remembered + 1);

    // Late usage, rated through the API: the same questions now cost more.
    let late = client
        .post(url("/v1/events"))
        .bearer_auth(&admin)
        .header("content-type", "application/cloudevents+json")
        .body(vcpus_at(
            "late-1",
            "vm-a",
            "p-pre",
            8,
            "2026-10-10T12:00:00Z",
        ))
        .send()
        .await
        .unwrap();
    assert!(late.status().is_success(), "{}", late.text().await.unwrap());
    let run = client
        .post(url("/v1/rating/runs"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"from": "2026-10-10T06:00:00Z", "to": "2026-10-10T18:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert!(run.status().is_success(), "{}", run.text().await.unwrap());
    let after = costs(admin.clone(), by_account).await;
    assert_eq!(
        amounts_by(&after, "account_id")[2],
        ("pre".into(), dec("15.24"))
    );
    let pre_after = costs(pre_reader.clone(), "period=2026-10").await;
    assert_eq!(d(&pre_after["totals"][0]["amount"]), dec("15.24"));

    // An account taking over a project: its reader sees the project's cost
    // at once.
    let owned = client
        .post(url("/v1/accounts/pre/projects"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"id": "p-orphan"}))
        .send()
        .await
        .unwrap();
    assert!(
        owned.status().is_success(),
        "{}",
        owned.text().await.unwrap()
    );
    let pre_owning = costs(pre_reader.clone(), "period=2026-10").await;
    // p-orphan: 1 vCPU × 744 h × 0.01 = 7.44.
    assert_eq!(d(&pre_owning["totals"][0]["amount"]), dec("22.68"));
    let owning = costs(admin.clone(), by_account).await;
    assert_eq!(
        amounts_by(&owning, "account_id")
            .into_iter()
            .find(|(a, _)| a == "pre"),
        Some(("pre".into(), dec("22.68")))
    );
    server.stop();
}
on_both_backends!(remembered_summaries_follow_rating_and_ownership);

fn amounts_by_bucket(summary: &Value) -> Vec<Decimal> {
    summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| d(&r["amount"]))
        .collect()
}

/// One request of the isolation matrix.
struct IsolationRequest {
    method: String,
    url: String,
    body: Option<String>,
    content_type: &'static str,
    /// Needs no key (health, metrics, the document itself).
    public: bool,
}

/// Every operation of the OpenAPI document as a request aimed at the
/// `post` account's data: path and query parameters take post's ids (each
/// GET with a `format` parameter is asked in every format it names), and
/// request bodies are the smallest the schema accepts, so that a refusal
/// comes from the caller's scope, not from a malformed body. A parameter
/// this table does not know fails the test: give it a value aimed at post.
fn isolation_requests(doc: &Value) -> Vec<IsolationRequest> {
    let query_value = |name: &str| -> Option<&'static str> {
        Some(match name {
            "project_id" => "p-post",
            "account_id" => "post",
            "resource_id" => "vm-b",
            "meter" => "vcpu.hours",
            "at" => "2026-10-05T10:30:00Z",
            "line_id" => "p-post~vm-b~vcpu.hours~20261005T100000Z",
            "period" => "2026-10",
            "from" => "2026-10-01T00:00:00Z",
            "to" => "2026-11-01T00:00:00Z",
            "group_by" => "account,project,resource",
            "bucket" => "day",
            // Pagination, formats and switches aim at no one's data.
            "offset" | "limit" | "cursor" | "before" | "status" | "service" | "group"
            | "include_drafts" | "default" | "id" | "currency" | "format" => return None,
            other => panic!("the isolation matrix has no value for query parameter '{other}'"),
        })
    };
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut url = path.clone();
            let mut query = Vec::new();
            let mut formats = vec![None];
            for p in &params {
                let name = p["name"].as_str().unwrap();
                match p["in"].as_str().unwrap() {
                    "path" => {
                        let value = match (name, path.as_str()) {
                            ("id", p) if p.starts_with("/v1/accounts/") => "post",
                            ("id", p) if p.starts_with("/v1/invoices/") => "post-2026-10",
                            ("id", p) if p.starts_with("/v1/plans/") => "standard",
                            ("line_no", _) => "1",
                            (other, p) => panic!(
                                "the isolation matrix has no value for path parameter '{other}' of {p}"
                            ),
                        };
                        url = url.replace(&format!("{{{name}}}"), value);
                    }
                    "query" => {
                        if name == "format" && method == "get" {
                            let described = p["description"].as_str().unwrap_or("");
                            for f in ["csv", "parquet"] {
                                if described.contains(f) {
                                    formats.push(Some(f));
                                }
                            }
                        }
                        if let Some(v) = query_value(name) {
                            query.push(format!("{name}={v}"));
                        }
                    }
                    other => panic!("parameter in {other}"),
                }
            }
            let (body, content_type) = match op.pointer("/requestBody/content") {
                Some(content) => {
                    let (media, spec) = content.as_object().unwrap().iter().next().unwrap();
                    let body = if media.contains("json") {
                        minimal_body(doc, &spec["schema"]).to_string()
                    } else {
                        "x".to_string()
                    };
                    let media: &'static str = if media.contains("json") {
                        "application/json"
                    } else {
                        "text/plain"
                    };
                    (Some(body), media)
                }
                None => (None, "application/json"),
            };
            let public = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            for format in formats {
                let mut q = query.clone();
                if let Some(f) = format {
                    q.push(format!("format={f}"));
                }
                out.push(IsolationRequest {
                    method: method.to_uppercase(),
                    url: if q.is_empty() {
                        url.clone()
                    } else {
                        format!("{url}?{}", q.join("&"))
                    },
                    body: body.clone(),
                    content_type,
                    public,
                });
            }
        }
    }
    out
}

/// The smallest JSON value `schema` accepts: required properties only,
/// each the simplest value of its type.
fn minimal_body(doc: &Value, schema: &Value) -> Value {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return minimal_body(doc, &doc["components"]["schemas"][name]);
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        if let Some(first) = schema[key].as_array().and_then(|a| a.first()) {
            return minimal_body(doc, first);
        }
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds
            .iter()
            .find(|k| *k != "null")
            .and_then(Value::as_str)
            .unwrap_or("null"),
        v => v.as_str().unwrap_or("object"),
    };
    match kind {
        "object" => {
            let mut o = serde_json::Map::new();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                o.insert(name.into(), minimal_body(doc, &schema["properties"][name]));
            }
            Value::Object(o)
        }
        "array" => Value::Array(Vec::new()),
        "integer" => 1.into(),
        "number" => 1.into(),
        "boolean" => false.into(),
        "string" => match schema["format"].as_str() {
            Some("date-time") => "2026-10-01T00:00:00Z".into(),
            _ => "1".into(),
        },
        _ => Value::Null,
    }
}
