//! CloudEvents 1.0 structured JSON → usage records.
//!
//! Mapping (see README "Sending usage"): `id` and `source` are the record's
//! idempotency key, `type` is the meter, `subject` the resource, `time` the
//! event time (RFC 3339 with an offset), and `data` carries `project_id`,
//! `volume` and the optional rest.
//!
//! Every field is first read as raw JSON and then checked on its own, so an
//! error can name the field and say what it expected.

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use tally_core::{
    AttributeValue, Attributes, MeterKind, RejectCode, UsageRecord, parse_volume_text,
};

use crate::decoder::{Decoder, ElementError};

/// Longest identifier (id, source, project, resource, meter, unit) stored.
pub const MAX_ID_LEN: usize = 255;
/// Longest attribute string value stored.
pub const MAX_ATTRIBUTE_LEN: usize = 4096;

/// Decodes CloudEvents 1.0 structured-mode JSON events.
#[derive(Debug, Default, Clone, Copy)]
pub struct CloudEventsDecoder;

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    specversion: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow)]
    subject: Option<&'a RawValue>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(borrow)]
    datacontenttype: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireData<'a> {
    #[serde(borrow)]
    project_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    domain_id: Option<&'a RawValue>,
    #[serde(borrow)]
    volume: Option<&'a RawValue>,
    #[serde(borrow)]
    unit: Option<&'a RawValue>,
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    attributes: Option<&'a RawValue>,
}

fn json_type_name(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn err(code: RejectCode, message: impl Into<String>) -> ElementError {
    ElementError::new(code, message)
}

/// Reads a string field; `None` for an absent or null field.
fn opt_string<'a>(
    raw: Option<&'a RawValue>,
    field: &str,
) -> Result<Option<Cow<'a, str>>, ElementError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    if !raw.get().starts_with('"') {
        return Err(err(
            RejectCode::InvalidField,
            format!(
                "field '{field}' must be a string, got {}",
                json_type_name(raw)
            ),
        ));
    }
    let text = raw.get();
    // Fast path: a string without escapes is its own content (RawValue has
    // already checked it is valid JSON and UTF-8).
    if text.len() >= 2 && !text[1..text.len() - 1].contains(['\\', '"']) {
        return Ok(Some(Cow::Borrowed(&text[1..text.len() - 1])));
    }
    let s: Cow<'a, str> = serde_json::from_str(text).map_err(|e| {
        err(
            RejectCode::InvalidField,
            format!("field '{field}' is not a valid JSON string: {e}"),
        )
    })?;
    Ok(Some(s))
}

/// Reads an identifier: a non-empty string of bounded length.
fn id_field<'a>(
    raw: Option<&'a RawValue>,
    field: &str,
    required: bool,
) -> Result<Option<Cow<'a, str>>, ElementError> {
    let value = opt_string(raw, field)?.filter(|s| !s.is_empty());
    match value {
        None if required => Err(err(
            RejectCode::MissingField,
            format!("required field '{field}' is missing or empty"),
        )),
        Some(s) if s.len() > MAX_ID_LEN => Err(err(
            RejectCode::FieldTooLong,
            format!(
                "field '{field}' is {} bytes long; the limit is {MAX_ID_LEN}",
                s.len()
            ),
        )),
        other => Ok(other),
    }
}

fn parse_time(raw: Option<&RawValue>) -> Result<DateTime<Utc>, ElementError> {
    let Some(text) = opt_string(raw, "time")? else {
        return Err(err(
            RejectCode::MissingField,
            "required field 'time' is missing: give the event time as RFC 3339 with an offset, e.g. 2026-10-01T12:00:00Z",
        ));
    };
    match DateTime::parse_from_rfc3339(&text) {
        // The store keeps microseconds; truncating here keeps a record equal
        // before and after it is flushed.
        Ok(t) => Ok(t.with_timezone(&Utc).trunc_subsecs(6)),
        Err(_) => {
            let naive = NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f"));
            if naive.is_ok() {
                Err(err(
                    RejectCode::InvalidTime,
                    format!(
                        "field 'time' ('{text}') has no UTC offset: add 'Z' or an offset such as '+02:00'"
                    ),
                ))
            } else {
                Err(err(
                    RejectCode::InvalidTime,
                    format!(
                        "field 'time' ('{text}') is not an RFC 3339 timestamp such as 2026-10-01T12:00:00Z"
                    ),
                ))
            }
        }
    }
}

