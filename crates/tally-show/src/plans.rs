//! Price plans as a reader sees them: versions and rules with each price
//! described in words, for `GET /v1/plans/{id}` and the dashboard's plans
//! page.
//!
//! A rule limited to some projects names those projects: a tenant sees
//! such a rule only when it may read one of them, and only the ones it may
//! read are listed, so no other tenant's project id leaks through a plan.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::pricing::{Charge, PriceRule};
use tally_core::{Identity, Role};
use tally_db::Database;
use tally_rate::plans::Owners;

use crate::ShowError;

/// One rule as shown.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuleView {
    /// Position in its version (what rated lines name as `rules[N]`).
    pub index: usize,
    /// The meter it prices.
    pub meter: String,
    /// Attribute values it requires.
    pub matches: BTreeMap<String, String>,
    /// Projects it is limited to, among those the caller may read (empty:
    /// every project).
    pub projects: Vec<String>,
    /// The price, in words (`0.05 per hour`).
    pub description: String,
    /// The price as data.
    pub price: PriceRule,
}

/// One version as shown.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionView {
    /// Version number.
    pub number: u32,
    /// From when it prices periods.
    pub effective_from: DateTime<Utc>,
    /// Its rules the caller may see.
    pub rules: Vec<RuleView>,
}

/// A plan as shown.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanView {
    /// The plan id.
    pub plan_id: String,
    /// Its name.
    pub name: String,
    /// Its currency.
    pub currency: String,
    /// Whether it prices projects no account's plan covers.
    pub is_default: bool,
    /// Versions, oldest first.
    pub versions: Vec<VersionView>,
    /// Meters priced by imported CloudKitty hashmap rules.
    pub cloudkitty_meters: Vec<String>,
}

/// Describes a price in words, amounts at full precision; `unit` is the
/// meter's unit (`hour`, `GiB-hour`).
pub fn describe(rule: &PriceRule, currency: &str, unit: &str) -> String {
    let tiers = |tiers: &[tally_core::pricing::Tier]| {
        let mut from = Decimal::ZERO;
        let mut parts = Vec::new();
        for t in tiers {
            let range = match t.up_to {
                Some(up) => format!("{from}–{up}"),
                None => format!("{from}+"),
            };
            let mut part = format!("{range} at {} {currency} per {unit}", t.unit_price);
            if !t.flat_fee.is_zero() {
                part.push_str(&format!(" plus {} {currency} once", t.flat_fee));
            }
            parts.push(part);
            from = t.up_to.unwrap_or(from);
        }
        parts.join("; ")
    };
    let mut text = match &rule.charge {
        Charge::PerUnit { unit_price } => format!("{unit_price} {currency} per {unit}"),
        Charge::Flat { amount } => format!("{amount} {currency} per period"),
        Charge::Graduated { tiers: t } => format!("graduated: {}", tiers(t)),
        Charge::Volume { tiers: t } => {
            format!("volume (the tier reached prices every unit): {}", tiers(t))
        }
        Charge::Package { size, price } => {
            format!("{price} {currency} per block of {size} {unit} (a started block counts whole)")
        }
    };
    if !rule.free_allowance.is_zero() {
        text.push_str(&format!(
            "; the first {} {unit} of each period free",
            rule.free_allowance
        ));
    }
    if let Some(min) = rule.minimum {
        text.push_str(&format!("; at least {min} {currency} per period"));
    }
    text
}

/// The plan `plan_id` as `identity` may see it; `Ok(None)` when there is
/// no such plan.
pub async fn plan_view(
    db: &Database,
    identity: &Identity,
    plan_id: &str,
) -> Result<Option<PlanView>, ShowError> {
    Ok(plan_views(db, identity, Some(plan_id)).await?.pop())
}

/// Every stored plan (or only `only`) as `identity` may see it. The
/// owners and the meters' units are read once for all of them.
pub async fn plan_views(
    db: &Database,
    identity: &Identity,
    only: Option<&str>,
) -> Result<Vec<PlanView>, ShowError> {
    let stored = tally_rate::plans::list_plans(db).await?;
    let stored: Vec<_> = stored
        .iter()
        .filter(|p| only.is_none_or(|id| p.plan_id == id))
        .collect();
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    let owners = match identity.role {
        Role::AccountReader { .. } => Some(Owners::load(db).await?),
        _ => None,
    };
    let readable = |project: &str| match &identity.role {
        Role::Admin => true,
        Role::ProjectReader { project_id } => project_id == project,
        Role::AccountReader { account_id } => owners
            .as_ref()
            .and_then(|o| o.owner_of(project))
            .is_some_and(|a| a == account_id),
    };
    let units: BTreeMap<String, String> = tally_rate::plans::current_meters(db)
        .await?
        .summaries()
        .into_iter()
        .map(|m| (m.name, m.unit))
        .collect();
    let mut views = Vec::with_capacity(stored.len());
    for meta in stored {
        let plan = tally_rate::plans::plan(db, &meta.plan_id).await?;
        let currency = plan.currency.code().to_string();
        let versions = plan
            .versions
            .iter()
            .map(|v| VersionView {
                number: v.number,
                effective_from: v.effective_from,
                rules: v
                    .rules
                    .iter()
                    .filter_map(|r| {
                        let projects: Vec<String> =
                            r.projects.iter().filter(|p| readable(p)).cloned().collect();
                        if !r.projects.is_empty() && projects.is_empty() {
                            return None;
                        }
                        Some(RuleView {
                            index: r.index,
                            meter: r.meter.clone(),
                            matches: r.matches.clone(),
                            projects,
                            description: describe(
                                &r.rule,
                                &currency,
                                units.get(r.meter.as_str()).map_or("unit", String::as_str),
                            ),
                            price: r.rule.clone(),
                        })
                    })
                    .collect(),
            })
            .collect();
        views.push(PlanView {
            plan_id: plan.id.clone(),
            name: plan.name.clone(),
            currency,
            is_default: meta.is_default,
            versions,
            cloudkitty_meters: plan.cloudkitty.keys().cloned().collect(),
        });
    }
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::pricing::Tier;

    fn d(text: &str) -> Decimal {
        text.parse().expect("a decimal")
    }

    fn rule(charge: Charge) -> PriceRule {
        PriceRule {
            charge,
            free_allowance: Decimal::ZERO,
            minimum: None,
        }
    }

    #[test]
    fn prices_are_described_in_words() {
        assert_eq!(
            describe(
                &rule(Charge::PerUnit {
                    unit_price: d("0.0125")
                }),
                "EUR",
                "hour"
            ),
            "0.0125 EUR per hour"
        );
        let graduated = PriceRule {
            charge: Charge::Graduated {
                tiers: vec![
                    Tier {
                        up_to: Some(d("100")),
                        unit_price: d("0.10"),
                        flat_fee: Decimal::ZERO,
                    },
                    Tier {
                        up_to: None,
                        unit_price: d("0.05"),
                        flat_fee: d("2"),
                    },
                ],
            },
            free_allowance: d("10"),
            minimum: Some(d("1.50")),
        };
        assert_eq!(
            describe(&graduated, "USD", "GiB-hour"),
            "graduated: 0–100 at 0.10 USD per GiB-hour; 100+ at 0.05 USD per GiB-hour plus 2 USD once; \
             the first 10 GiB-hour of each period free; at least 1.50 USD per period"
        );
        assert_eq!(
            describe(
                &rule(Charge::Package {
                    size: d("5"),
                    price: d("3")
                }),
                "EUR",
                "GB"
            ),
            "3 EUR per block of 5 GB (a started block counts whole)"
        );
    }
}
