//! The web dashboard: server-rendered HTML (minijinja templates in
//! `templates/`), charts as SVG, no script and no request to anything but
//! this server.
//!
//! Sign-in takes an API key and keeps a server-side session whose id is in
//! an HttpOnly, SameSite=Strict cookie; the key itself never goes into a
//! cookie. Forms carry a CSRF token: the sign-in form a double-submit
//! token (cookie and field must match), forms of a signed-in page the
//! session's own token. Every figure comes from the same data-layer calls
//! the API makes with the signed-in identity, so a tenant's pages show its
//! data only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use rand::RngCore;
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_core::{Identity, Role};
use tally_show::summary::{Bucket, Dimension, SummaryQuery};

use crate::{ApiError, AppState};

pub mod pages;

/// How long a session lives without use.
const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
const SESSION_COOKIE: &str = "tally_session";
const CSRF_COOKIE: &str = "tally_csrf";

struct Session {
    identity: Identity,
    csrf: String,
    last_used: Instant,
}

/// Signed-in sessions of this process (a restart signs everyone out).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn open(&self, identity: Identity) -> (String, String) {
        let (id, csrf) = (token(), token());
        let mut map = self.map.lock().expect("sessions lock");
        map.retain(|_, s| s.last_used.elapsed() < SESSION_IDLE);
        map.insert(
            id.clone(),
            Session {
                identity,
                csrf: csrf.clone(),
                last_used: Instant::now(),
            },
        );
        (id, csrf)
    }

    fn get(&self, id: &str) -> Option<(Identity, String)> {
        let mut map = self.map.lock().expect("sessions lock");
        let s = map.get_mut(id)?;
        if s.last_used.elapsed() >= SESSION_IDLE {
            map.remove(id);
            return None;
        }
        s.last_used = Instant::now();
        Some((s.identity.clone(), s.csrf.clone()))
    }

    fn close(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }
}

fn token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .expect("cookie text is ASCII")
}

fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        for (name, text) in [
            ("base.html", include_str!("../../templates/base.html")),
            ("login.html", include_str!("../../templates/login.html")),
            (
                "overview.html",
                include_str!("../../templates/overview.html"),
            ),
            (
                "invoices.html",
                include_str!("../../templates/invoices.html"),
            ),
            ("invoice.html", include_str!("../../templates/invoice.html")),
            (
                "invoice_line.html",
                include_str!("../../templates/invoice_line.html"),
            ),
            ("explain.html", include_str!("../../templates/explain.html")),
            (
                "accounts.html",
                include_str!("../../templates/accounts.html"),
            ),
            ("spend.html", include_str!("../../templates/spend.html")),
            ("plans.html", include_str!("../../templates/plans.html")),
            ("error.html", include_str!("../../templates/error.html")),
        ] {
            env.add_template(name, text).expect("templates parse");
        }
        env
    })
}

fn render(name: &str, ctx: minijinja::Value) -> Result<Response, ApiError> {
    let html = templates()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(ApiError::internal)?;
    Ok(Html(html).into_response())
}

/// The signed-in identity and its CSRF token; `None` means: send the
/// browser to sign in.
fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<(Identity, String)> {
    cookie(headers, SESSION_COOKIE).and_then(|id| state.sessions.get(id))
}

/// A signed-in request: who, and the session's CSRF token for its forms.
pub(crate) struct SignedIn {
    pub(crate) identity: Identity,
    pub(crate) csrf: String,
}

impl SignedIn {
    /// What every signed-in page's frame needs: title, who is signed in,
    /// the sign-out form's token and the navigation (`here` marks the
    /// current entry).
    pub(crate) fn frame(&self, title: &str, here: &str) -> minijinja::Value {
        minijinja::context! {
            title => title,
            principal => self.identity.principal.clone(),
            role => role_text(&self.identity),
            csrf => self.csrf.clone(),
            nav => nav(&self.identity),
            here => here,
        }
    }

    /// An HTML page saying what was not found (404), in the frame. The
    /// same answer whether the thing exists outside the caller's scope or
    /// not at all.
    pub(crate) fn not_found(&self, what: &str) -> Result<Response, ApiError> {
        let mut resp = render(
            "error.html",
            minijinja::context! {
                message => format!("{what} does not exist or is not yours to see."),
                ..self.frame("Not found", "")
            },
        )?;
        *resp.status_mut() = StatusCode::NOT_FOUND;
        Ok(resp)
    }
}

/// The signed-in request; `None` means: send the browser to sign in
/// ([`to_login`]).
pub(crate) fn require_session(state: &AppState, headers: &HeaderMap) -> Option<SignedIn> {
    signed_in(state, headers).map(|(identity, csrf)| SignedIn { identity, csrf })
}

/// Where a request without a session goes.
pub(crate) fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