fn parse_volume(raw: Option<&RawValue>) -> Result<rust_decimal::Decimal, ElementError> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Err(err(
            RejectCode::MissingField,
            "required field 'data.volume' is missing: give the measured amount as a JSON number or a decimal string",
        ));
    };
    let text: Cow<'_, str> = match raw.get().as_bytes()[0] {
        b'"' => serde_json::from_str(raw.get()).map_err(|e| {
            err(
                RejectCode::InvalidVolume,
                format!("field 'data.volume' is not a valid JSON string: {e}"),
            )
        })?,
        b'-' | b'0'..=b'9' => Cow::Borrowed(raw.get()),
        _ => {
            return Err(err(
                RejectCode::InvalidVolume,
                format!(
                    "field 'data.volume' must be a number or a decimal string, got {}",
                    json_type_name(raw)
                ),
            ));
        }
    };
    parse_volume_text(&text).map_err(|e| {
        err(
            RejectCode::InvalidVolume,
            format!("field 'data.volume': {e}"),
        )
    })
}

/// Reads `data.attributes` straight into scalars; on any problem, reads it
/// again the slow way to say which attribute is wrong and why.
fn read_attributes(raw: Option<&RawValue>) -> Result<Attributes, ElementError> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Ok(Attributes::new());
    };
    if let Ok(attrs) = serde_json::from_str::<Attributes>(raw.get())
        && attrs.iter().all(|(name, v)| {
            !name.is_empty()
                && name.len() <= MAX_ID_LEN
                && v.as_str().is_none_or(|s| s.len() <= MAX_ATTRIBUTE_LEN)
        })
    {
        return Ok(attrs);
    }
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw.get()).map_err(|e| {
            err(
                RejectCode::InvalidAttribute,
                format!("field 'data.attributes' must be an object of scalars: {e}"),
            )
        })?;
    parse_attributes(Some(map))
}

