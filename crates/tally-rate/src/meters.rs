//! Meter definitions: which records a rated meter takes, how their volumes
//! convert, and how they aggregate per resource and rating period.
//!
//! Definitions are TOML (`docs/meters.md`); Tally ships a default OpenStack
//! set ([`MeterSet::openstack_default`]). The conversion and mutation are
//! `tally_core::metering`'s, applied to each record before aggregation.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_core::MeterKind;
use tally_core::metering::{Conversion, Mutate};

/// The default OpenStack meter set, as shipped.
pub const OPENSTACK_DEFAULT: &str = include_str!("../meters/openstack.toml");

/// A definition file that cannot be used, with where and what to fix.
pub type MeterError = tally_core::DocumentError;

/// How the converted quantities of one resource's records in one rating
/// period become one quantity.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Aggregation {
    /// Sum of quantities.
    Sum,
    /// Number of records.
    Count,
    /// Smallest quantity.
    Min,
    /// Largest quantity.
    Max,
    /// Mean quantity.
    Avg,
    /// Quantity of the record with the greatest time.
    Latest,
    /// Number of distinct values of an attribute.
    UniqueCount {
        /// The attribute counted.
        attribute: String,
    },
    /// A gauge integrated over time, in quantity-hours; the last value is
    /// carried across periods until a new value or the resource's deletion.
    TimeWeighted,
    /// Hours spent in billable states, from lifecycle records.
    StateDuration {
        /// The attribute holding the state (`status`).
        state_attribute: String,
        /// States that are billed.
        billable_states: BTreeSet<String>,
        /// The attribute the hours are split by (`flavor_name`), if any.
        #[serde(default)]
        split_by: Option<String>,
    },
}

impl Aggregation {
    /// The aggregation's name as definition files write it.
    pub fn name(&self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Count => "count",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
            Aggregation::Avg => "avg",
            Aggregation::Latest => "latest",
            Aggregation::UniqueCount { .. } => "unique_count",
            Aggregation::TimeWeighted => "time_weighted",
            Aggregation::StateDuration { .. } => "state_duration",
        }
    }
}

/// A meter definition as listed to people and programs (`tally meters`,
/// `GET /v1/meters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeterSummary {
    /// The rated meter.
    pub name: String,
    /// Its unit.
    pub unit: String,
    /// The raw meter it takes records from.
    pub records: String,
    /// The aggregation's name.
    pub aggregation: &'static str,
    /// Group-by attributes.
    pub group_by: Vec<String>,
    /// A sentence for people.
    pub description: String,
}

/// Which raw records a meter takes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSelector {
    /// The raw records' meter name (`volume.size`).
    pub meter: String,
    /// Only records of this kind, when set.
    #[serde(default)]
    pub kind: Option<MeterKind>,
    /// Attribute values the records must have (compared as text).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeterFile {
    name: String,
    #[serde(default)]
    description: String,
    unit: String,
    records: RecordSelector,
    aggregation: Aggregation,
    #[serde(default)]
    group_by: Vec<String>,
    #[serde(default = "one")]
    factor: String,
    #[serde(default)]
    offset: String,
    #[serde(default)]
    mutate: MutateFile,
}

fn one() -> String {
    "1".into()
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum MutateFile {
    #[default]
    Absent,
    Name(String),
    Map {
        #[serde(rename = "MAP")]
        map: BTreeMap<String, String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    #[serde(default)]
    meters: Vec<MeterFile>,
}

/// One rated meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterDefinition {
    /// The rated meter's name, which price plans refer to.
    pub name: String,
    /// A sentence for people.
    pub description: String,
    /// The unit of the aggregated quantity.
    pub unit: String,
    /// Which records it takes.
    pub records: RecordSelector,
    /// How they aggregate.
    pub aggregation: Aggregation,
    /// Attributes that split lines (besides project, resource and period).
    pub group_by: Vec<String>,
    /// Raw volume → quantity, before aggregation.
    pub conversion: Conversion,
    /// Applied after the conversion.
    pub mutate: Mutate,
}

/// A validated set of meter definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterSet {
    /// Definitions in file order.
    pub meters: Vec<MeterDefinition>,
}

