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

/// Separates the parts of a line id.
const LINE_ID_SEPARATOR: char = '~';

/// The id of the rated line(s) of `project_id`'s `resource_id` and `meter`
/// whose period starts at `period_start`:
/// `PROJECT~RESOURCE~METER~YYYYMMDDTHHMMSSZ`, readable and safe in a URL
/// query or a shell. A `~`, `%` or character outside printable ASCII in a
/// part is percent-encoded (UTF-8), so any id splits back exactly.
///
/// It names coordinates, not a stored row: the same id names the current
/// line at those coordinates after a re-rating, and lines that differ only
/// by group values (two flavors in the hour of a resize) share it.
pub fn line_id(
    project_id: &str,
    resource_id: &str,
    meter: &str,
    period_start: DateTime<Utc>,
) -> String {
    let mut id = String::new();
    for part in [project_id, resource_id, meter] {
        for b in part.bytes() {
            if b == b'~' || b == b'%' || !(0x21..0x7f).contains(&b) {
                id.push_str(&format!("%{b:02X}"));
            } else {
                id.push(b as char);
            }
        }
        id.push(LINE_ID_SEPARATOR);
    }
    id.push_str(&period_start.format("%Y%m%dT%H%M%SZ").to_string());
    id
}

/// The coordinates a [`line_id`] names: project, resource, meter and
/// period start. The error says what is wrong with the text.
pub fn parse_line_id(text: &str) -> Result<(String, String, String, DateTime<Utc>), String> {
    let parts: Vec<&str> = text.trim().split(LINE_ID_SEPARATOR).collect();
    let [project, resource, meter, start] = parts[..] else {
        return Err(format!(
            "'{text}' is not a line id: expected PROJECT~RESOURCE~METER~YYYYMMDDTHHMMSSZ \
             (list lines with `tally lines` or GET /v1/rated-lines)"
        ));
    };
    let decode = |part: &str| -> Result<String, String> {
        let bytes = part.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = part
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        format!(
                            "'{part}' in line id '{text}' has a '%' not followed by two hex digits"
                        )
                    })?;
                out.push(hex);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out)
            .map_err(|_| format!("'{part}' in line id '{text}' does not decode to UTF-8"))
    };
    let start = chrono::NaiveDateTime::parse_from_str(start, "%Y%m%dT%H%M%SZ")
        .map_err(|e| {
            format!(
                "'{start}' in line id '{text}' is not a period start such as 20261005T100000Z ({e})"
            )
        })?
        .and_utc();
    Ok((decode(project)?, decode(resource)?, decode(meter)?, start))
}

impl RatedLine {
    /// This line's [`line_id`].
    pub fn line_id(&self) -> String {
        line_id(
            &self.project_id,
            &self.resource_id,
            &self.meter,
            self.period_start,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_line_id_reads_back_whatever_its_parts_hold() {
        let start = Utc.with_ymd_and_hms(2026, 10, 5, 10, 0, 0).unwrap();
        let id = line_id("p-1", "vm-a", "instance.hours", start);
        assert_eq!(id, "p-1~vm-a~instance.hours~20261005T100000Z");
        assert_eq!(
            parse_line_id(&id).unwrap(),
            ("p-1".into(), "vm-a".into(), "instance.hours".into(), start)
        );
        let odd = ("a~b%c", "vol 1/ü", "m~");
        let id = line_id(odd.0, odd.1, odd.2, start);
        assert_eq!(id.matches('~').count(), 3, "{id}");
        assert!(id.is_ascii() && !id.contains(' '), "{id}");
        let (p, r, m, s) = parse_line_id(&id).unwrap();
        assert_eq!(
            (p.as_str(), r.as_str(), m.as_str(), s),
            (odd.0, odd.1, odd.2, start)
        );
    }

    #[test]
    fn a_bad_line_id_says_what_is_wrong() {
        assert!(
            parse_line_id("p~r~m")
                .unwrap_err()
                .contains("PROJECT~RESOURCE~METER")
        );
        assert!(
            parse_line_id("p~r~m~yesterday")
                .unwrap_err()
                .contains("'yesterday'")
        );
        assert!(
            parse_line_id("p%G1~r~m~20261005T100000Z")
                .unwrap_err()
                .contains("two hex digits")
        );
        assert!(
            parse_line_id("p%FF~r~m~20261005T100000Z")
                .unwrap_err()
                .contains("UTF-8")
        );
    }
}
