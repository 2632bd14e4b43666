//! Tally's price module: price plans and the choice of the rule that prices
//! a line.
//!
//! A plan has an id, one currency, and versions with an effective-from
//! instant; the version in force at a rating period's start prices that
//! period. A version holds rules per meter. A rule may require attribute
//! values (flavor, volume type, zone, region) and may be scoped to projects;
//! the most specific matching rule wins (see [`PricePlan::rule_for`]).
//!
//! Plans are TOML documents (`docs/pricing.md`). Money in a plan is written
//! as a string (`"0.0125"`) or an integer: a TOML float would pass through
//! binary floating point, so floats are refused with a message saying so.
//! This crate parses and decides; it does no I/O.

pub mod book;
pub mod cloudkitty_import;

pub use book::{PlanBook, PlanSpan, PlanStarts};

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};
use tally_core::cloudkitty::HashmapRules;
use tally_core::pricing::{Charge, PriceRule, Tier};
use tally_core::{Attributes, Currency};

/// A plan that cannot be used, with where and what to fix.
pub type PlanError = tally_core::DocumentError;

/// An exact amount in a plan file: a string or an integer, never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct PlanDecimal(pub Decimal);

impl<'de> Deserialize<'de> for PlanDecimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PlanDecimal;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decimal written as a string, such as \"0.0125\", or an integer")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PlanDecimal, E> {
                s.trim()
                    .parse::<Decimal>()
                    .or_else(|_| Decimal::from_scientific(s.trim()))
                    .map(PlanDecimal)
                    .map_err(|_| E::custom(format!("'{s}' is not a decimal number")))
            }
            fn visit_i64<E>(self, v: i64) -> Result<PlanDecimal, E> {
                Ok(PlanDecimal(Decimal::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<PlanDecimal, E> {
                Ok(PlanDecimal(Decimal::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<PlanDecimal, E> {
                Err(E::custom(format!(
                    "{v} is written as a TOML float, which is not exact: write it as a string, \"{v}\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    id: String,
    currency: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    versions: Vec<VersionFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionFile {
    effective_from: DateTime<Utc>,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    meter: String,
    #[serde(default, rename = "match")]
    matches: BTreeMap<String, toml::Value>,
    #[serde(default)]
    projects: Vec<String>,
    charge: ChargeFile,
    #[serde(default)]
    free_allowance: PlanDecimal,
    #[serde(default)]
    minimum: Option<PlanDecimal>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ChargeFile {
    PerUnit {
        unit_price: PlanDecimal,
    },
    Flat {
        amount: PlanDecimal,
    },
    Graduated {
        tiers: Vec<TierFile>,
    },
    Volume {
        tiers: Vec<TierFile>,
    },
    Package {
        size: PlanDecimal,
        price: PlanDecimal,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    up_to: Option<PlanDecimal>,
    unit_price: PlanDecimal,
    #[serde(default)]
    flat_fee: PlanDecimal,
}

/// One priced rule of a plan version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRule {
    /// Position in its version, for explaining which rule priced a line.
    pub index: usize,
    /// The meter it prices.
    pub meter: String,
    /// Attribute values it requires, rendered as text.
    pub matches: BTreeMap<String, String>,
    /// Projects it is limited to; empty for every project.
    pub projects: Vec<String>,
    /// The price.
    pub rule: PriceRule,
}

/// One version of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanVersion {
    /// Version number, from 1 in effective order.
    pub number: u32,
    /// From when it prices periods.
    pub effective_from: DateTime<Utc>,
    /// Its rules, in file order.
    pub rules: Vec<PlanRule>,
}

/// A validated price plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricePlan {
    /// The plan id.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The one currency of every amount.
    pub currency: Currency,
    /// Versions by effective instant, oldest first.
    pub versions: Vec<PlanVersion>,
    /// CloudKitty hashmap rules by meter (from `tally plan import-cloudkitty`).
    /// They price a meter in every version; a native rule for the same meter
    /// takes precedence.
    pub cloudkitty: BTreeMap<String, HashmapRules>,
}

/// How a plan priced one line (or why it did not).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinePrice {
    /// Version number in force at the period start (0 when none is).
    pub plan_version: u32,
    /// The rule that priced the line. Not serialized: its name
    /// ([`PricedBy::name`]) needs the meter, which whoever shows the price
    /// holds; the rating job writes it straight into its line files.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub rule: PricedBy,
    /// Full-precision amount (0 when unpriced or in error).
    pub amount: Decimal,
    /// The price of one unit, when one price applies to every unit.
    pub unit_price: Option<Decimal>,
    /// Why the line could not be priced, when the rule failed on it.
    pub error: Option<String>,
}

impl LinePrice {
    /// No rule priced the line; `plan_version` is the version in force (0
    /// when none is, or when the line was not offered to a plan).
    pub fn unpriced(plan_version: u32) -> LinePrice {
        LinePrice {
            plan_version,
            rule: PricedBy::Nothing,
            amount: Decimal::ZERO,
            unit_price: None,
            error: None,
        }
    }

    /// What `rule` of `plan_version` made of the line: an amount (and the
    /// unit price, if one applies to every unit), or why it could not
    /// price it (amount 0).
    fn by_rule(
        plan_version: u32,
        rule: PricedBy,
        outcome: Result<(Decimal, Option<Decimal>), String>,
    ) -> LinePrice {
        let (amount, unit_price, error) = match outcome {
            Ok((amount, unit_price)) => (amount, unit_price, None),
            Err(e) => (Decimal::ZERO, None, Some(e)),
        };
        LinePrice {
            plan_version,
            rule,
            amount,
            unit_price,
            error,
        }
    }
}

/// Which rule priced a line, without its name written out (see
/// [`PricedBy::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PricedBy {
    /// The native rule at this position of its version's rules.
    Rule(usize),
    /// The meter's CloudKitty hashmap rules.
    CloudKitty,
    /// No rule: the line is unpriced.
    Nothing,
}

impl PricedBy {
    /// The rule's name as lines and explanations show it: `rules[2]`,
    /// `cloudkitty:<meter>`, or `unpriced`.
    pub fn name<'a>(&self, meter: &'a str) -> RuleName<'a> {
        RuleName { by: *self, meter }
    }
}

/// A rule's name, written on demand (`Display`).
#[derive(Debug, Clone, Copy)]
pub struct RuleName<'a> {
    by: PricedBy,
    meter: &'a str,
}

impl std::fmt::Display for RuleName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.by {
            PricedBy::Rule(i) => write!(f, "rules[{i}]"),
            PricedBy::CloudKitty => write!(f, "cloudkitty:{}", self.meter),
            PricedBy::Nothing => f.write_str(tally_core::rated::UNPRICED),
        }
    }
}

impl PricePlan {
    /// Parses and validates a plan. `known_meters`, when given, is the list
    /// of meters the meter definitions know: a rule for any other is refused.
    pub fn from_toml(text: &str, known_meters: Option<&[&str]>) -> Result<PricePlan, PlanError> {
        let file: PlanFile = toml::from_str(text).map_err(|e| PlanError::Syntax(e.to_string()))?;
        let invalid = |path: String, message: String| PlanError::Invalid { path, message };
        if file.id.trim().is_empty() {
            return Err(invalid("id".into(), "the plan needs a non-empty id".into()));
        }
        let currency: Currency = file
            .currency
            .parse()
            .map_err(|e: tally_core::MoneyError| invalid("currency".into(), e.to_string()))?;
        if file.versions.is_empty() {
            return Err(invalid(
                "versions".into(),
                "the plan needs at least one [[versions]] with an effective_from".into(),
            ));
        }
        let mut order: Vec<usize> = (0..file.versions.len()).collect();
        order.sort_by_key(|&i| file.versions[i].effective_from);
        for pair in order.windows(2) {
            if file.versions[pair[0]].effective_from == file.versions[pair[1]].effective_from {
                return Err(invalid(
                    format!("versions[{}]", pair[1]),
                    format!(
                        "overlaps versions[{}]: both take effect at {}; give each version its own effective_from",
                        pair[0], file.versions[pair[0]].effective_from
                    ),
                ));
            }
        }
        let mut versions = Vec::new();
        for (number, &i) in order.iter().enumerate() {
            let v = &file.versions[i];
            let mut rules = Vec::new();
            for (r, rule) in v.rules.iter().enumerate() {
                let path = format!("versions[{i}].rules[{r}]");
                if let Some(known) = known_meters
                    && !known.contains(&rule.meter.as_str())
                {
                    return Err(invalid(
                        format!("{path}.meter"),
                        format!(
                            "unknown meter '{}': define it in the meter definitions or use one of {}",
                            rule.meter,
                            known.join(", ")
                        ),
                    ));
                }
                let tiers = |ts: &[TierFile]| -> Vec<Tier> {
                    ts.iter()
                        .map(|t| Tier {
                            up_to: t.up_to.map(|u| u.0),
                            unit_price: t.unit_price.0,
                            flat_fee: t.flat_fee.0,
                        })
                        .collect()
                };
                let charge = match &rule.charge {
                    ChargeFile::PerUnit { unit_price } => Charge::PerUnit {
                        unit_price: unit_price.0,
                    },
                    ChargeFile::Flat { amount } => Charge::Flat { amount: amount.0 },
                    ChargeFile::Graduated { tiers: t } => Charge::Graduated { tiers: tiers(t) },
                    ChargeFile::Volume { tiers: t } => Charge::Volume { tiers: tiers(t) },
                    ChargeFile::Package { size, price } => Charge::Package {
                        size: size.0,
                        price: price.0,
                    },
                };
                let price_rule = PriceRule {
                    charge,
                    free_allowance: rule.free_allowance.0,
                    minimum: rule.minimum.map(|m| m.0),
                };
                price_rule
                    .validate()
                    .map_err(|e| invalid(format!("{path}.charge"), e.to_string()))?;
                let mut matches = BTreeMap::new();
                for (k, value) in &rule.matches {
                    let text = match value {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(n) => n.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        other => {
                            return Err(invalid(
                                format!("{path}.match.{k}"),
                                format!(
                                    "match values are strings, integers or booleans, got {}",
                                    other.type_str()
                                ),
                            ));
                        }
                    };
                    matches.insert(k.clone(), text);
                }
                rules.push(PlanRule {
                    index: r,
                    meter: rule.meter.clone(),
                    matches,
                    projects: rule.projects.clone(),
                    rule: price_rule,
                });
            }
            versions.push(PlanVersion {
                number: number as u32 + 1,
                effective_from: v.effective_from,
                rules,
            });
        }
        Ok(PricePlan {
            id: file.id,
            name: file.name,
            currency,
            versions,
            cloudkitty: BTreeMap::new(),
        })
    }

    /// A plan made of CloudKitty hashmap rules (one version, in force since
    /// the Unix epoch: the rules' own `start`/`end` bound them).
    pub fn from_cloudkitty(
        id: &str,
        currency: Currency,
        json: &str,
    ) -> Result<PricePlan, PlanError> {
        if id.trim().is_empty() {
            return Err(PlanError::Invalid {
                path: "id".into(),
                message: "the plan needs a non-empty id (--id)".into(),
            });
        }
        Ok(PricePlan {
            id: id.to_string(),
            name: format!("Imported from CloudKitty ({id})"),
            currency,
            versions: vec![PlanVersion {
                number: 1,
                effective_from: DateTime::UNIX_EPOCH,
                rules: Vec::new(),
            }],
            cloudkitty: cloudkitty_import::import_cloudkitty(json)?,
        })
    }

    /// Prices `quantity` of `meter` for `project` in the period starting at
    /// `period_start`: the most specific native rule (see
    /// [`PricePlan::rule_for`]), else the meter's CloudKitty rules, else
    /// nothing (`unpriced`, amount 0). A rule that fails on this line (an
    /// overflow, a text value on a thresholded field) gives amount 0 and the
    /// reason, and does not stop the run.
    pub fn price(
        &self,
        meter: &str,
        project: &str,
        attributes: &Attributes,
        period_start: DateTime<Utc>,
        quantity: Decimal,
    ) -> LinePrice {
        // The version is looked up once per line: this runs for every line.
        let in_force = self.version_at(period_start);
        let version = in_force.map_or(0, |v| v.number);
        if let Some(r) = in_force.and_then(|v| v.rule_for(meter, project, attributes)) {
            let unit_price = match &r.rule.charge {
                Charge::PerUnit { unit_price } if r.rule.free_allowance.is_zero() => {
                    Some(*unit_price)
                }
                _ => None,
            };
            let outcome = r
                .rule
                .price(quantity)
                .map(|p| (p.amount, unit_price.filter(|_| !p.minimum_applied)))
                .map_err(|e| e.to_string());
            return LinePrice::by_rule(version, PricedBy::Rule(r.index), outcome);
        }
        if version > 0
            && let Some(rules) = self.cloudkitty.get(meter)
        {
            let outcome = rules
                .price(project, period_start, quantity, attributes)
                .map(|p| (p.price, None))
                .map_err(|e| e.to_string());
            return LinePrice::by_rule(version, PricedBy::CloudKitty, outcome);
        }
        LinePrice::unpriced(version)
    }

    /// The version in force at `at`: the latest one effective at or before it.
    pub fn version_at(&self, at: DateTime<Utc>) -> Option<&PlanVersion> {
        self.versions.iter().rev().find(|v| v.effective_from <= at)
    }

    /// The rule that prices a line of `meter` for `project` with
    /// `attributes` in the period starting at `period_start`.
    ///
    /// Among the version's rules for the meter whose matches all hold and
    /// whose project list (if any) names the project, a project-scoped rule
    /// beats a global one, then a rule with more matches beats one with
    /// fewer, then the first in the file wins.
    pub fn rule_for(
        &self,
        meter: &str,
        project: &str,
        attributes: &Attributes,
        period_start: DateTime<Utc>,
    ) -> Option<(&PlanVersion, &PlanRule)> {
        let version = self.version_at(period_start)?;
        version
            .rule_for(meter, project, attributes)
            .map(|r| (version, r))
    }
}

impl PlanVersion {
    /// The most specific rule of this version for a line (see
    /// [`PricePlan::rule_for`]).
    pub fn rule_for(
        &self,
        meter: &str,
        project: &str,
        attributes: &Attributes,
    ) -> Option<&PlanRule> {
        self.rules
            .iter()
            .filter(|r| r.meter == meter)
            .filter(|r| r.projects.is_empty() || r.projects.iter().any(|p| p == project))
            .filter(|r| {
                r.matches
                    .iter()
                    .all(|(k, v)| attributes.get(k).is_some_and(|a| a.text() == *v))
            })
            .min_by_key(|r| {
                (
                    r.projects.is_empty(),
                    std::cmp::Reverse(r.matches.len()),
                    r.index,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use tally_core::AttributeValue;

    const PLAN: &str = r#"
id = "public"
name = "Public cloud"
currency = "EUR"

[[versions]]
effective_from = "2026-10-01T00:00:00Z"

[[versions.rules]]
meter = "instance"
charge = { type = "per_unit", unit_price = "0.02" }

[[versions.rules]]
meter = "instance"
match = { flavor_name = "m1.small" }
charge = { type = "per_unit", unit_price = "0.0125" }

[[versions.rules]]
meter = "instance"
match = { flavor_name = "m1.small" }
projects = ["vip"]
charge = { type = "per_unit", unit_price = "0.01" }

[[versions.rules]]
meter = "volume.size"
free_allowance = 10
charge = { type = "graduated", tiers = [
  { up_to = "100", unit_price = "0.00014" },
  { unit_price = "0.0001" },
] }

[[versions]]
effective_from = "2026-11-01T00:00:00Z"

[[versions.rules]]
meter = "instance"
charge = { type = "per_unit", unit_price = "0.025" }
"#;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), AttributeValue::String(v.to_string())))
            .collect()
    }

    fn at(m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, m, d, 0, 0, 0).unwrap()
    }

    #[test]
    fn the_most_specific_rule_of_the_version_in_force_wins() {
        let plan = PricePlan::from_toml(PLAN, None).unwrap();
        assert_eq!(plan.currency.code(), "EUR");
        let price = |project: &str, a: Attributes, when| {
            let (v, r) = plan.rule_for("instance", project, &a, when).unwrap();
            (
                v.number,
                r.index,
                r.rule
                    .price("10".parse().unwrap())
                    .unwrap()
                    .amount
                    .to_string(),
            )
        };
        assert_eq!(
            price("p1", attrs(&[("flavor_name", "m1.large")]), at(10, 5)),
            (1, 0, "0.20".into())
        );
        assert_eq!(
            price("p1", attrs(&[("flavor_name", "m1.small")]), at(10, 5)),
            (1, 1, "0.1250".into())
        );
        assert_eq!(
            price("vip", attrs(&[("flavor_name", "m1.small")]), at(10, 5)),
            (1, 2, "0.10".into())
        );
        // November: version 2 has one rule for every flavor.
        assert_eq!(
            price("vip", attrs(&[("flavor_name", "m1.small")]), at(11, 1)),
            (2, 0, "0.250".into())
        );
        assert!(
            plan.rule_for("instance", "p1", &attrs(&[]), at(9, 30))
                .is_none(),
            "no version in force"
        );
        assert!(
            plan.rule_for("ip.floating", "p1", &attrs(&[]), at(10, 5))
                .is_none()
        );
    }

    #[test]
    fn graduated_rule_with_allowance_from_the_file() {
        let plan = PricePlan::from_toml(PLAN, None).unwrap();
        let (_, r) = plan
            .rule_for("volume.size", "p", &attrs(&[]), at(10, 2))
            .unwrap();
        // (150 - 10) GiB-hours: 100 × 0.00014 + 40 × 0.0001 = 0.018
        assert_eq!(
            r.rule.price("150".parse().unwrap()).unwrap().amount,
            "0.018".parse().unwrap()
        );
    }

    fn error(text: &str) -> String {
        PricePlan::from_toml(text, Some(&["instance", "volume.size"]))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_plans_name_the_place_and_the_fix() {
        let head = "id = \"p\"\ncurrency = \"EUR\"\n[[versions]]\neffective_from = \"2026-10-01T00:00:00Z\"\n";
        let e = error(&format!(
            "{head}[[versions.rules]]\nmeter = \"instance\"\ncolour = 1\ncharge = {{ type = \"flat\", amount = \"1\" }}\n"
        ));
        assert!(
            e.contains("unknown field `colour`") && e.contains("line"),
            "{e}"
        );
        let e = error("id = \"p\"\n[[versions]]\neffective_from = \"2026-10-01T00:00:00Z\"\n");
        assert!(e.contains("missing field `currency`"), "{e}");
        let e = error(
            "id = \"p\"\ncurrency = \"euro\"\n[[versions]]\neffective_from = \"2026-10-01T00:00:00Z\"\n",
        );
        assert!(e.starts_with("currency:") && e.contains("ISO 4217"), "{e}");
        let e = error(&format!(
            "{head}[[versions]]\neffective_from = \"2026-10-01T00:00:00Z\"\n"
        ));
        assert!(e.contains("versions[1]: overlaps versions[0]"), "{e}");
        let e = error(&format!(
            "{head}[[versions.rules]]\nmeter = \"instance\"\ncharge = {{ type = \"graduated\", tiers = [{{ up_to = \"100\", unit_price = \"1\" }}, {{ up_to = \"50\", unit_price = \"1\" }}, {{ unit_price = \"1\" }}] }}\n"
        ));
        assert!(e.starts_with("versions[0].rules[0].charge: tier 1"), "{e}");
        let e = error(&format!(
            "{head}[[versions.rules]]\nmeter = \"instance\"\ncharge = {{ type = \"graduated\", tiers = [{{ up_to = \"-5\", unit_price = \"1\" }}, {{ unit_price = \"1\" }}] }}\n"
        ));
        assert!(e.contains("tier 0"), "{e}");
        let e = error(&format!(
            "{head}[[versions.rules]]\nmeter = \"gpu\"\ncharge = {{ type = \"flat\", amount = \"1\" }}\n"
        ));
        assert!(
            e.starts_with("versions[0].rules[0].meter: unknown meter 'gpu'"),
            "{e}"
        );
        let e = error(&format!(
            "{head}[[versions.rules]]\nmeter = \"instance\"\ncharge = {{ type = \"per_unit\", unit_price = 0.1 }}\n"
        ));
        assert!(e.contains("not exact: write it as a string"), "{e}");
        let e = error(&format!(
            "{head}[[versions.rules]]\nmeter = \"instance\"\ncharge = {{ type = \"hourly\", amount = \"1\" }}\n"
        ));
        assert!(e.contains("unknown variant `hourly`"), "{e}");
    }
}
