//! Reports over rated usage and accounts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_db::Database;
use tally_store::objects::RawObjects;

use crate::BillingError;
use tally_rate::plans::Owners;

/// Rated usage of one project and meter that no account pays for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnbilledUsage {
    /// The Keystone project.
    pub project_id: String,
    /// The meter.
    pub meter: String,
    /// Σ quantity.
    pub quantity: Decimal,
    /// Unit.
    pub unit: String,
    /// Σ amount as rated (full precision).
    pub amount: Decimal,
    /// Currency it was rated in.
    pub currency: String,
    /// Rated lines behind it.
    pub lines: u64,
}

/// Usage in `[from, to)` of projects that no account owns, directly or
/// through their domain: what an operator must assign before invoicing,
/// so that no usage is silently left out of every invoice.
pub async fn unbilled_usage(
    db: &Database,
    rated: &RawObjects,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<UnbilledUsage>, BillingError> {
    let owners = Owners::load(db).await?;
    let mut out: BTreeMap<(String, String, String), UnbilledUsage> = BTreeMap::new();
    tally_rate::runs::read_current_lines(db, rated, from, to, |l| {
        if owners.owner_of(&l.project_id).is_some() {
            return;
        }
        let u = out
            .entry((l.project_id.clone(), l.meter.clone(), l.currency.clone()))
            .or_insert_with(|| UnbilledUsage {
                project_id: l.project_id.clone(),
                meter: l.meter.clone(),
                quantity: Decimal::ZERO,
                unit: l.unit.clone(),
                amount: Decimal::ZERO,
                currency: l.currency.clone(),
                lines: 0,
            });
        u.quantity += l.quantity;
        u.amount += l.amount;
        u.lines += 1;
    })
    .await?;
    Ok(out
        .into_values()
        .map(|mut u| {
            u.quantity = u.quantity.normalize();
            u.amount = u.amount.normalize();
            u
        })
        .collect())
}

/// Sums the current rated amounts of `[from, to)` into buckets: `bucket`
/// gets each line with the account that owns its project (`None` for
/// none) and names its bucket, or skips it. Lines in error are skipped:
/// they are no money yet.
pub async fn sum_rated<K: Ord>(
    db: &Database,
    rated: &RawObjects,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    mut bucket: impl FnMut(Option<&str>, &tally_core::RatedLine) -> Option<K>,
) -> Result<BTreeMap<K, Decimal>, BillingError> {
    let owners = Owners::load(db).await?;
    let mut out: BTreeMap<K, Decimal> = BTreeMap::new();
    tally_rate::runs::read_current_lines(db, rated, from, to, |l| {
        if l.error.is_some() {
            return;
        }
        if let Some(k) = bucket(owners.owner_of(&l.project_id), &l) {
            *out.entry(k).or_default() += l.amount;
        }
    })
    .await?;
    Ok(out)
}
