//! CloudKitty hashmap rating, computed as CloudKitty 25 computes it, so that
//! an operator's CloudKitty configuration gives the same prices in Tally.
//!
//! The unit CloudKitty rates is a *data point*: one resource's aggregate for
//! one rating period (in Tally, one rated line before rounding). For each
//! data point and each group of rules there is an accumulator `flat = 0`,
//! `rate = 1` and one threshold slot:
//!
//! - a matching `flat` mapping is a per-unit price: the group's flat becomes
//!   the largest matching flat, replacing only when strictly greater (so a
//!   negative flat never applies); a matching `rate` mapping multiplies the
//!   group's rate;
//! - a field mapping matches when the attribute rendered as Python's `str()`
//!   renders it equals the mapping's value exactly ([`python_str`]);
//! - at most one service mapping per group is effective (the last listed, as
//!   CloudKitty's loader overwrites a dict entry per group);
//! - thresholds that are reached (service: quantity ≥ level; field: the
//!   attribute's number ≥ level) compete for the group's one slot: the
//!   highest level wins, a service threshold on a tie. A field threshold then
//!   adds to the flat (`flat`) or multiplies the rate (`rate`); the group's
//!   price is `rate × flat × quantity`; a service threshold adds its cost to
//!   that price once per data point (`flat`) or multiplies it (`rate`);
//! - group prices add up.
//!
//! Project-scoped rules (CloudKitty's `tenant_id`) replace global ones for
//! that project on an exact match (see [`HashmapRules::effective_for`]) and
//! are added otherwise.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::record::{AttributeValue, Attributes};

/// The group CloudKitty uses for rules without a group.
pub const DEFAULT_GROUP: &str = "_DEFAULT_";

/// Whether a cost is a per-unit price or a multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostType {
    /// A price (per unit for mappings and field thresholds, per data point
    /// for service thresholds).
    Flat,
    /// A multiplier.
    Rate,
}

/// A mapping: a cost that applies when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// The rule's id, for explaining a price.
    pub id: String,
    /// The attribute it looks at; `None` for a service mapping.
    pub field: Option<String>,
    /// The value it matches (field mappings only).
    pub value: Option<String>,
    /// Flat or rate.
    pub cost_type: CostType,
    /// The cost.
    pub cost: Decimal,
    /// Its group (`_DEFAULT_` when it has none).
    pub group: String,
    /// The project it is scoped to, if any.
    pub project: Option<String>,
    /// When it is valid: `[start, end)`, either side open when `None`.
    #[serde(default)]
    pub valid: Validity,
}

/// When a rule applies (CloudKitty's `start` and `end` on mappings): a rule
/// without bounds applies to every period, past ones included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    /// First instant it applies.
    pub start: Option<DateTime<Utc>>,
    /// First instant it no longer applies.
    pub end: Option<DateTime<Utc>>,
}

impl Validity {
    /// Whether the rule applies to a period starting at `at`.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start.is_none_or(|s| s <= at) && self.end.is_none_or(|e| at < e)
    }
}

/// A threshold: a cost that applies from a level up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    /// The rule's id.
    pub id: String,
    /// The attribute it looks at; `None` for a service threshold.
    pub field: Option<String>,
    /// The level from which it applies.
    pub level: Decimal,
    /// Flat or rate.
    pub cost_type: CostType,
    /// The cost.
    pub cost: Decimal,
    /// Its group.
    pub group: String,
    /// The project it is scoped to, if any.
    pub project: Option<String>,
    /// When it is valid.
    #[serde(default)]
    pub valid: Validity,
}

/// The hashmap rules of one service (one meter).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashmapRules {
    /// Service and field mappings, in listing order.
    pub mappings: Vec<Mapping>,
    /// Service and field thresholds, in listing order.
    pub thresholds: Vec<Threshold>,
}

/// A data point that cannot be rated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashmapError {
    /// A field with thresholds holds a value that is not a number.
    #[error(
        "attribute '{field}' is {value}, not a number, but field thresholds compare it to levels: send it as a number or remove the thresholds on '{field}'"
    )]
    NotANumber {
        /// The attribute.
        field: String,
        /// Its value as Python would print it.
        value: String,
    },
    /// Arithmetic overflow.
    #[error("amount overflow")]
    Overflow,
}

/// How one group priced a data point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPrice {
    /// The group.
    pub group: String,
    /// The per-unit price after mappings and a field threshold.
    pub flat: Decimal,
    /// The multiplier after mappings and a field threshold.
    pub rate: Decimal,
    /// The threshold in the slot, if any.
    pub threshold: Option<String>,
    /// The mappings that matched.
    pub mappings: Vec<String>,
    /// The group's price.
    pub price: Decimal,
}

