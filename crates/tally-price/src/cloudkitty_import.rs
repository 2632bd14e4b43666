//! Reading a CloudKitty hashmap configuration: the JSON object
//! `{"services": [...], "fields": [...], "groups": [...], "mappings": [...],
//! "thresholds": [...]}`, each list as CloudKitty's v1 API lists it.
//!
//! Audit keys on mappings and thresholds (`created_at`, `name`,
//! `description`, `created_by`, `updated_by`, `deleted_by`) are ignored;
//! `start` and `end` bound a rule's validity; a rule with `deleted` set is
//! dropped. Costs and levels may be decimal strings or JSON numbers; numbers
//! are read from their JSON text, never through arithmetic on a float.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;
use tally_core::cloudkitty::{CostType, DEFAULT_GROUP, HashmapRules, Mapping, Threshold, Validity};

use crate::PlanError;

#[derive(Deserialize)]
struct Listing {
    #[serde(default)]
    services: Vec<Value>,
    #[serde(default)]
    fields: Vec<Value>,
    #[serde(default)]
    groups: Vec<Value>,
    #[serde(default)]
    mappings: Vec<Value>,
    #[serde(default)]
    thresholds: Vec<Value>,
}

fn invalid(path: String, message: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        path,
        message: message.into(),
    }
}

fn text<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn required<'a>(obj: &'a Value, key: &str, path: &str) -> Result<&'a str, PlanError> {
    text(obj, key).ok_or_else(|| invalid(format!("{path}.{key}"), format!("'{key}' is required")))
}

fn decimal(obj: &Value, key: &str, path: &str) -> Result<Decimal, PlanError> {
    let bad = || {
        invalid(
            format!("{path}.{key}"),
            format!("'{key}' must be a decimal string or a number"),
        )
    };
    let raw = match obj.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(bad()),
    };
    raw.parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&raw))
        .map_err(|_| bad())
}

fn instant(obj: &Value, key: &str, path: &str) -> Result<Option<DateTime<Utc>>, PlanError> {
    let Some(s) = text(obj, key) else {
        return Ok(None);
    };
    // CloudKitty writes naive UTC ("2026-10-01T00:00:00") or RFC 3339.
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|n| n.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc()))
        .map(Some)
        .map_err(|_| {
            invalid(
                format!("{path}.{key}"),
                format!("'{s}' is not a date and time"),
            )
        })
}

fn cost_type(obj: &Value, path: &str) -> Result<CostType, PlanError> {
    match text(obj, "type") {
        Some("flat") => Ok(CostType::Flat),
        Some("rate") => Ok(CostType::Rate),
        other => Err(invalid(
            format!("{path}.type"),
            format!("unknown type {other:?}: use \"flat\" or \"rate\""),
        )),
    }
}

