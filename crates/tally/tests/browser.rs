//! The dashboard in a real headless Chromium, driven over WebDriver
//! (chromedriver): sign in, open every page, compare the figures on the
//! pages with the API's, check the SVG charts, a project reader's refusals
//! and the CSRF protection. Screenshots of every page are kept in
//! `$TALLY_ARTIFACTS/screenshots` (scripts/test puts them beside the build
//! cache and prints where).
//!
//! Chromium and chromedriver come from `TALLY_TEST_CHROMEDRIVER` and
//! `TALLY_TEST_CHROMIUM` or the PATH (scripts/test installs Debian's
//! packages when missing); the test fails when they are not there.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use rust_decimal::Decimal;
use serde_json::Value;

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(env: &str, names: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    for name in names {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found: install Debian's chromium and chromium-driver (scripts/test does) or set {env}",
        names.join(" or ")
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver() -> Driver {
    let program = find_program("TALLY_TEST_CHROMEDRIVER", &["chromedriver"]);
    let port = free_port();
    let child = Command::new(&program)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if let Ok(r) = common::client()
            .get(format!("{}/status", driver.url))
            .send()
            .await
            && r.status().is_success()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {} within 10 s", driver.url);
}

async fn browser(driver: &Driver) -> Client {
    let chromium = find_program("TALLY_TEST_CHROMIUM", &["chromium", "chromium-browser"]);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run", "--window-size=1280,1400",
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("TALLY_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tally-artifacts"))
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

/// The text of the first element `css` selects, waiting (up to 10 s) for
/// it to appear: the page may still be loading.
async fn text(c: &Client, css: &str) -> String {
    let found = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await;
    let url = c.current_url().await.unwrap();
    found
        .unwrap_or_else(|e| panic!("no '{css}' on {url}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits (up to 10 s) until the page's text contains `phrase`.
async fn shows(c: &Client, phrase: &str) {
    for _ in 0..100 {
        if c.source().await.unwrap_or_default().contains(phrase) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "'{phrase}' never appeared on {}",
        c.current_url().await.unwrap()
    );
}

/// Follows the link whose text is `link` and waits for `path`.
async fn follow(c: &Client, link: &str, path: &str) {
    c.find(Locator::LinkText(link))
        .await
        .unwrap_or_else(|e| panic!("no link '{link}': {e}"))
        .click()
        .await
        .unwrap();
    arrive(c, path).await;
}

/// Waits (up to 10 s) until the browser is at `path` and the page has
/// loaded: a click that submits a form returns before the next page is in.
async fn arrive(c: &Client, path: &str) {
    for _ in 0..100 {
        if c.current_url().await.unwrap().path() == path {
            let state = c
                .execute("return document.readyState", vec![])
                .await
                .unwrap_or_default();
            if state == "complete" {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    screenshot(c, "stuck").await;
    panic!(
        "the browser stayed at {} instead of reaching {path}: {}",
        c.current_url().await.unwrap(),
        c.source().await.unwrap_or_default()
    );
}

async fn sign_in(c: &Client, base: &str, key: &str) {
    c.goto(&format!("{base}/ui")).await.unwrap();
    assert!(
        c.current_url().await.unwrap().path().ends_with("/ui/login"),
        "an unsigned visitor is sent to sign in"
    );
    c.find(Locator::Css("#key"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/ui/login'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrive(c, "/ui").await;
}

async fn sign_out(c: &Client) {
    c.find(Locator::Css("form[action='/ui/logout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrive(c, "/ui/login").await;
}

async fn api(base: &str, key: &str, path: &str) -> Value {
    let resp = common::client()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

/// A summary's total as the dashboard prints it: rounded to the
/// currency's minor unit, with the code.
fn shown_total(summary: &Value) -> String {
    let total = &summary["totals"][0];
    let amount: Decimal = total["amount"].as_str().unwrap().parse().unwrap();
    let currency = total["currency"].as_str().unwrap();
    format!(
        "{} {currency}",
        tally_core::rounded_amount(amount, currency)
    )
}

/// The page is the dashboard's 404 page.
async fn refused(c: &Client, base: &str, path: &str) {
    c.goto(&format!("{base}{path}")).await.unwrap();
    let h1 = text(c, "h1").await;
    assert_eq!(h1, "Not found", "{path} must be refused to this reader");
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A few days of the demo cloud, rated, invoiced and finalized.
    let out = common::tally(&data)
        .args([
            "demo",
            "--no-serve",
            "--listen",
            "127.0.0.1:0",
            "--instances",
            "30",
            "--days",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = common::Server::start(&data);
    let base = server.url.clone();
    let admin = server.key.clone();
    let invoices = api(&base, &admin, "/v1/invoices").await;
    let period = invoices["invoices"][0]["period"]
        .as_str()
        .unwrap()
        .to_string();
    let accounts = api(&base, &admin, "/v1/accounts").await;
    let account_ids: Vec<String> = accounts["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(account_ids.len(), 3);
    // Projects by account, from the API (accounts may own whole domains).
    let by_project = api(
        &base,
        &admin,
        &format!("/v1/costs?period={period}&group_by=account,project"),
    )
    .await;
    let project_of = |account: &str| -> String {
        by_project["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["account_id"] == account)
            .unwrap_or_else(|| panic!("no usage of account {account}: {by_project}"))["project_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (own_account, other_account) = (&account_ids[0], &account_ids[1]);
    let own_project = project_of(own_account);
    let other_project = project_of(other_account);

    let driver = start_driver().await;
    let c = browser(&driver).await;

    // The operator: every page, figures equal to the API's.
    sign_in(&c, &base, &admin).await;
    c.goto(&format!("{base}/ui?period={period}")).await.unwrap();
    let costs = api(&base, &admin, &format!("/v1/costs?period={period}")).await;
    assert_eq!(text(&c, "#revenue").await, shown_total(&costs));
    let bars = c.find_all(Locator::Css("svg.chart rect")).await.unwrap();
    assert!(!bars.is_empty(), "the overview's chart has bars");
    screenshot(&c, "overview").await;

    c.goto(&format!("{base}/ui/accounts?period={period}"))
        .await
        .unwrap();
    let rows = c
        .find_all(Locator::Css("table[aria-label='accounts'] tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), account_ids.len());
    screenshot(&c, "accounts").await;

    follow(&c, own_account, &format!("/ui/accounts/{own_account}")).await;
    let account_costs = api(
        &base,
        &admin,
        &format!("/v1/costs?period={period}&account_id={own_account}"),
    )
    .await;
    assert_eq!(text(&c, "#total").await, shown_total(&account_costs));
    assert!(c.find(Locator::Css("svg.chart")).await.is_ok());
    screenshot(&c, "account").await;

    follow(&c, &own_project, &format!("/ui/projects/{own_project}")).await;
    let project_costs = api(
        &base,
        &admin,
        &format!("/v1/costs?period={period}&project_id={own_project}"),
    )
    .await;
    assert_eq!(text(&c, "#total").await, shown_total(&project_costs));
    // The costliest resource on the page is the API's, with its explain
    // link at the last day the resource was rated on.
    let by_resource = api(
        &base,
        &admin,
        &format!(
            "/v1/costs?period={period}&project_id={own_project}&group_by=resource,meter&limit=1"
        ),
    )
    .await;
    let top = &by_resource["rows"][0];
    let cells = c
        .find_all(Locator::Css(
            "table[aria-label='resources'] tbody tr:first-child td",
        ))
        .await
        .unwrap();
    let mut row = Vec::new();
    for cell in &cells {
        row.push(cell.text().await.unwrap());
    }
    assert_eq!(row[0], top["resource_id"].as_str().unwrap());
    assert_eq!(row[1], top["meter"].as_str().unwrap());
    let amount: Decimal = top["amount"].as_str().unwrap().parse().unwrap();
    let currency = top["currency"].as_str().unwrap();
    assert_eq!(
        row[4],
        format!(
            "{} {currency}",
            tally_core::rounded_amount(amount, currency)
        )
    );
    let last = top["last_start"]
        .as_str()
        .expect("a row over the month names its last day");
    let href = c
        .find(Locator::Css(
            "table[aria-label='resources'] tbody tr:first-child a",
        ))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let last = chrono::DateTime::parse_from_rfc3339(last).unwrap().to_utc();
    assert!(
        href.contains(&format!("at={}", last.format("%Y-%m-%dT%H%%3A%M%%3A%SZ"))),
        "{href} points at {last}"
    );
    screenshot(&c, "project").await;
    follow(&c, "explain", "/ui/explain").await;
    let lines = c
        .find_all(Locator::Css("table[aria-label='rated lines'] tbody tr"))
        .await
        .unwrap();
    assert!(!lines.is_empty(), "the explain page shows the rated line");
    assert!(
        !c.find_all(Locator::Css("details pre"))
            .await
            .unwrap()
            .is_empty(),
        "the explain page shows the raw records' payloads"
    );
    screenshot(&c, "explain").await;

    // Invoices: the list, an invoice, a line's explanation.
    let first = &invoices["invoices"][0];
    let invoice_id = first["invoice_id"].as_str().unwrap();
    c.goto(&format!("{base}/ui/invoices")).await.unwrap();
    screenshot(&c, "invoices").await;
    follow(&c, invoice_id, &format!("/ui/invoices/{invoice_id}")).await;
    let currency = first["currency"].as_str().unwrap();
    assert_eq!(
        text(&c, "#total").await,
        format!("{} {currency}", first["total"].as_str().unwrap())
    );
    screenshot(&c, "invoice").await;
    follow(&c, "explain", &format!("/ui/invoices/{invoice_id}/lines/1")).await;
    let line = api(
        &base,
        &admin,
        &format!("/v1/invoices/{invoice_id}/lines/1/explain"),
    )
    .await;
    assert_eq!(
        text(&c, "#current").await,
        format!("{} {currency}", line["current_amount"].as_str().unwrap())
    );
    screenshot(&c, "invoice-line").await;

    c.goto(&format!("{base}/ui/plans")).await.unwrap();
    let plans = api(&base, &admin, "/v1/plans").await;
    let plan_id = plans["plans"][0]["plan_id"].as_str().unwrap();
    assert!(text(&c, "main").await.contains(plan_id));
    screenshot(&c, "plans").await;

    // CSRF: a sign-out form without the session's token is refused and
    // the session survives.
    c.execute(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/ui/logout';\
         const i = document.createElement('input'); i.name = 'csrf'; i.value = 'forged';\
         f.appendChild(i); document.body.appendChild(f); f.submit();",
        vec![],
    )
    .await
    .unwrap();
    shows(&c, "CSRF token does not match").await;
    c.goto(&format!("{base}/ui")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/ui");
    sign_out(&c).await;

    // A sign-in form whose token was tampered with is refused.
    c.goto(&format!("{base}/ui/login")).await.unwrap();
    c.execute(
        "document.querySelector('input[name=csrf]').value = 'tampered';",
        vec![],
    )
    .await
    .unwrap();
    c.find(Locator::Css("#key"))
        .await
        .unwrap()
        .send_keys(&admin)
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/ui/login'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        text(&c, ".error")
            .await
            .contains("did not come from this site")
    );
    screenshot(&c, "csrf-refused").await;

    // A project reader: its project's page, and nothing else.
    let reader = common::project_reader_key(&data, &own_project);
    sign_in(&c, &base, &reader).await;
    c.goto(&format!("{base}/ui/projects/{own_project}?period={period}"))
        .await
        .unwrap();
    let reader_costs = api(
        &base,
        &reader,
        &format!("/v1/costs?period={period}&project_id={own_project}"),
    )
    .await;
    assert_eq!(text(&c, "#total").await, shown_total(&reader_costs));
    assert_eq!(shown_total(&reader_costs), shown_total(&project_costs));
    screenshot(&c, "project-reader").await;
    c.goto(&format!("{base}/ui?period={period}")).await.unwrap();
    assert_eq!(
        text(&c, "#revenue").await,
        shown_total(&reader_costs),
        "a project reader's overview counts its project only"
    );
    for path in [
        "/ui/accounts".to_string(),
        format!("/ui/accounts/{own_account}"),
        format!("/ui/accounts/{other_account}"),
        format!("/ui/projects/{other_project}"),
        format!("/ui/invoices/{invoice_id}"),
        format!("/ui/invoices/{invoice_id}/lines/1"),
    ] {
        refused(&c, &base, &path).await;
    }
    screenshot(&c, "project-reader-refused").await;
    sign_out(&c).await;
    c.close().await.unwrap();
    eprintln!("screenshots in {}", artifacts().display());
}