fn parse_attributes(
    map: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<Attributes, ElementError> {
    let mut out = Attributes::new();
    for (name, value) in map.unwrap_or_default() {
        if name.is_empty() || name.len() > MAX_ID_LEN {
            return Err(err(
                RejectCode::InvalidAttribute,
                format!("attribute name '{name}' must be 1 to {MAX_ID_LEN} bytes long"),
            ));
        }
        if let serde_json::Value::String(s) = &value
            && s.len() > MAX_ATTRIBUTE_LEN
        {
            return Err(err(
                RejectCode::FieldTooLong,
                format!(
                    "attribute 'data.attributes.{name}' is {} bytes long; the limit is {MAX_ATTRIBUTE_LEN}",
                    s.len()
                ),
            ));
        }
        let kind = match &value {
            serde_json::Value::Array(_) => "an array",
            _ => "an object",
        };
        let v = AttributeValue::from_json(value).ok_or_else(|| {
            err(
                RejectCode::InvalidAttribute,
                format!(
                    "attribute 'data.attributes.{name}' must be a string, number, boolean or null, got {kind}"
                ),
            )
        })?;
        out.insert(name, v);
    }
    Ok(out)
}

impl Decoder for CloudEventsDecoder {
    fn format(&self) -> &'static str {
        "cloudevents"
    }

    fn decode(
        &self,
        element: &Bytes,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>, ElementError> {
        let first = element.iter().copied().find(|c| !c.is_ascii_whitespace());
        if first != Some(b'{') {
            return Err(err(
                RejectCode::MalformedJson,
                "the event is not a JSON object",
            ));
        }
        let ev: WireEvent<'_> = serde_json::from_slice(element).map_err(|e| {
            err(
                RejectCode::MalformedJson,
                format!("the event is not valid JSON: {e}"),
            )
        })?;
        // Read the id first so that every later error can name the event.
        let id = id_field(ev.id, "id", true)?.expect("required");
        let with_id = |mut e: ElementError| {
            e.id = Some(id.to_string());
            e
        };
        let rest = (|| {
            match opt_string(ev.specversion, "specversion")?.as_deref() {
                Some("1.0") => {}
                Some(other) => {
                    return Err(err(
                        RejectCode::UnsupportedSpecversion,
                        format!(
                            "field 'specversion' is '{other}'; Tally accepts CloudEvents '1.0'"
                        ),
                    ));
                }
                None => {
                    return Err(err(
                        RejectCode::MissingField,
                        "required field 'specversion' is missing: set it to '1.0'",
                    ));
                }
            }
            if let Some(ct) = opt_string(ev.datacontenttype, "datacontenttype")?
                && !ct.starts_with("application/json")
            {
                return Err(err(
                    RejectCode::InvalidField,
                    format!("field 'datacontenttype' is '{ct}'; 'data' must be application/json"),
                ));
            }
            let source = id_field(ev.source, "source", true)?.expect("required");
            let meter = id_field(ev.ty, "type", true)?.expect("required");
            let resource_id = id_field(ev.subject, "subject", true)?.expect("required");
            let time = parse_time(ev.time)?;
            let Some(data_raw) = ev.data.filter(|d| d.get() != "null") else {
                return Err(err(
                    RejectCode::MissingField,
                    "required field 'data' is missing: it carries project_id and volume",
                ));
            };
            if !data_raw.get().starts_with('{') {
                return Err(err(
                    RejectCode::InvalidField,
                    format!(
                        "field 'data' must be an object, got {}",
                        json_type_name(data_raw)
                    ),
                ));
            }
            let data: WireData<'_> = serde_json::from_str(data_raw.get()).map_err(|e| {
                err(
                    RejectCode::InvalidField,
                    format!("field 'data' is not usable: {e}"),
                )
            })?;
            let project_id = id_field(data.project_id, "data.project_id", true)?.expect("required");
            let user_id = id_field(data.user_id, "data.user_id", false)?;
            let domain_id = id_field(data.domain_id, "data.domain_id", false)?;
            let unit = id_field(data.unit, "data.unit", false)?;
            let kind = match opt_string(data.kind, "data.kind")? {
                None => MeterKind::Delta,
                Some(k) => k
                    .parse::<MeterKind>()
                    .map_err(|e| err(RejectCode::InvalidKind, format!("field 'data.kind': {e}")))?,
            };
            // Normalized (2.50 -> 2.5) so a volume reads the same from the log
            // and from Parquet; the payload keeps the text as sent.
            let volume = parse_volume(data.volume)?.normalize();
            let attributes = read_attributes(data.attributes)?;
            Ok(UsageRecord {
                id: id.to_string(),
                source: source.into_owned(),
                time,
                received_at,
                project_id: project_id.into_owned(),
                user_id: user_id.map(Cow::into_owned),
                domain_id: domain_id.map(Cow::into_owned),
                resource_id: resource_id.into_owned(),
                meter: meter.into_owned(),
                kind,
                volume,
                unit: unit.map(Cow::into_owned),
                attributes,
                payload: element.clone(),
            })
        })();
        rest.map(|r| vec![r]).map_err(with_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn decode(json: &str) -> Result<UsageRecord, ElementError> {
        CloudEventsDecoder
            .decode(&Bytes::copy_from_slice(json.as_bytes()), Utc::now())
            .map(|mut v| v.remove(0))
    }

    fn event(data: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"e1","source":"nova","type":"instance","subject":"vm-1","time":"2026-10-01T12:00:00+02:00","data":{data}}}"#
        )
    }

    #[test]
    fn maps_every_field() {
        let r = decode(&event(
            r#"{"project_id":"p1","user_id":"u1","domain_id":"d1","volume":"0.1","unit":"GiB","kind":"gauge","attributes":{"flavor":"m1.small","vcpus":8,"ram":"8","ratio":8.0,"gpu":false,"az":null}}"#,
        ))
        .unwrap();
        assert_eq!(r.id, "e1");
        assert_eq!(r.source, "nova");
        assert_eq!(r.meter, "instance");
        assert_eq!(r.resource_id, "vm-1");
        assert_eq!(r.time.to_rfc3339(), "2026-10-01T10:00:00+00:00");
        assert_eq!(r.project_id, "p1");
        assert_eq!(r.user_id.as_deref(), Some("u1"));
        assert_eq!(r.domain_id.as_deref(), Some("d1"));
        assert_eq!(r.volume.to_string(), "0.1");
        assert_eq!(r.unit.as_deref(), Some("GiB"));
        assert_eq!(r.kind, MeterKind::Gauge);
        assert_eq!(
            r.attributes_json(),
            r#"{"az":null,"flavor":"m1.small","gpu":false,"ram":"8","ratio":8.0,"vcpus":8}"#
        );
    }

    #[test]
    fn payload_is_the_exact_input() {
        let json = event(r#"{"project_id":"p1","volume":1}"#);
        let r = decode(&json).unwrap();
        assert_eq!(&r.payload[..], json.as_bytes());
    }

    #[test]
    fn number_volumes_stay_exact_and_kind_defaults_to_delta() {
        let r = decode(&event(r#"{"project_id":"p1","volume":0.1}"#)).unwrap();
        assert_eq!(r.volume, Decimal::from_str("0.1").unwrap());
        assert_eq!(r.kind, MeterKind::Delta);
        let r = decode(&event(
            r#"{"project_id":"p1","volume":12345678901234567.25}"#,
        ))
        .unwrap();
        assert_eq!(r.volume.to_string(), "12345678901234567.25");
    }

    fn code_and_message(json: &str) -> (RejectCode, String, Option<String>) {
        let e = decode(json).unwrap_err();
        (e.code, e.message, e.id)
    }

    #[test]
    fn each_rule_has_its_code_and_names_its_field() {
        let cases: Vec<(String, RejectCode, &str)> = vec![
            ("[1]".into(), RejectCode::MalformedJson, "not a JSON object"),
            (
                "{\"id\":".into(),
                RejectCode::MalformedJson,
                "not valid JSON",
            ),
            (
                r#"{"specversion":"1.0"}"#.into(),
                RejectCode::MissingField,
                "'id'",
            ),
            (
                r#"{"id":7}"#.into(),
                RejectCode::InvalidField,
                "'id' must be a string",
            ),
            (
                r#"{"id":"x","specversion":"0.3"}"#.into(),
                RejectCode::UnsupportedSpecversion,
                "'specversion'",
            ),
            (
                r#"{"id":"x"}"#.into(),
                RejectCode::MissingField,
                "'specversion'",
            ),
            (
                event(r#"{"volume":1}"#),
                RejectCode::MissingField,
                "'data.project_id'",
            ),
            (
                event(r#"{"project_id":"p"}"#),
                RejectCode::MissingField,
                "'data.volume'",
            ),
            (
                event(r#"{"project_id":"p","volume":"ten"}"#),
                RejectCode::InvalidVolume,
                "not a decimal",
            ),
            (
                event(r#"{"project_id":"p","volume":"NaN"}"#),
                RejectCode::InvalidVolume,
                "not a finite",
            ),
            (
                event(r#"{"project_id":"p","volume":"Infinity"}"#),
                RejectCode::InvalidVolume,
                "not a finite",
            ),
            (
                event(r#"{"project_id":"p","volume":true}"#),
                RejectCode::InvalidVolume,
                "got a boolean",
            ),
            (
                event(r#"{"project_id":"p","volume":1,"kind":"rate"}"#),
                RejectCode::InvalidKind,
                "'data.kind'",
            ),
            (
                event(r#"{"project_id":"p","volume":1,"attributes":{"tags":["a"]}}"#),
                RejectCode::InvalidAttribute,
                "'data.attributes.tags'",
            ),
            (
                event(r#"{"project_id":"p","volume":1,"attributes":{"m":{"a":1}}}"#),
                RejectCode::InvalidAttribute,
                "got an object",
            ),
            (
                event("[]"),
                RejectCode::InvalidField,
                "'data' must be an object",
            ),
            (
                event(r#"{"project_id":5,"volume":1}"#),
                RejectCode::InvalidField,
                "'data.project_id' must be a string",
            ),
            (
                event(r#"{"project_id":"","volume":1}"#),
                RejectCode::MissingField,
                "'data.project_id'",
            ),
        ];
        for (json, code, needle) in cases {
            let (c, m, _) = code_and_message(&json);
            assert_eq!(c, code, "{json}: {m}");
            assert!(
                m.contains(needle),
                "{json}: message '{m}' should mention {needle}"
            );
        }
    }

    #[test]
    fn time_rules() {
        let no_offset = r#"{"specversion":"1.0","id":"e1","source":"s","type":"m","subject":"r","time":"2026-10-01T12:00:00","data":{"project_id":"p","volume":1}}"#;
        let (c, m, id) = code_and_message(no_offset);
        assert_eq!(c, RejectCode::InvalidTime);
        assert!(m.contains("no UTC offset"), "{m}");
        assert_eq!(id.as_deref(), Some("e1"));
        let garbage = no_offset.replace("2026-10-01T12:00:00", "yesterday");
        assert!(code_and_message(&garbage).1.contains("not an RFC 3339"));
        let missing = no_offset.replace(r#""time":"2026-10-01T12:00:00","#, "");
        assert_eq!(code_and_message(&missing).0, RejectCode::MissingField);
    }

    #[test]
    fn long_fields_are_refused() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        let json = event(&format!(r#"{{"project_id":"{long}","volume":1}}"#));
        assert_eq!(code_and_message(&json).0, RejectCode::FieldTooLong);
    }

    #[test]
    fn non_json_data_content_type_is_refused() {
        let json = event(r#"{"project_id":"p","volume":1}"#)
            .replace("\"data\":", "\"datacontenttype\":\"text/xml\",\"data\":");
        assert_eq!(code_and_message(&json).0, RejectCode::InvalidField);
    }
}