/// The pages a role can open, in navigation order.
fn nav(identity: &Identity) -> Vec<minijinja::Value> {
    let mut items = vec![("/ui".to_string(), "Overview".to_string())];
    match &identity.role {
        Role::Admin => {
            items.push(("/ui/accounts".into(), "Accounts".into()));
            items.push(("/ui/invoices".into(), "Invoices".into()));
        }
        Role::AccountReader { account_id } => {
            items.push((format!("/ui/accounts/{account_id}"), "Account".into()));
            items.push(("/ui/invoices".into(), "Invoices".into()));
        }
        Role::ProjectReader { project_id } => {
            items.push((format!("/ui/projects/{project_id}"), "Project".into()));
        }
    }
    items.push(("/ui/plans".into(), "Price plans".into()));
    items
        .into_iter()
        .map(|(href, label)| minijinja::context! { href => href, label => label })
        .collect()
}

fn role_text(identity: &Identity) -> String {
    match &identity.role {
        Role::Admin => "operator".into(),
        Role::AccountReader { account_id } => format!("account {account_id}"),
        Role::ProjectReader { project_id } => format!("project {project_id}"),
    }
}

/// `GET /`: the dashboard.
pub async fn root() -> Redirect {
    Redirect::to("/ui")
}

/// `GET /ui/login`: the sign-in form, with a fresh CSRF token.
pub async fn login_form() -> Result<Response, ApiError> {
    login_page(None, StatusCode::OK)
}

fn login_page(error: Option<&str>, status: StatusCode) -> Result<Response, ApiError> {
    let csrf = token();
    let mut resp = render(
        "login.html",
        minijinja::context! { title => "Sign in", csrf => csrf.clone(), error => error },
    )?;
    *resp.status_mut() = status;
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(CSRF_COOKIE, &csrf, 3600));
    Ok(resp)
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    key: String,
    csrf: String,
}

/// `POST /ui/login`.
pub async fn login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Result<Response, ApiError> {
    if cookie(&headers, CSRF_COOKIE) != Some(form.csrf.as_str()) || form.csrf.is_empty() {
        return login_page(
            Some("The form expired or did not come from this site: sign in again."),
            StatusCode::FORBIDDEN,
        );
    }
    let identity = match state.keys.authenticate(form.key.trim()).await {
        Ok(Some(i)) => i,
        Ok(None) => {
            return login_page(
                Some("That API key is unknown or revoked."),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    let (id, _) = state.sessions.open(identity);
    let mut resp = Redirect::to("/ui").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &id, SESSION_IDLE.as_secs()),
    );
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(CSRF_COOKIE, "", 0));
    Ok(resp)
}

/// The sign-out form's field.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /ui/logout`.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let Some(id) = cookie(&headers, SESSION_COOKIE) else {
        return Redirect::to("/ui/login").into_response();
    };
    match state.sessions.get(id) {
        Some((_, csrf)) if csrf == form.csrf => {
            state.sessions.close(id);
            let mut resp = Redirect::to("/ui/login").into_response();
            resp.headers_mut()
                .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
            resp
        }
        Some(_) => (
            StatusCode::FORBIDDEN,
            "the form's CSRF token does not match",
        )
            .into_response(),
        None => Redirect::to("/ui/login").into_response(),
    }
}

/// `?period=YYYY-MM` of pages.
#[derive(Debug, Deserialize)]
pub struct PeriodParam {
    period: Option<String>,
}

impl PeriodParam {
    /// The calendar month (UTC) asked for, default the one containing
    /// `now`.
    pub(crate) fn month(
        &self,
        now: chrono::DateTime<Utc>,
    ) -> Result<
        (
            tally_core::billing::PeriodLabel,
            tally_core::billing::BillingPeriod,
        ),
        ApiError,
    > {
        let label: tally_core::billing::PeriodLabel = match &self.period {
            Some(p) => p
                .parse()
                .map_err(|e| ApiError::bad_request("invalid_period", format!("{e}")))?,
            None => tally_core::billing::PeriodLabel::containing(now, 1, chrono_tz::Tz::UTC),
        };
        let month = tally_core::billing::BillingPeriod::new(label, 1, chrono_tz::Tz::UTC)
            .map_err(|e| ApiError::bad_request("invalid_period", e.to_string()))?;
        Ok((label, month))
    }
}

pub(crate) fn shown(amount: Decimal, currency: &str) -> String {
    format!(
        "{} {currency}",
        tally_core::rounded_amount(amount, currency)
    )
}