/// The price of a data point with its explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashmapPrice {
    /// Sum of the groups' prices.
    pub price: Decimal,
    /// Each group that has rules, by name.
    pub groups: Vec<GroupPrice>,
}

impl HashmapRules {
    /// The rules in force for `project` in the period starting `at` (rules
    /// outside their validity are dropped first): global rules, with project-scoped
    /// ones replacing them on an exact match — a field mapping with the same
    /// field, group and value; a service mapping with the same group
    /// (whatever its type); a threshold with the same field (or none), group
    /// and level — and added otherwise.
    pub fn effective_for(&self, project: &str, at: DateTime<Utc>) -> HashmapRules {
        let valid_mappings: Vec<&Mapping> = self
            .mappings
            .iter()
            .filter(|m| m.valid.contains(at))
            .collect();
        let valid_thresholds: Vec<&Threshold> = self
            .thresholds
            .iter()
            .filter(|t| t.valid.contains(at))
            .collect();
        let mut mappings: Vec<Mapping> = valid_mappings
            .iter()
            .filter(|m| m.project.is_none())
            .copied()
            .cloned()
            .collect();
        for scoped in self
            .mappings
            .iter()
            .filter(|m| m.project.as_deref() == Some(project))
        {
            let same = |m: &Mapping| {
                m.group == scoped.group
                    && m.field == scoped.field
                    && (scoped.field.is_none() || m.value == scoped.value)
            };
            mappings.retain(|m| !(m.project.is_none() && same(m)));
            mappings.push((*scoped).clone());
        }
        let mut thresholds: Vec<Threshold> = valid_thresholds
            .iter()
            .filter(|t| t.project.is_none())
            .copied()
            .cloned()
            .collect();
        for scoped in self
            .thresholds
            .iter()
            .filter(|t| t.project.as_deref() == Some(project))
        {
            thresholds.retain(|t| {
                !(t.project.is_none()
                    && t.group == scoped.group
                    && t.field == scoped.field
                    && t.level == scoped.level)
            });
            thresholds.push((*scoped).clone());
        }
        HashmapRules {
            mappings,
            thresholds,
        }
    }

    /// Prices one data point of `project` for the period starting `at`,
    /// with `quantity` and `attributes`.
    pub fn price(
        &self,
        project: &str,
        at: DateTime<Utc>,
        quantity: Decimal,
        attributes: &Attributes,
    ) -> Result<HashmapPrice, HashmapError> {
        let rules = self.effective_for(project, at);
        let groups: BTreeSet<&str> = rules
            .mappings
            .iter()
            .map(|m| m.group.as_str())
            .chain(rules.thresholds.iter().map(|t| t.group.as_str()))
            .collect();
        let mut out = HashmapPrice {
            price: Decimal::ZERO,
            groups: Vec::new(),
        };
        for group in groups {
            let g = price_group(&rules, group, quantity, attributes)?;
            out.price = out
                .price
                .checked_add(g.price)
                .ok_or(HashmapError::Overflow)?;
            out.groups.push(g);
        }
        Ok(out)
    }
}

fn price_group(
    rules: &HashmapRules,
    group: &str,
    quantity: Decimal,
    attributes: &Attributes,
) -> Result<GroupPrice, HashmapError> {
    let mut flat = Decimal::ZERO;
    let mut rate = Decimal::ONE;
    let mut matched = Vec::new();
    let mut apply = |m: &Mapping, flat: &mut Decimal, rate: &mut Decimal| {
        match m.cost_type {
            CostType::Flat => {
                if m.cost > *flat {
                    *flat = m.cost;
                }
            }
            CostType::Rate => *rate *= m.cost,
        }
        matched.push(m.id.clone());
    };
    // At most one service mapping per group: the last listed.
    if let Some(m) = rules
        .mappings
        .iter()
        .rfind(|m| m.group == group && m.field.is_none())
    {
        apply(m, &mut flat, &mut rate);
    }
    for m in rules.mappings.iter().filter(|m| m.group == group) {
        let Some(field) = &m.field else { continue };
        let Some(value) = attributes.get(field) else {
            continue;
        };
        if m.value.as_deref() == Some(python_str(value).as_str()) {
            apply(m, &mut flat, &mut rate);
        }
    }

    // The threshold slot: highest reached level; service wins a tie.
    let mut slot: Option<&Threshold> = None;
    for t in rules.thresholds.iter().filter(|t| t.group == group) {
        let reached = match &t.field {
            None => quantity >= t.level,
            Some(field) => match attributes.get(field) {
                None => false,
                Some(v) => numeric(field, v)? >= t.level,
            },
        };
        if !reached {
            continue;
        }
        let better = match slot {
            None => true,
            Some(s) => {
                t.level > s.level || (t.level == s.level && t.field.is_none() && s.field.is_some())
            }
        };
        if better {
            slot = Some(t);
        }
    }
    if let Some(t) = slot.filter(|t| t.field.is_some()) {
        match t.cost_type {
            CostType::Flat => flat += t.cost,
            CostType::Rate => rate *= t.cost,
        }
    }
    let mut price = rate
        .checked_mul(flat)
        .and_then(|p| p.checked_mul(quantity))
        .ok_or(HashmapError::Overflow)?;
    if let Some(t) = slot.filter(|t| t.field.is_none()) {
        match t.cost_type {
            CostType::Flat => price += t.cost,
            CostType::Rate => price *= t.cost,
        }
    }
    Ok(GroupPrice {
        group: group.to_string(),
        flat,
        rate,
        threshold: slot.map(|t| t.id.clone()),
        mappings: matched,
        price,
    })
}