/// The hashmap rules of every service in a CloudKitty listing, by service
/// name (which is the meter name in Tally).
pub fn import_cloudkitty(json: &str) -> Result<BTreeMap<String, HashmapRules>, PlanError> {
    let listing: Listing = serde_json::from_str(json).map_err(|e| {
        PlanError::Syntax(format!(
            "not a CloudKitty hashmap listing ({e}): expected one JSON object with services, fields, groups, mappings and thresholds"
        ))
    })?;
    let mut services: BTreeMap<String, String> = BTreeMap::new(); // id -> name
    for (i, s) in listing.services.iter().enumerate() {
        let path = format!("services[{i}]");
        services.insert(
            required(s, "service_id", &path)?.into(),
            required(s, "name", &path)?.into(),
        );
    }
    let mut fields: BTreeMap<String, (String, String)> = BTreeMap::new(); // id -> (service name, field name)
    for (i, f) in listing.fields.iter().enumerate() {
        let path = format!("fields[{i}]");
        let service_id = required(f, "service_id", &path)?;
        let service = services.get(service_id).ok_or_else(|| {
            invalid(
                format!("{path}.service_id"),
                format!("no service has id '{service_id}'"),
            )
        })?;
        fields.insert(
            required(f, "field_id", &path)?.into(),
            (service.clone(), required(f, "name", &path)?.into()),
        );
    }
    let mut groups: BTreeMap<String, String> = BTreeMap::new();
    for (i, g) in listing.groups.iter().enumerate() {
        let path = format!("groups[{i}]");
        groups.insert(
            required(g, "group_id", &path)?.into(),
            required(g, "name", &path)?.into(),
        );
    }

    // Where a rule belongs: (service name, field name if any, group name).
    let locate = |obj: &Value, path: &str| -> Result<(String, Option<String>, String), PlanError> {
        let group = match text(obj, "group_id") {
            None => DEFAULT_GROUP.to_string(),
            Some(id) => groups.get(id).cloned().ok_or_else(|| {
                invalid(
                    format!("{path}.group_id"),
                    format!("no group has id '{id}'"),
                )
            })?,
        };
        match (text(obj, "service_id"), text(obj, "field_id")) {
            (Some(_), Some(_)) => Err(invalid(
                path.to_string(),
                "has both service_id and field_id: a rule belongs to a service or to one of its fields, not both",
            )),
            (None, None) => Err(invalid(
                path.to_string(),
                "needs a service_id or a field_id",
            )),
            (Some(sid), None) => {
                let s = services.get(sid).ok_or_else(|| {
                    invalid(
                        format!("{path}.service_id"),
                        format!("no service has id '{sid}'"),
                    )
                })?;
                Ok((s.clone(), None, group))
            }
            (None, Some(fid)) => {
                let (s, f) = fields.get(fid).ok_or_else(|| {
                    invalid(
                        format!("{path}.field_id"),
                        format!("no field has id '{fid}'"),
                    )
                })?;
                Ok((s.clone(), Some(f.clone()), group))
            }
        }
    };
    let deleted = |obj: &Value| {
        obj.get("deleted")
            .is_some_and(|d| !d.is_null() && d != &Value::Bool(false))
    };
    let validity = |obj: &Value, path: &str| -> Result<Validity, PlanError> {
        Ok(Validity {
            start: instant(obj, "start", path)?,
            end: instant(obj, "end", path)?,
        })
    };

    let mut out: BTreeMap<String, HashmapRules> = services
        .values()
        .map(|s| (s.clone(), HashmapRules::default()))
        .collect();
    for (i, m) in listing.mappings.iter().enumerate() {
        let path = format!("mappings[{i}]");
        let (service, field, group) = locate(m, &path)?;
        let value = text(m, "value").map(str::to_string);
        if field.is_some() && value.is_none() {
            return Err(invalid(
                format!("{path}.value"),
                "a field mapping needs the value it matches",
            ));
        }
        if field.is_none() && value.is_some() {
            return Err(invalid(
                format!("{path}.value"),
                "a service mapping has no value: remove it or give a field_id",
            ));
        }
        let mapping = Mapping {
            id: required(m, "mapping_id", &path)?.into(),
            field,
            value,
            cost_type: cost_type(m, &path)?,
            cost: decimal(m, "cost", &path)?,
            group,
            project: text(m, "tenant_id").map(str::to_string),
            valid: validity(m, &path)?,
        };
        if !deleted(m) {
            out.entry(service).or_default().mappings.push(mapping);
        }
    }
    for (i, t) in listing.thresholds.iter().enumerate() {
        let path = format!("thresholds[{i}]");
        let (service, field, group) = locate(t, &path)?;
        let threshold = Threshold {
            id: required(t, "threshold_id", &path)?.into(),
            field,
            level: decimal(t, "level", &path)?,
            cost_type: cost_type(t, &path)?,
            cost: decimal(t, "cost", &path)?,
            group,
            project: text(t, "tenant_id").map(str::to_string),
            valid: validity(t, &path)?,
        };
        if !deleted(t) {
            out.entry(service).or_default().thresholds.push(threshold);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::Attributes;

    const LISTING: &str = r#"{
      "services": [{"service_id": "s-inst", "name": "instance"}, {"service_id": "s-vol", "name": "volume.size"}],
      "fields": [{"field_id": "f-flavor", "service_id": "s-inst", "name": "flavor_name"}],
      "groups": [{"group_id": "g1", "name": "instance_uptime_flavor"}, {"group_id": "g-def", "name": "_DEFAULT_"}],
      "mappings": [
        {"mapping_id": "m1", "value": "m1.small", "type": "flat", "cost": "0.05", "service_id": null, "field_id": "f-flavor", "group_id": "g1", "tenant_id": null,
         "created_at": "2025-01-01T00:00:00", "name": "small", "description": "", "deleted": null, "created_by": "admin", "updated_by": null, "deleted_by": null},
        {"mapping_id": "m2", "value": "m1.large", "type": "flat", "cost": 0.2, "field_id": "f-flavor", "group_id": "g1"},
        {"mapping_id": "m3", "value": "m1.tiny", "type": "flat", "cost": "9", "field_id": "f-flavor", "group_id": "g1", "deleted": "2025-06-01T00:00:00"},
        {"mapping_id": "m4", "type": "flat", "cost": "0.0001", "service_id": "s-vol", "group_id": "g-def",
         "start": "2026-10-01T00:00:00", "end": "2026-11-01T00:00:00"}
      ],
      "thresholds": [
        {"threshold_id": "t1", "level": "100", "type": "rate", "cost": "0.5", "service_id": "s-vol"}
      ]
    }"#;

    fn at(m: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-{m:02}-15T00:00:00Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_listing_becomes_rules_per_meter() {
        let rules = import_cloudkitty(LISTING).unwrap();
        let inst = &rules["instance"];
        assert_eq!(inst.mappings.len(), 2, "the deleted mapping is dropped");
        assert_eq!(inst.mappings[1].cost, "0.2".parse::<Decimal>().unwrap());
        let mut a = Attributes::new();
        a.insert(
            "flavor_name".into(),
            tally_core::AttributeValue::String("m1.small".into()),
        );
        assert_eq!(
            inst.price("p", at(10), "10".parse().unwrap(), &a)
                .unwrap()
                .price,
            "0.50".parse().unwrap()
        );
        // The volume mapping (implicit group via a group named _DEFAULT_) is
        // valid in October only; the threshold halves the price from 100 GiB.
        let vol = &rules["volume.size"];
        assert_eq!(vol.mappings[0].group, DEFAULT_GROUP);
        let none = Attributes::new();
        assert_eq!(
            vol.price("p", at(10), "200".parse().unwrap(), &none)
                .unwrap()
                .price,
            "0.01".parse().unwrap()
        );
        assert_eq!(
            vol.price("p", at(11), "200".parse().unwrap(), &none)
                .unwrap()
                .price,
            Decimal::ZERO
        );
    }

    fn error(listing: &str) -> String {
        import_cloudkitty(listing).unwrap_err().to_string()
    }

    #[test]
    fn bad_listings_name_the_rule_and_the_fix() {
        let base = r#""services": [{"service_id": "s", "name": "instance"}], "fields": [{"field_id": "f", "service_id": "s", "name": "flavor"}]"#;
        let e = error(&format!(
            r#"{{{base}, "mappings": [{{"mapping_id": "m", "type": "flat", "cost": "1", "service_id": "s", "field_id": "f", "value": "x"}}]}}"#
        ));
        assert!(
            e.starts_with("mappings[0]: has both service_id and field_id"),
            "{e}"
        );
        let e = error(&format!(
            r#"{{{base}, "mappings": [{{"mapping_id": "m", "type": "flat", "cost": "1", "field_id": "f"}}]}}"#
        ));
        assert!(
            e.starts_with("mappings[0].value: a field mapping needs"),
            "{e}"
        );
        let e = error(&format!(
            r#"{{{base}, "mappings": [{{"mapping_id": "m", "type": "percent", "cost": "1", "service_id": "s"}}]}}"#
        ));
        assert!(e.starts_with("mappings[0].type: unknown type"), "{e}");
        let e = error(&format!(
            r#"{{{base}, "thresholds": [{{"threshold_id": "t", "type": "flat", "cost": "x", "level": "1", "service_id": "s"}}]}}"#
        ));
        assert!(e.starts_with("thresholds[0].cost"), "{e}");
        let e = error(&format!(
            r#"{{{base}, "mappings": [{{"mapping_id": "m", "type": "flat", "cost": "1", "field_id": "nope", "value": "v"}}]}}"#
        ));
        assert!(e.contains("no field has id 'nope'"), "{e}");
        assert!(error("[1,2]").contains("not a CloudKitty hashmap listing"));
    }
}