impl MeterSet {
    /// Parses and validates a definition file.
    pub fn from_toml(text: &str) -> Result<MeterSet, MeterError> {
        let file: SetFile = toml::from_str(text).map_err(|e| MeterError::Syntax(e.to_string()))?;
        let invalid = |path: String, message: String| MeterError::Invalid { path, message };
        let mut names = BTreeSet::new();
        let mut meters = Vec::new();
        for (i, m) in file.meters.into_iter().enumerate() {
            let path = format!("meters[{i}]");
            if m.name.trim().is_empty() {
                return Err(invalid(
                    format!("{path}.name"),
                    "a meter needs a name".into(),
                ));
            }
            if !names.insert(m.name.clone()) {
                return Err(invalid(
                    format!("{path}.name"),
                    format!("meter '{}' is defined twice: names are unique", m.name),
                ));
            }
            let offset = if m.offset.trim().is_empty() {
                Decimal::ZERO
            } else {
                m.offset.trim().parse().map_err(|_| {
                    invalid(
                        format!("{path}.offset"),
                        format!("'{}' is not a decimal", m.offset),
                    )
                })?
            };
            let conversion = Conversion::parse(&m.factor, offset)
                .map_err(|e| invalid(format!("{path}.factor"), e.to_string()))?;
            let mutate = match m.mutate {
                MutateFile::Absent => Mutate::None,
                MutateFile::Name(n) => match n.as_str() {
                    "NONE" => Mutate::None,
                    "NUMBOOL" => Mutate::Numbool,
                    "NOTNUMBOOL" => Mutate::Notnumbool,
                    "FLOOR" => Mutate::Floor,
                    "CEIL" => Mutate::Ceil,
                    other => {
                        return Err(invalid(
                            format!("{path}.mutate"),
                            format!(
                                "unknown mutate '{other}': use NONE, NUMBOOL, NOTNUMBOOL, FLOOR, CEIL or {{ MAP = {{ ... }} }}"
                            ),
                        ));
                    }
                },
                MutateFile::Map { map } => {
                    let mut out = BTreeMap::new();
                    for (k, v) in map {
                        let d: Decimal = v.trim().parse().map_err(|_| {
                            invalid(
                                format!("{path}.mutate.MAP.{k}"),
                                format!("'{v}' is not a decimal"),
                            )
                        })?;
                        out.insert(k, d);
                    }
                    Mutate::Map(out)
                }
            };
            if let Aggregation::StateDuration {
                billable_states, ..
            } = &m.aggregation
                && billable_states.is_empty()
            {
                return Err(invalid(
                    format!("{path}.aggregation.billable_states"),
                    "list the states that are billed, such as [\"active\"]".into(),
                ));
            }
            meters.push(MeterDefinition {
                name: m.name,
                description: m.description,
                unit: m.unit,
                records: m.records,
                aggregation: m.aggregation,
                group_by: m.group_by,
                conversion,
                mutate,
            });
        }
        Ok(MeterSet { meters })
    }

    /// The default OpenStack meter set.
    pub fn openstack_default() -> MeterSet {
        MeterSet::from_toml(OPENSTACK_DEFAULT).expect("the shipped meter set is valid")
    }

    /// The definition named `name`.
    pub fn get(&self, name: &str) -> Option<&MeterDefinition> {
        self.meters.iter().find(|m| m.name == name)
    }

    /// One summary per definition, in file order.
    pub fn summaries(&self) -> Vec<MeterSummary> {
        self.meters
            .iter()
            .map(|m| MeterSummary {
                name: m.name.clone(),
                unit: m.unit.clone(),
                records: m.records.meter.clone(),
                aggregation: m.aggregation.name(),
                group_by: m.group_by.clone(),
                description: m.description.clone(),
            })
            .collect()
    }