/// `GET /ui`: the overview of a month (default this one) for whoever is
/// signed in: its cost so far, a forecast to the month's end, cost per
/// day, the top accounts, projects and services, and ingest health for
/// operators.
pub async fn overview(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<PeriodParam>,
) -> Result<Response, ApiError> {
    let Some(page) = require_session(&state, &headers) else {
        return Ok(to_login());
    };
    let identity = page.identity.clone();
    let svc = crate::billing::billing_service(&state)?;
    let now = Utc::now();
    let (label, month) = q.month(now)?;
    let ask = |group_by: Vec<Dimension>, bucket: Bucket, limit: usize| SummaryQuery {
        from: Some(month.start),
        to: Some(month.end),
        group_by,
        bucket,
        limit: Some(limit),
        ..SummaryQuery::default()
    };
    let summaries = &state.summaries;
    let run = |query: SummaryQuery| {
        let identity = identity.clone();
        async move {
            summaries
                .summarize(&svc.db, &svc.rated, &identity, &query, now)
                .await
                .map_err(crate::show::show_error)
        }
    };
    let (currency, revenue, chart) = pages::daily_cost(
        &state,
        &identity,
        &month,
        &label.to_string(),
        &SummaryQuery::default(),
    )
    .await?;
    // The forecast extends the month so far at its average daily rate.
    let current = now >= month.start && now < month.end;
    let forecast = current.then(|| {
        let elapsed = Decimal::from((now - month.start).num_seconds().max(1));
        let whole = Decimal::from((month.end - month.start).num_seconds());
        shown(revenue * whole / elapsed, &currency)
    });
    let mut tables = Vec::new();
    let mut top = Vec::new();
    if identity.role == Role::Admin {
        top.push(("accounts", "Account", Dimension::Account));
    }
    top.push(("projects", "Project", Dimension::Project));
    top.push(("services", "Service", Dimension::Service));
    for (title, column, dim) in top {
        let key = dim.key();
        let s = run(ask(vec![dim.clone()], Bucket::Total, 5)).await?;
        let rows: Vec<minijinja::Value> = s
            .rows
            .iter()
            .map(|r| {
                let name = r.dimensions.get(&key).cloned().unwrap_or_default();
                let href = match (&dim, name.is_empty()) {
                    (_, true) | (Dimension::Service, _) => None,
                    (Dimension::Account, _) => Some(format!("/ui/accounts/{name}")),
                    _ => Some(format!("/ui/projects/{name}")),
                };
                minijinja::context! {
                    name => if name.is_empty() { "(no account)".to_string() } else { name },
                    href => href,
                    amount => shown(r.amount, &r.currency),
                }
            })
            .collect();
        tables.push(minijinja::context! { title => title, column => column, rows => rows });
    }
    let ingest = (identity.role == Role::Admin).then(|| state.store.counters().snapshot());
    render(
        "overview.html",
        minijinja::context! {
            period => label.to_string(),
            revenue_label => if current { "Cost so far this month" } else { "Cost of the month" },
            revenue => shown(revenue, &currency),
            forecast => forecast,
            chart => chart,
            tables => tables,
            ingest => ingest.map(|c| minijinja::context! {
                accepted => c.accepted, rejected => c.rejected, dead_lettered => c.dead_lettered,
            }),
            ..page.frame(&format!("Overview {label}"), "/ui")
        },
    )
}

/// `GET /ui/invoices`: the invoices the signed-in identity may see, newest
/// period first, each with a link to its PDF.
pub async fn invoices(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(page) = require_session(&state, &headers) else {
        return Ok(to_login());
    };
    let identity = &page.identity;
    let svc = crate::billing::billing_service(&state)?;
    let list = tally_bill::invoices::list_invoices(
        &svc.db,
        &tally_bill::AccountScope::of(identity),
        &tally_bill::invoices::InvoiceFilter::default(),
    )
    .await
    .map_err(crate::billing::billing_error)?;
    let rows: Vec<minijinja::Value> = list
        .iter()
        .map(|i| {
            let d = &i.document;
            minijinja::context! {
                id => d.invoice_id.clone(),
                number => d.number.clone().unwrap_or_else(|| "-".into()),
                account => d.account_id.clone(),
                period => d.period.clone(),
                status => d.status.clone(),
                total => format!("{} {}", d.total, d.currency.code()),
            }
        })
        .collect();
    render(
        "invoices.html",
        minijinja::context! {
            invoices => rows,
            ..page.frame("Invoices", "/ui/invoices")
        },
    )
}

/// `GET /ui/invoices/{id}/pdf`: an invoice's PDF for the signed-in
/// identity (404 outside its scope, as in the API).
pub async fn invoice_pdf(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let Some(page) = require_session(&state, &headers) else {
        return Ok(to_login());
    };
    let Some(invoice) = pages::scoped_invoice(&state, &page.identity, &id).await? else {
        return page.not_found(&format!("Invoice {id}"));
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/pdf")],
        tally_show::pdf::invoice_pdf(&invoice.document),
    )
        .into_response())
}