fn numeric(field: &str, v: &AttributeValue) -> Result<Decimal, HashmapError> {
    let not_a_number = || HashmapError::NotANumber {
        field: field.to_string(),
        value: python_str(v),
    };
    match v {
        AttributeValue::Number(n) => {
            let text = n.to_string();
            let parsed = if text.contains(['e', 'E']) {
                Decimal::from_scientific(&text)
            } else {
                text.parse::<Decimal>()
            };
            parsed.map_err(|_| not_a_number())
        }
        _ => Err(not_a_number()),
    }
}

/// An attribute as Python's `str()` prints it: what CloudKitty compares a
/// field mapping's value with. Integers print as digits; floats as Python's
/// shortest round-trip repr (`2.0`, `0.1`, `1e+16`, `1.5e-05`); booleans as
/// `True`/`False`; null as `None`.
pub fn python_str(v: &AttributeValue) -> String {
    match v {
        AttributeValue::Null => "None".into(),
        AttributeValue::Bool(true) => "True".into(),
        AttributeValue::Bool(false) => "False".into(),
        AttributeValue::String(s) => s.clone(),
        AttributeValue::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => python_float_repr(f),
            _ => n.to_string(),
        },
    }
}

/// Python's `repr(float)`: shortest digits that round-trip, in fixed
/// notation when the decimal exponent is in -4..16, else in scientific
/// notation with a signed exponent of at least two digits.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.5e-5", "8e0".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn service_mapping(id: &str, t: CostType, cost: &str, group: &str) -> Mapping {
        Mapping {
            id: id.into(),
            field: None,
            value: None,
            cost_type: t,
            cost: d(cost),
            group: group.into(),
            project: None,
            valid: Validity::default(),
        }
    }

    fn field_mapping(
        id: &str,
        field: &str,
        value: &str,
        t: CostType,
        cost: &str,
        group: &str,
    ) -> Mapping {
        Mapping {
            id: id.into(),
            field: Some(field.into()),
            value: Some(value.into()),
            cost_type: t,
            cost: d(cost),
            group: group.into(),
            project: None,
            valid: Validity::default(),
        }
    }

    fn threshold(
        id: &str,
        field: Option<&str>,
        level: &str,
        t: CostType,
        cost: &str,
        group: &str,
    ) -> Threshold {
        Threshold {
            id: id.into(),
            field: field.map(Into::into),
            level: d(level),
            cost_type: t,
            cost: d(cost),
            group: group.into(),
            project: None,
            valid: Validity::default(),
        }
    }

    fn attrs(json: &str) -> Attributes {
        serde_json::from_str(json).unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }

    fn price(rules: &HashmapRules, q: &str, a: &str) -> Decimal {
        rules.price("p1", now(), d(q), &attrs(a)).unwrap().price
    }

    #[test]
    fn rules_apply_only_within_their_validity() {
        let mut m = service_mapping("s", CostType::Flat, "2", DEFAULT_GROUP);
        m.valid = Validity {
            start: Some(now()),
            end: Some(now() + chrono::Duration::hours(1)),
        };
        let rules = HashmapRules {
            mappings: vec![m],
            thresholds: vec![],
        };
        let at = |h: i64| now() + chrono::Duration::hours(h);
        let p = |h| {
            rules
                .price("p", at(h), d("3"), &Attributes::new())
                .unwrap()
                .price
        };
        assert_eq!(p(0), d("6"));
        assert_eq!(p(-1), d("0"), "before start");
        assert_eq!(p(1), d("0"), "end is exclusive");
    }

    #[test]
    fn python_str_renders_like_python() {
        let cases = [
            ("8", "8"),
            ("2.0", "2.0"),
            ("0.1", "0.1"),
            ("-2.5", "-2.5"),
            ("1e16", "1e+16"),
            ("1.5e-5", "1.5e-05"),
            ("0.0001", "0.0001"),
            ("123456789.123", "123456789.123"),
            ("9999999999999998.0", "9999999999999998.0"),
            ("1e22", "1e+22"),
            ("100.0", "100.0"),
            ("\"8\"", "8"),
            ("true", "True"),
            ("null", "None"),
        ];
        for (json, expected) in cases {
            let v: AttributeValue = serde_json::from_str(json).unwrap();
            assert_eq!(python_str(&v), expected, "{json}");
        }
    }

    #[test]
    fn flat_mappings_take_the_largest_and_never_go_negative() {
        let rules = HashmapRules {
            mappings: vec![
                field_mapping(
                    "m1",
                    "flavor",
                    "m1.small",
                    CostType::Flat,
                    "0.5",
                    DEFAULT_GROUP,
                ),
                field_mapping("m2", "az", "az1", CostType::Flat, "0.3", DEFAULT_GROUP),
                field_mapping("m3", "az", "az2", CostType::Flat, "-1", DEFAULT_GROUP),
            ],
            thresholds: vec![],
        };
        // Largest matching flat (0.5) × 10 units.
        assert_eq!(
            price(&rules, "10", r#"{"flavor":"m1.small","az":"az1"}"#),
            d("5.0")
        );
        // A negative flat never replaces the starting 0.
        assert_eq!(price(&rules, "10", r#"{"az":"az2"}"#), d("0"));
    }

    #[test]
    fn rates_multiply_and_a_group_with_only_rates_prices_nothing() {
        let rules = HashmapRules {
            mappings: vec![
                service_mapping("s", CostType::Flat, "2", "g"),
                field_mapping("r1", "az", "az1", CostType::Rate, "1.5", "g"),
                field_mapping("r2", "tier", "gold", CostType::Rate, "2", "g"),
                field_mapping("only-rate", "az", "az1", CostType::Rate, "3", "h"),
            ],
            thresholds: vec![],
        };
        // g: 1.5 × 2 × 2 × 4 = 24; h: rate 3 × flat 0 = 0.
        assert_eq!(price(&rules, "4", r#"{"az":"az1","tier":"gold"}"#), d("24"));
    }

    #[test]
    fn field_values_compare_as_python_strings() {
        let rules = HashmapRules {
            mappings: vec![field_mapping(
                "m",
                "vcpus",
                "2",
                CostType::Flat,
                "1",
                DEFAULT_GROUP,
            )],
            thresholds: vec![],
        };
        assert_eq!(price(&rules, "1", r#"{"vcpus":2}"#), d("1"));
        assert_eq!(price(&rules, "1", r#"{"vcpus":"2"}"#), d("1"));
        assert_eq!(
            price(&rules, "1", r#"{"vcpus":2.0}"#),
            d("0"),
            "2.0 renders as '2.0'"
        );
    }

    #[test]
    fn only_the_last_service_mapping_of_a_group_counts_and_groups_add() {
        let rules = HashmapRules {
            mappings: vec![
                service_mapping("s1", CostType::Flat, "5", "a"),
                service_mapping("s2", CostType::Flat, "1", "a"),
                service_mapping("s3", CostType::Flat, "2", "b"),
            ],
            thresholds: vec![],
        };
        // a: 1 × 3, b: 2 × 3.
        assert_eq!(price(&rules, "3", "{}"), d("9"));
    }

    #[test]
    fn thresholds_share_one_slot_highest_level_wins_service_on_a_tie() {
        let base = vec![service_mapping("s", CostType::Flat, "1", "g")];
        let rules = HashmapRules {
            mappings: base.clone(),
            thresholds: vec![
                threshold("t-svc-10", None, "10", CostType::Flat, "100", "g"),
                threshold("t-ram-10", Some("ram"), "10", CostType::Flat, "0.5", "g"),
                threshold("t-ram-20", Some("ram"), "20", CostType::Rate, "2", "g"),
            ],
        };
        let p = rules
            .price("p1", now(), d("10"), &attrs(r#"{"ram":15}"#))
            .unwrap();
        // Tie at level 10: the service threshold wins; price 1 × 10 + 100.
        assert_eq!(p.groups[0].threshold.as_deref(), Some("t-svc-10"));
        assert_eq!(p.price, d("110"));
        // ram 20 reaches level 20 (higher): rate 2 → 2 × 1 × 10, no service flat.
        assert_eq!(price(&rules, "10", r#"{"ram":20}"#), d("20"));
        // Quantity 5, ram 12: only the field threshold at 10: flat 1 + 0.5.
        assert_eq!(price(&rules, "5", r#"{"ram":12}"#), d("7.5"));
    }

    #[test]
    fn a_service_flat_threshold_adds_once_even_at_zero_quantity_and_without_mappings() {
        let rules = HashmapRules {
            mappings: vec![],
            thresholds: vec![threshold(
                "t",
                None,
                "0",
                CostType::Flat,
                "3",
                DEFAULT_GROUP,
            )],
        };
        assert_eq!(price(&rules, "0", "{}"), d("3"));
        assert_eq!(price(&rules, "7", "{}"), d("3"));
        let rated = HashmapRules {
            mappings: vec![service_mapping("s", CostType::Flat, "2", DEFAULT_GROUP)],
            thresholds: vec![threshold(
                "t",
                None,
                "5",
                CostType::Rate,
                "0.5",
                DEFAULT_GROUP,
            )],
        };
        assert_eq!(price(&rated, "4", "{}"), d("8"));
        assert_eq!(price(&rated, "6", "{}"), d("6.0")); // 2 × 6 × 0.5
    }

    #[test]
    fn text_on_a_field_with_thresholds_is_a_clear_error() {
        let rules = HashmapRules {
            mappings: vec![],
            thresholds: vec![threshold(
                "t",
                Some("ram"),
                "1",
                CostType::Flat,
                "1",
                DEFAULT_GROUP,
            )],
        };
        let err = rules
            .price("p1", now(), d("1"), &attrs(r#"{"ram":"big"}"#))
            .unwrap_err();
        assert!(
            err.to_string().contains("'ram' is big, not a number"),
            "{err}"
        );
    }

    #[test]
    fn project_rules_replace_on_exact_match_and_add_otherwise() {
        let mut scoped_flavor = field_mapping(
            "p-small",
            "flavor",
            "m1.small",
            CostType::Flat,
            "0.2",
            DEFAULT_GROUP,
        );
        scoped_flavor.project = Some("p1".into());
        let mut scoped_service = service_mapping("p-svc", CostType::Rate, "0.5", DEFAULT_GROUP);
        scoped_service.project = Some("p1".into());
        let mut scoped_extra =
            field_mapping("p-az", "az", "az9", CostType::Flat, "0.9", DEFAULT_GROUP);
        scoped_extra.project = Some("p1".into());
        let rules = HashmapRules {
            mappings: vec![
                service_mapping("g-svc", CostType::Flat, "0.1", DEFAULT_GROUP),
                field_mapping(
                    "g-small",
                    "flavor",
                    "m1.small",
                    CostType::Flat,
                    "0.5",
                    DEFAULT_GROUP,
                ),
                scoped_flavor,
                scoped_service,
                scoped_extra,
            ],
            thresholds: vec![],
        };
        // Another project sees only global rules: max(0.1, 0.5) × 10.
        let other = rules
            .price("p2", now(), d("10"), &attrs(r#"{"flavor":"m1.small"}"#))
            .unwrap();
        assert_eq!(other.price, d("5.0"));
        // p1: the service mapping (flat 0.1) is replaced by the rate 0.5; the
        // m1.small mapping by 0.2: 0.5 × 0.2 × 10.
        assert_eq!(price(&rules, "10", r#"{"flavor":"m1.small"}"#), d("1.00"));
        // The az9 mapping had no global twin: it is added for p1 only.
        assert_eq!(price(&rules, "10", r#"{"az":"az9"}"#), d("4.50"));
        assert_eq!(
            rules
                .price("p2", now(), d("10"), &attrs(r#"{"az":"az9"}"#))
                .unwrap()
                .price,
            d("1.0")
        );
    }

    #[test]
    fn scoped_threshold_replaces_the_global_one_at_the_same_level() {
        let mut scoped = threshold("p-t", None, "10", CostType::Flat, "1", DEFAULT_GROUP);
        scoped.project = Some("p1".into());
        let rules = HashmapRules {
            mappings: vec![],
            thresholds: vec![
                threshold("g-t", None, "10", CostType::Flat, "50", DEFAULT_GROUP),
                scoped,
            ],
        };
        assert_eq!(price(&rules, "10", "{}"), d("1"));
        assert_eq!(
            rules
                .price("p2", now(), d("10"), &attrs("{}"))
                .unwrap()
                .price,
            d("50")
        );
    }
}