    /// The names of all rated meters (for checking price plans).
    pub fn names(&self) -> Vec<&str> {
        self.meters.iter().map(|m| m.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_openstack_set_loads_and_converts_units() {
        let set = MeterSet::openstack_default();
        for name in [
            "instance.hours",
            "vcpu.hours",
            "ram.gib_hours",
            "disk.root.gib_hours",
            "volume.gib_hours",
            "snapshot.gib_hours",
            "image.gib_hours",
            "floating_ip.hours",
            "network.egress.gb",
            "object_storage.gib_hours",
        ] {
            assert!(set.get(name).is_some(), "missing {name}");
        }
        let ram = set.get("ram.gib_hours").unwrap();
        assert_eq!(ram.conversion.apply(d("4096")).unwrap(), d("4"));
        let image = set.get("image.gib_hours").unwrap();
        assert_eq!(image.conversion.apply(d("1073741824")).unwrap(), d("1"));
        let egress = set.get("network.egress.gb").unwrap();
        assert_eq!(egress.conversion.apply(d("2500000000")).unwrap(), d("2.5"));
        assert_eq!(egress.aggregation, Aggregation::Sum);
        // Floating IPs are billed by existence: any status code counts as 1.
        let fip = set.get("floating_ip.hours").unwrap();
        assert_eq!(fip.conversion.apply(d("7")).unwrap(), d("1"));
        let inst = set.get("instance.hours").unwrap();
        assert!(
            matches!(&inst.aggregation, Aggregation::StateDuration { split_by: Some(s), .. } if s == "flavor_name")
        );
        assert_eq!(
            set.get("volume.gib_hours").unwrap().group_by,
            ["volume_type"]
        );
    }

    #[test]
    fn mutate_forms_parse() {
        let set = MeterSet::from_toml(
            r#"
[[meters]]
name = "a"
unit = "x"
records = { meter = "a" }
aggregation = { type = "max" }
mutate = "CEIL"

[[meters]]
name = "b"
unit = "x"
records = { meter = "b", kind = "gauge", attributes = { status = "active" } }
aggregation = { type = "unique_count", attribute = "user" }
mutate = { MAP = { "1" = "1", "2" = "0.5" } }
"#,
        )
        .unwrap();
        assert_eq!(set.meters[0].mutate, Mutate::Ceil);
        assert_eq!(set.meters[1].mutate.apply(d("2")), d("0.5"));
        assert_eq!(set.meters[1].records.kind, Some(MeterKind::Gauge));
    }

    fn error(text: &str) -> String {
        MeterSet::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_definitions_name_the_place_and_the_fix() {
        let m = |extra: &str| {
            format!(
                "[[meters]]\nname = \"a\"\nunit = \"x\"\nrecords = {{ meter = \"a\" }}\n{extra}\n"
            )
        };
        let e = error(&m("aggregation = { type = \"sum\" }\ncolour = 1"));
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = error(&m("aggregation = { type = \"median\" }"));
        assert!(e.contains("unknown variant `median`"), "{e}");
        let e = error(&m("aggregation = { type = \"sum\" }\nfactor = \"1/0\""));
        assert!(
            e.starts_with("meters[0].factor: factor '1/0' divides by zero"),
            "{e}"
        );
        let e = error(&m("aggregation = { type = \"sum\" }\nmutate = \"ROUND\""));
        assert!(
            e.starts_with("meters[0].mutate: unknown mutate 'ROUND'"),
            "{e}"
        );
        let e = error(&m(
            "aggregation = { type = \"state_duration\", state_attribute = \"status\", billable_states = [] }",
        ));
        assert!(
            e.starts_with("meters[0].aggregation.billable_states"),
            "{e}"
        );
        let twice = format!(
            "{}{}",
            m("aggregation = { type = \"sum\" }"),
            m("aggregation = { type = \"sum\" }")
        );
        assert!(error(&twice).contains("defined twice"));
    }
}
