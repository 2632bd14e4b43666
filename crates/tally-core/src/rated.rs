//! Rated lines: what the rating job makes of raw usage, and what invoices
//! are made of.
//!
//! A rated line is one resource's usage of one rated meter in one rating
//! period, priced. Quantities and amounts are kept at full precision here;
//! rounding to the currency's minor unit happens on invoice lines (see
//! `docs/rounding.md`), never on a rated line.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::Attributes;

/// One priced line: a resource, a rated meter, a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RatedLine {
    /// The Keystone project that pays for it.
    pub project_id: String,
    /// The measured resource.
    pub resource_id: String,
    /// The rated meter (a meter definition's name, or the raw meter name for
    /// records rated by the default definition).
    pub meter: String,
    /// Values of the meter's group-by attributes, as text.
    pub group: BTreeMap<String, String>,
    /// Start of the rating period (inclusive).
    pub period_start: DateTime<Utc>,
    /// End of the rating period (exclusive).
    pub period_end: DateTime<Utc>,
    /// Aggregated quantity, full precision.
    pub quantity: Decimal,
    /// Unit of `quantity`.
    pub unit: String,
    /// The price of one unit, where a single one applies (per-unit rules).
    pub unit_price: Option<Decimal>,
    /// The line's amount, full precision (not rounded).
    pub amount: Decimal,
    /// ISO 4217 code of `amount`; empty when no plan priced the line.
    pub currency: String,
    /// The plan that priced the line; empty when none did.
    pub plan_id: String,
    /// The plan version in force at `period_start` (0 when unpriced).
    pub plan_version: u32,
    /// Which rule priced it (`rules[3]`, `cloudkitty:instance`), or why none
    /// did (`unpriced`).
    pub rule: String,
    /// Raw records that fell in the period and went into the line.
    pub raw_count: u64,
    /// Raw store segments those records were read from.
    pub segments: Vec<String>,
    /// The attributes of the latest record behind the line (what plan rules
    /// match against), the group values included. Shared: consecutive lines
    /// of a resource usually carry the same attributes.
    #[serde(with = "shared")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, crate::AttributeValue>))]
    pub attributes: Arc<Attributes>,
    /// Why the line could not be priced, when it could not (amount is then 0).
    pub error: Option<String>,
}

/// Serde for `Arc<Attributes>` as a plain map (serde's own `Arc` support is
/// a feature flag that would rebuild the whole dependency tree).
mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::Attributes;

    pub fn serialize<S: Serializer>(a: &Arc<Attributes>, s: S) -> Result<S::Ok, S::Error> {
        a.as_ref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Attributes>, D::Error> {
        Attributes::deserialize(d).map(Arc::new)
    }
}

/// The rule name of a line no plan rule prices.
pub const UNPRICED: &str = "unpriced";
