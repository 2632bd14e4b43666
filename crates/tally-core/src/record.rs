//! The usage record: one raw measurement of one resource, as a producer sent it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// How a record's `volume` relates to earlier records of the same resource
/// and meter. The names and meanings follow Ceilometer's counter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MeterKind {
    /// A level at an instant (a volume's size, an instance existing).
    Gauge,
    /// An amount used since the previous record (bytes sent in a minute).
    Delta,
    /// A running total that only grows until its counter resets.
    Cumulative,
}

impl MeterKind {
    /// The lowercase name used on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            MeterKind::Gauge => "gauge",
            MeterKind::Delta => "delta",
            MeterKind::Cumulative => "cumulative",
        }
    }
}

impl fmt::Display for MeterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown meter kind name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind '{0}': use one of gauge, delta, cumulative")]
pub struct UnknownMeterKind(pub String);

impl FromStr for MeterKind {
    type Err = UnknownMeterKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gauge" => Ok(MeterKind::Gauge),
            "delta" => Ok(MeterKind::Delta),
            "cumulative" => Ok(MeterKind::Cumulative),
            other => Err(UnknownMeterKind(other.to_string())),
        }
    }
}

/// One attribute value, kept with the JSON type it arrived with.
///
/// `8`, `"8"` and `8.0` are three different values: CloudKitty-style rules
/// compare attributes by their rendering, and a price that silently changed
/// because a producer switched from integer to float would be a billing bug.
/// That is why numbers keep `serde_json::Number` (integer or float as sent)
/// rather than being coerced to one numeric type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AttributeValue {
    /// JSON `null`.
    Null,
    /// JSON `true` / `false`.
    Bool(bool),
    /// A JSON number, integer or float as it was sent.
    Number(serde_json::Number),
    /// A JSON string.
    String(String),
}

