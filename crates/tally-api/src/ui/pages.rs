//! The dashboard's pages beyond the overview: accounts, projects, an
//! invoice and its lines, explanations and price plans.
//!
//! Each page reads through the same scoped data-layer calls as the API,
//! with the signed-in identity; what the identity may not see is a 404
//! page, whether it exists or not.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Redirect, Response};
use chrono::{DateTime, Datelike, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_bill::AccountScope;
use tally_bill::invoices::StoredInvoice;
use tally_core::{Identity, Role};
use tally_show::charts::{Bar, bar_chart};
use tally_show::summary::{self, Bucket, Dimension, Summary, SummaryQuery};

use super::{PeriodParam, render, require_session, shown, to_login};
use crate::billing::{billing_error, billing_service};
use crate::show::show_error;
use crate::{ApiError, AppState};

macro_rules! signed_in_or_login {
    ($state:expr, $headers:expr) => {
        match require_session(&$state, &$headers) {
            Some(p) => p,
            None => return Ok(to_login()),
        }
    };
}

/// The invoice `id` if `identity` may see it.
pub(crate) async fn scoped_invoice(
    state: &AppState,
    identity: &Identity,
    id: &str,
) -> Result<Option<StoredInvoice>, ApiError> {
    let svc = billing_service(state)?;
    match tally_bill::invoices::get_invoice(&svc.db, &AccountScope::of(identity), id).await {
        Ok(i) => Ok(Some(i)),
        Err(tally_bill::BillingError::UnknownInvoice(_)) => Ok(None),
        Err(e) => Err(billing_error(e)),
    }
}

async fn summarize(
    state: &AppState,
    identity: &Identity,
    query: SummaryQuery,
) -> Result<Arc<Summary>, ApiError> {
    let svc = billing_service(state)?;
    state
        .summaries
        .summarize(&svc.db, &svc.rated, identity, &query, Utc::now())
        .await
        .map_err(show_error)
}

/// The currency most of a summary's money is in, and its total.
fn main_total(s: &Summary) -> (String, Decimal) {
    s.totals
        .iter()
        .filter(|t| !t.currency.is_empty())
        .max_by_key(|t| t.amount)
        .map(|t| (t.currency.clone(), t.amount))
        .unwrap_or_default()
}

/// A month's cost for the projects `filter` selects: the currency most of
/// it is in, its total, and its cost per day as an SVG chart. The daily
/// summary's totals are the month's, so one query gives both.
pub(crate) async fn daily_cost(
    state: &AppState,
    identity: &Identity,
    month: &tally_core::billing::BillingPeriod,
    label: &str,
    filter: &SummaryQuery,
) -> Result<(String, Decimal, String), ApiError> {
    let daily = summarize(
        state,
        identity,
        SummaryQuery {
            from: Some(month.start),
            to: Some(month.end),
            group_by: vec![],
            bucket: Bucket::Day,
            limit: Some(summary::MAX_LIMIT),
            ..filter.clone()
        },
    )
    .await?;
    let (currency, total) = main_total(&daily);
    let bars: Vec<Bar> = daily
        .rows
        .iter()
        .filter(|r| r.currency == currency)
        .map(|r| Bar {
            label: r
                .bucket_start
                .map(|t| format!("{:02}-{:02}", t.month(), t.day()))
                .unwrap_or_default(),
            value: r.amount,
        })
        .collect();
    let chart = bar_chart(&format!("Cost per day, {label}"), &currency, &bars);
    Ok((currency, total, chart))
}

/// What the account and project pages share: the month asked for, its
/// cost, daily chart and cost per service, for the projects `filter`
/// selects.
struct Spend {
    label: String,
    month: tally_core::billing::BillingPeriod,
    currency: String,
    total: Decimal,
    chart: String,
    services: Vec<minijinja::Value>,
}

async fn spend(
    state: &AppState,
    identity: &Identity,
    period: &PeriodParam,
    filter: &SummaryQuery,
) -> Result<Spend, ApiError> {
    let (label, month) = period.month(Utc::now())?;
    let label = label.to_string();
    let (currency, total, chart) = daily_cost(state, identity, &month, &label, filter).await?;
    let services = summarize(
        state,
        identity,
        SummaryQuery {
            from: Some(month.start),
            to: Some(month.end),
            group_by: vec![Dimension::Service],
            limit: Some(summary::MAX_LIMIT),
            ..filter.clone()
        },
    )
    .await?
    .rows
    .iter()
    .map(|r| {
        minijinja::context! {
            name => r.dimensions.get("service").cloned().unwrap_or_default(),
            amount => shown(r.amount, &r.currency),
        }
    })
    .collect();
    Ok(Spend {
        label,
        month,
        currency,
        total,
        chart,
        services,
    })
}

/// Budgets of `account_id` (and of `project_id` alone, when given) with
/// what was spent against each this month.
async fn budgets(
    state: &AppState,
    identity: &Identity,
    account_id: &str,
    project_id: Option<&str>,
    month: &tally_core::billing::BillingPeriod,
) -> Result<Vec<minijinja::Value>, ApiError> {
    let svc = billing_service(state)?;
    let all = tally_bill::alerts::list_budgets(&svc.db, &AccountScope::of(identity))
        .await
        .map_err(billing_error)?;
    let mut out = Vec::new();
    for b in all.into_iter().filter(|b| {
        b.account_id == account_id
            && (project_id.is_none() || b.project_id.as_deref() == project_id)
    }) {
        let spent = summarize(
            state,
            identity,
            SummaryQuery {
                from: Some(month.start),
                to: Some(month.end),
                account_id: Some(b.account_id.clone()),
                project_id: b.project_id.clone(),
                ..SummaryQuery::default()
            },
        )
        .await?;
        let (currency, amount) = main_total(&spent);
        let used = if b.amount.is_zero() {
            Decimal::ZERO
        } else {
            (amount * Decimal::from(100) / b.amount).round_dp(1)
        };
        out.push(minijinja::context! {
            scope => b.project_id.clone().map_or_else(|| "whole account".to_string(), |p| format!("project {p}")),
            amount => shown(b.amount, &currency),
            spent => shown(amount, &currency),
            used => format!("{used}%"),
            thresholds => b.thresholds.iter().map(|t| format!("{t}%")).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(out)
}

/// `GET /ui/accounts`: operators get every account with its month's cost;
/// an account reader is sent to its own account; a project reader sees
/// no accounts.
pub async fn accounts(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<PeriodParam>,
) -> Result<Response, ApiError> {
    let page = signed_in_or_login!(state, headers);
    match &page.identity.role {
        Role::Admin => {}
        Role::AccountReader { account_id } => {
            return Ok(axum::response::IntoResponse::into_response(Redirect::to(
                &format!("/ui/accounts/{account_id}"),
            )));
        }
        Role::ProjectReader { .. } => return page.not_found("The list of accounts"),
    }
    let (label, month) = q.month(Utc::now())?;
    let svc = billing_service(&state)?;
    let list = tally_bill::accounts::list_accounts_with_owned_count(
        &svc.db,
        &AccountScope::of(&page.identity),
    )
    .await
    .map_err(billing_error)?;
    let costs = summarize(
        &state,
        &page.identity,
        SummaryQuery {
            from: Some(month.start),
            to: Some(month.end),
            group_by: vec![Dimension::Account],
            limit: Some(summary::MAX_LIMIT),
            ..SummaryQuery::default()
        },
    )
    .await?;
    let cost_of: BTreeMap<&str, String> = costs
        .rows
        .iter()
        .filter_map(|r| {
            r.dimensions
                .get("account_id")
                .map(|a| (a.as_str(), shown(r.amount, &r.currency)))
        })
        .collect();
    let rows: Vec<minijinja::Value> = list
        .iter()
        .map(|(spec, owned)| {
            let id = spec.account_id.as_str();
            minijinja::context! {
                id => id,
                name => spec.name.clone(),
                currency => spec.currency.code(),
                projects => owned,
                cost => cost_of.get(id).cloned().unwrap_or_else(|| shown(Decimal::ZERO, spec.currency.code())),
            }
        })
        .collect();
    render(
        "accounts.html",
        minijinja::context! {
            period => label.to_string(),
            accounts => rows,
            ..page.frame("Accounts", "/ui/accounts")
        },
    )
}

/// `GET /ui/accounts/{id}`: an account's month: cost so far, cost per day
/// and per service, its projects and top resources with their cost,
/// balances and budgets.
pub async fn account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PeriodParam>,
) -> Result<Response, ApiError> {
    let page = signed_in_or_login!(state, headers);
    let svc = billing_service(&state)?;
    let scope = AccountScope::of(&page.identity);
    let account = match tally_bill::accounts::get_account(&svc.db, &scope, &id).await {
        Ok(a) => a,
        Err(tally_bill::BillingError::UnknownAccount(_)) => {
            return page.not_found(&format!("Account {id}"));
        }
        Err(e) => return Err(billing_error(e)),
    };
    let balances = tally_bill::ledger::balances_of(&svc.db, &account)
        .await
        .map_err(billing_error)?;
    let filter = SummaryQuery {
        account_id: Some(id.clone()),
        ..SummaryQuery::default()
    };
    let spent = spend(&state, &page.identity, &q, &filter).await?;
    let month = &spent.month;
    let top = |group_by: Vec<Dimension>, limit: usize| SummaryQuery {
        from: Some(month.start),
        to: Some(month.end),
        group_by,
        limit: Some(limit),
        ..filter.clone()
    };
    let projects: Vec<minijinja::Value> =
        summarize(&state, &page.identity, top(vec![Dimension::Project], 500))
            .await?
            .rows
            .iter()
            .map(|r| {
                minijinja::context! {
                    id => r.dimensions.get("project_id").cloned().unwrap_or_default(),
                    amount => shown(r.amount, &r.currency),
                }
            })
            .collect();
    let resources: Vec<minijinja::Value> = summarize(
        &state,
        &page.identity,
        top(
            vec![Dimension::Project, Dimension::Resource, Dimension::Service],
            20,
        ),
    )
    .await?
    .rows
    .iter()
    .map(|r| {
        minijinja::context! {
            project => r.dimensions.get("project_id").cloned().unwrap_or_default(),
            resource => r.dimensions.get("resource_id").cloned().unwrap_or_default(),
            service => r.dimensions.get("service").cloned().unwrap_or_default(),
            amount => shown(r.amount, &r.currency),
        }
    })
    .collect();
    let budgets = budgets(&state, &page.identity, &id, None, month).await?;
    let owned: Vec<String> = account
        .projects
        .iter()
        .cloned()
        .chain(account.domains.iter().map(|d| format!("domain {d}")))
        .collect();
    let money = |d: Decimal| shown(d, account.spec.currency.code());
    render(
        "spend.html",
        minijinja::context! {
            kind => "account",
            heading => format!("{} ({})", account.spec.name, account.spec.account_id),
            period => spent.label.clone(),
            facts => vec![
                ("Currency", account.spec.currency.code().to_string()),
                ("Payment", format!("{:?}", account.spec.payment_mode).to_lowercase()),
                ("Time zone", account.spec.timezone.clone()),
                ("Owns", if owned.is_empty() { "nothing yet".to_string() } else { owned.join(", ") }),
                ("Receivable", money(balances.receivable)),
                ("Prepaid balance", money(balances.prepaid)),
            ],
            total => shown(spent.total, &spent.currency),
            chart => spent.chart.clone(),
            services => spent.services.clone(),
            projects => projects,
            resources => resources,
            budgets => budgets,
            ..page.frame(&format!("Account {id}"), &format!("/ui/accounts/{id}"))
        },
    )
}

/// `GET /ui/projects/{id}`: a project's month: cost so far, cost per day
/// and per service, each resource's cost with a link to explain it, and
/// the project's budgets.
pub async fn project(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PeriodParam>,
) -> Result<Response, ApiError> {
    let page = signed_in_or_login!(state, headers);
    let svc = billing_service(&state)?;
    if !tally_show::explain::may_read_project(&svc.db, &page.identity, &id)
        .await
        .map_err(show_error)?
    {
        return page.not_found(&format!("Project {id}"));
    }
    let filter = SummaryQuery {
        project_id: Some(id.clone()),
        ..SummaryQuery::default()
    };
    let spent = spend(&state, &page.identity, &q, &filter).await?;
    let month = &spent.month;
    // Over the whole month: a row per resource and meter, each naming the
    // last day it was rated on, which its explain link points at. (A row
    // per day would hand the page about 30 times as many rows.)
    let resources = summarize(
        &state,
        &page.identity,
        SummaryQuery {
            from: Some(month.start),
            to: Some(month.end),
            group_by: vec![Dimension::Resource, Dimension::Meter, Dimension::Service],
            limit: Some(200),
            ..filter
        },
    )
    .await?;
    let resources: Vec<minijinja::Value> = resources
        .rows
        .iter()
        .map(|r| {
            let dim = |k: &str| r.dimensions.get(k).cloned().unwrap_or_default();
            let explain = r.last_start.map(|day| {
                explain_href(&id, &dim("resource_id"), &dim("meter"), &day.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            });
            minijinja::context! {
                resource => dim("resource_id"),
                meter => dim("meter"),
                service => dim("service"),
                quantity => r.quantity.zip(r.unit.clone()).map(|(q, u)| format!("{} {u}", brief(q))),
                amount => shown(r.amount, &r.currency),
                explain => explain,
            }
        })
        .collect();
    let owner = tally_rate::plans::Owners::owner_of_one(&svc.db, &id)
        .await
        .map_err(ApiError::internal)?;
    let budgets = match &owner {
        Some(a) => budgets(&state, &page.identity, a, Some(&id), month).await?,
        None => Vec::new(),
    };
    // Project readers are not shown the account (it is not theirs to see).
    let account_fact = match (&page.identity.role, &owner) {
        (Role::ProjectReader { .. }, _) | (_, None) => None,
        (_, Some(a)) => Some(a.clone()),
    };
    render(
        "spend.html",
        minijinja::context! {
            kind => "project",
            heading => format!("Project {id}"),
            period => spent.label.clone(),
            account => account_fact,
            facts => Vec::<(String, String)>::new(),
            total => shown(spent.total, &spent.currency),
            chart => spent.chart.clone(),
            services => spent.services.clone(),
            project_resources => resources,
            budgets => budgets,
            ..page.frame(&format!("Project {id}"), &format!("/ui/projects/{id}"))
        },
    )
}

/// `GET /ui/invoices/{id}`: the invoice as issued, each line linking to
/// its explanation.
pub async fn invoice(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let page = signed_in_or_login!(state, headers);
    let Some(invoice) = scoped_invoice(&state, &page.identity, &id).await? else {
        return page.not_found(&format!("Invoice {id}"));
    };
    let d = &invoice.document;
    let cur = d.currency.code();
    let money = |a: Decimal| format!("{a} {cur}");
    let lines: Vec<minijinja::Value> = d
        .lines
        .iter()
        .map(|l| {
            minijinja::context! {
                no => l.line_no,
                project => l.project_id.clone(),
                service => tally_core::service::service_of(&l.meter).name,
                meter => l.meter.clone(),
                period => format!("{} – {}", l.service_start.format("%Y-%m-%d %H:%M"), l.service_end.format("%Y-%m-%d %H:%M")),
                quantity => format!("{} {}", l.quantity.normalize(), l.unit),
                unit_price => l.unit_price.map(|p| p.normalize().to_string()),
                amount => money(l.amount),
                correction => l.correction,
            }
        })
        .collect();
    let date = |t: Option<DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%d").to_string());
    render(
        "invoice.html",
        minijinja::context! {
            id => d.invoice_id.clone(),
            number => d.number.clone(),
            status => d.status.clone(),
            seller => d.seller.name.clone(),
            buyer => d.buyer.name.clone(),
            account => d.account_id.clone(),
            period => d.period.clone(),
            issued => date(d.issued_at),
            due => date(d.due_at),
            lines => lines,
            subtotal => money(d.subtotal),
            discounts => d.discounts.iter().map(|x| minijinja::context! { code => x.code.clone(), amount => money(x.amount) }).collect::<Vec<_>>(),
            commitment_top_up => (!d.commitment_top_up.is_zero()).then(|| money(d.commitment_top_up)),
            taxes => d.taxes.iter().map(|t| minijinja::context! { name => t.name.clone(), rate => format!("{}%", (t.rate * Decimal::from(100)).normalize()), base => money(t.base), amount => money(t.amount) }).collect::<Vec<_>>(),
            total => money(d.total),
            credit_notes => invoice.credit_notes.iter().map(|c| minijinja::context! { number => c.number.clone(), amount => money(c.total), reason => c.reason.clone() }).collect::<Vec<_>>(),
            ..page.frame(&format!("Invoice {id}"), "/ui/invoices")
        },
    )
}

/// `GET /ui/invoices/{id}/lines/{line_no}`: the resources and rules behind
/// an invoice line, each resource linking to the explanation of its rated
/// lines.
pub async fn invoice_line(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, line_no)): Path<(String, u32)>,
) -> Result<Response, ApiError> {
    let page = signed_in_or_login!(state, headers);
    let svc = billing_service(&state)?;
    let Some(e) = tally_show::explain::explain_invoice_line(
        &svc.db,
        &svc.rated,
        &page.identity,
        &id,
        line_no,
    )
    .await
    .map_err(show_error)?
    else {
        return page.not_found(&format!("Line {line_no} of invoice {id}"));
    };
    let cur = e.currency.clone();
    let resources: Vec<minijinja::Value> = e
        .resources
        .iter()
        .map(|r| {
            minijinja::context! {
                resource => r.resource_id.clone(),
                quantity => format!("{} {}", brief(r.quantity), e.line.unit),
                amount => format!("{} {cur}", brief(r.amount)),
                lines => r.lines,
                explain => explain_href(&e.line.project_id, &r.resource_id, &e.line.meter, &r.first_period_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            }
        })
        .collect();
    render(
        "invoice_line.html",
        minijinja::context! {
            id => e.invoice_id.clone(),
            no => e.line.line_no,
            project => e.line.project_id.clone(),
            meter => e.line.meter.clone(),
            correction => e.line.correction,
            period => format!("{} – {}", e.line.service_start.format("%Y-%m-%d %H:%M"), e.line.service_end.format("%Y-%m-%d %H:%M")),
            amount => format!("{} {cur}", e.line.amount),
            exact => format!("{} {cur}", e.line.exact_amount.normalize()),
            current => format!("{} {cur}", e.current_amount),
            changed => e.changed_since_invoiced,
            priced_by => priced_rows(&e.priced_by, &cur, &e.line.unit),
            resources => resources,
            ..page.frame(&format!("Invoice {id}, line {line_no}"), "/ui/invoices")
        },
    )
}

/// A quantity or a resource's share for reading: six decimals at most
/// (the full value is in the API's answer; totals are never shown so).
fn brief(d: Decimal) -> String {
    d.round_dp(6).normalize().to_string()
}

/// The dashboard's explain link of a resource's rated line at `at`.
fn explain_href(project: &str, resource: &str, meter: &str, at: &str) -> String {
    let query = serde_urlencoded::to_string([
        ("project_id", project),
        ("resource_id", resource),
        ("meter", meter),
        ("at", at),
    ])
    .expect("text pairs encode");
    format!("/ui/explain?{query}")
}

fn priced_rows(
    priced: &[tally_show::explain::PricedBy],
    currency: &str,
    unit: &str,
) -> Vec<minijinja::Value> {
    priced
        .iter()
        .map(|p| {
            minijinja::context! {
                plan => p.plan_id.clone(),
                version => p.version,
                effective_from => p.effective_from.map(|t| t.to_rfc3339()),
                rule => p.rule.clone(),
                matches => p.matches.as_ref().map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")),
                price => p.price.as_ref().map(|r| tally_show::plans::describe(r, currency, unit)),
            }
        })
        .collect()
}

/// `?project_id&resource_id&meter&at` of the explain page.
#[derive(Debug, Deserialize)]
pub struct ExplainParams {
    project_id: String,
    resource_id: String,
    meter: String,
    at: String,
}

/// `GET /ui/explain`: the rated line(s) of a resource at an instant, the
/// run, meter definition and rule behind them, and the raw records with
/// their original payloads.
pub async fn explain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ExplainParams>,
) -> Result<Response, ApiError> {
    let page = signed_in_or_login!(state, headers);
    let svc = billing_service(&state)?;
    let at = DateTime::parse_from_rfc3339(&q.at)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("at: '{}' is not an RFC 3339 instant ({e})", q.at),
            )
        })?
        .to_utc();
    let line = tally_show::explain::LineRef {
        project_id: q.project_id.clone(),
        resource_id: q.resource_id.clone(),
        meter: q.meter.clone(),
        at,
    };
    let Some(e) = tally_show::explain::explain_line(
        &svc.db,
        &svc.rated,
        &state.store,
        &page.identity,
        &line,
        svc.config.carry_lookback,
    )
    .await
    .map_err(show_error)?
    else {
        return page.not_found(&format!(
            "A current rated line of {} ({}) at {}",
            q.resource_id, q.meter, q.at
        ));
    };
    let lines: Vec<minijinja::Value> = e
        .lines
        .iter()
        .map(|l| {
            minijinja::context! {
                period => format!("{} – {}", l.period_start.format("%Y-%m-%d %H:%M"), l.period_end.format("%Y-%m-%d %H:%M")),
                group => l.group.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
                quantity => format!("{} {}", brief(l.quantity), l.unit),
                unit_price => l.unit_price.map(|p| p.normalize().to_string()),
                amount => format!("{} {}", brief(l.amount), l.currency),
                rule => format!("{} v{} {}", l.plan_id, l.plan_version, l.rule),
                raw_count => l.raw_count,
                error => l.error.clone(),
            }
        })
        .collect();
    let records: Vec<minijinja::Value> = e
        .records
        .iter()
        .rev()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.payload);
            let payload = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| text.into_owned());
            minijinja::context! {
                id => r.id.clone(),
                time => r.time.to_rfc3339(),
                source => r.source.clone(),
                meter => r.meter.clone(),
                volume => format!("{} {}", r.volume.normalize(), r.unit.clone().unwrap_or_default()),
                payload => payload,
            }
        })
        .collect();
    render(
        "explain.html",
        minijinja::context! {
            project => q.project_id.clone(),
            resource => q.resource_id.clone(),
            meter_name => q.meter.clone(),
            lines => lines,
            run => e.run.as_ref().map(|r| minijinja::context! {
                id => r.run_id.clone(),
                range => format!("{} – {}", r.from.to_rfc3339(), r.to.to_rfc3339()),
                finished => r.finished_at.map(|t| t.to_rfc3339()),
            }),
            meter => e.meter.as_ref().map(|m| minijinja::context! {
                unit => m.unit.clone(),
                records => m.records.clone(),
                aggregation => m.aggregation,
                group_by => m.group_by.join(", "),
                description => m.description.clone(),
            }),
            priced_by => priced_rows(
                &e.priced_by,
                e.lines.first().map_or("", |l| l.currency.as_str()),
                e.lines.first().map_or("unit", |l| l.unit.as_str()),
            ),
            records => records,
            truncated => e.records_truncated,
            ..page.frame(&format!("Explain {} {}", q.resource_id, q.meter), "")
        },
    )
}

/// `GET /ui/plans`: every price plan with its versions and the rules the
/// signed-in identity may see, prices in words.
pub async fn plans(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let page = signed_in_or_login!(state, headers);
    let svc = billing_service(&state)?;
    let plans = tally_show::plans::plan_views(&svc.db, &page.identity, None)
        .await
        .map_err(show_error)?;
    render(
        "plans.html",
        minijinja::context! {
            plans => minijinja::Value::from(minijinja::value::Serde(&plans)),
            ..page.frame("Price plans", "/ui/plans")
        },
    )
}