/// Deserialized by hand rather than with `#[serde(untagged)]`, which
/// buffers every value before trying each variant: attributes are read for
/// every record on every ingest and scan.
impl<'de> Deserialize<'de> for AttributeValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl<'de> serde::de::Visitor<'de> for Scalar {
            type Value = AttributeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean or null")
            }
            fn visit_unit<E>(self) -> Result<AttributeValue, E> {
                Ok(AttributeValue::Null)
            }
            fn visit_none<E>(self) -> Result<AttributeValue, E> {
                Ok(AttributeValue::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<AttributeValue, E> {
                Ok(AttributeValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<AttributeValue, E> {
                Ok(AttributeValue::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<AttributeValue, E> {
                Ok(AttributeValue::Number(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<AttributeValue, E> {
                serde_json::Number::from_f64(v)
                    .map(AttributeValue::Number)
                    .ok_or_else(|| E::custom("attribute numbers must be finite"))
            }
            fn visit_str<E>(self, v: &str) -> Result<AttributeValue, E> {
                Ok(AttributeValue::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<AttributeValue, E> {
                Ok(AttributeValue::String(v))
            }
        }
        d.deserialize_any(Scalar)
    }
}

impl AttributeValue {
    /// Converts a JSON value into an attribute value; arrays and objects are
    /// not scalars and are refused (the caller names the attribute).
    pub fn from_json(value: serde_json::Value) -> Option<AttributeValue> {
        match value {
            serde_json::Value::Null => Some(AttributeValue::Null),
            serde_json::Value::Bool(b) => Some(AttributeValue::Bool(b)),
            serde_json::Value::Number(n) => Some(AttributeValue::Number(n)),
            serde_json::Value::String(s) => Some(AttributeValue::String(s)),
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
        }
    }

    /// The value as plain text, the way meter selectors, group-by keys and
    /// price-plan matches compare it: strings as they are, numbers as sent
    /// (`8`, `2.0`), booleans `true`/`false`, null `null`.
    pub fn text(&self) -> String {
        match self {
            AttributeValue::String(s) => s.clone(),
            AttributeValue::Number(n) => n.to_string(),
            AttributeValue::Bool(b) => b.to_string(),
            AttributeValue::Null => "null".into(),
        }
    }

    /// The value as a string if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttributeValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A record's attributes, ordered by name so that their serialized form is
/// deterministic (rating must give the same lines from the same data).
pub type Attributes = BTreeMap<String, AttributeValue>;

/// One raw usage record: the unit of raw billing data Tally keeps forever.
///
/// A record is identified by ([`UsageRecord::source`], [`UsageRecord::id`]);
/// the pair is the idempotency key that makes redelivery harmless.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// The producer's id for this record, unique within `source`.
    pub id: String,
    /// Who produced the record (a CloudEvents `source`, a publisher id).
    pub source: String,
    /// When the measured usage happened (event time), in UTC.
    pub time: DateTime<Utc>,
    /// When Tally received the record, in UTC.
    pub received_at: DateTime<Utc>,
    /// The Keystone project that owns the resource and pays for it.
    pub project_id: String,
    /// The Keystone user, when the producer names one.
    pub user_id: Option<String>,
    /// The Keystone domain, when the producer names one.
    pub domain_id: Option<String>,
    /// The measured resource (instance, volume, floating IP, ...).
    pub resource_id: String,
    /// The meter name, e.g. `volume.size` or `instance`.
    pub meter: String,
    /// How `volume` relates to earlier records.
    pub kind: MeterKind,
    /// The measured amount, exact.
    pub volume: Decimal,
    /// The unit of `volume` as the producer named it (`GiB`, `B`, `instance`).
    pub unit: Option<String>,
    /// Scalar attributes such as flavor, volume type, region, status.
    pub attributes: Attributes,
    /// The bytes of the record exactly as received, kept so that every
    /// invoice line can be explained down to what the cloud said.
    pub payload: Bytes,
}

impl UsageRecord {
    /// The record's idempotency key.
    pub fn key(&self) -> RecordKey<'_> {
        RecordKey {
            source: &self.source,
            id: &self.id,
        }
    }

    /// The attributes as one deterministic JSON object.
    pub fn attributes_json(&self) -> String {
        serde_json::to_string(&self.attributes).expect("attribute values are always serializable")
    }
}

/// The (source, id) pair that identifies a record across deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey<'a> {
    /// The producer.
    pub source: &'a str,
    /// The producer's id.
    pub id: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_keep_their_json_type() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":8,"b":"8","c":8.0}"#).unwrap();
        let attrs: Attributes = a
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), AttributeValue::from_json(v.clone()).unwrap()))
            .collect();
        assert_ne!(attrs["a"], attrs["b"]);
        assert_ne!(attrs["a"], attrs["c"]);
        assert_ne!(attrs["b"], attrs["c"]);
        assert_eq!(
            serde_json::to_string(&attrs).unwrap(),
            r#"{"a":8,"b":"8","c":8.0}"#
        );
    }

    #[test]
    fn attributes_deserialize_as_scalars_of_their_own_type() {
        let a: Attributes =
            serde_json::from_str(r#"{"a":8,"b":"8","c":8.0,"d":null,"e":true,"f":-3}"#).unwrap();
        assert_eq!(a["a"], AttributeValue::Number(8u64.into()));
        assert_eq!(a["b"], AttributeValue::String("8".into()));
        assert_eq!(a["d"], AttributeValue::Null);
        assert_eq!(a["e"], AttributeValue::Bool(true));
        assert_eq!(a["f"], AttributeValue::Number((-3i64).into()));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"a":8,"b":"8","c":8.0,"d":null,"e":true,"f":-3}"#
        );
        assert!(serde_json::from_str::<Attributes>(r#"{"x":[1]}"#).is_err());
        assert!(serde_json::from_str::<Attributes>(r#"{"x":{"y":1}}"#).is_err());
    }

    #[test]
    fn arrays_and_objects_are_not_attributes() {
        assert!(AttributeValue::from_json(serde_json::json!([1])).is_none());
        assert!(AttributeValue::from_json(serde_json::json!({"x": 1})).is_none());
    }

    #[test]
    fn kind_round_trips_and_names_the_choices_on_error() {
        for k in [MeterKind::Gauge, MeterKind::Delta, MeterKind::Cumulative] {
            assert_eq!(k.as_str().parse::<MeterKind>().unwrap(), k);
        }
        let err = "rate".parse::<MeterKind>().unwrap_err();
        assert!(err.to_string().contains("gauge, delta, cumulative"));
    }
}
