//! OpenStack notifications and Ceilometer samples into usage records.
//!
//! One element is one message as a producer sent it, in any of the shapes
//! met in practice (see `docs/openstack.md`):
//! - the oslo.messaging v2 envelope `{"oslo.version": "2.0", "oslo.message":
//!   "<JSON string>"}` (decoded twice), possibly wrapped by an AMQP 1.0
//!   bridge as `{"request": <envelope>, "context": {}}`;
//! - the bare message (the v1 driver): `message_id`, `publisher_id`,
//!   `event_type`, `priority`, `payload`, `timestamp`, `_context_*`;
//! - what an oslo.messaging listener hands over: `{ctxt, event_type,
//!   payload, publisher_id, metadata: {message_id, timestamp}}`;
//! - Nova's documentation samples, which carry no `message_id` nor
//!   `timestamp`: the id is derived from a hash of the bytes and the time
//!   from the payload (`terminated_at` for deletes, else `updated_at`, else
//!   `launched_at`);
//! - a Ceilometer sample (`counter_name`, `counter_volume`, …) as its HTTP
//!   publisher POSTs it, or a `metering` notification carrying a list of them.
//!
//! The owner billed is the payload's (`tenant_id`, `project_id`, `owner`),
//! never the `_context_*` actor. Event types Tally does not bill (start
//! events, errors, flavors, …) decode to no records; [`classify`] says why.

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tally_core::{AttributeValue, Attributes, MeterKind, RejectCode, UsageRecord};

use crate::decoder::{Decoder, ElementError};

/// The source every OpenStack record carries: message ids are UUIDs, unique
/// across services, so one source makes a message redelivered through
/// another path (bus, HTTP, file) the same record.
pub const SOURCE: &str = "openstack";

/// The decoder of OpenStack notifications and Ceilometer samples.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenStackDecoder;

fn err(code: RejectCode, message: impl Into<String>) -> ElementError {
    ElementError::new(code, message)
}

/// A message after its envelope is removed.
#[derive(Debug)]
enum Message {
    /// A notification.
    Notification {
        message_id: Option<String>,
        event_type: String,
        timestamp: Option<String>,
        payload: Value,
        /// The actor's project (`_context_project_id`, `ctxt.project_id`):
        /// used only for deletes whose payload names no owner.
        context_project: Option<String>,
    },
    /// One Ceilometer sample (HTTP publisher): a JSON object.
    Sample(Value),
}

/// The keys of a message (and of its `ctxt` and `metadata` objects) that
/// Tally reads, each kept as its raw JSON text and borrowed from the
/// message. Every other key is skipped without being built: an oslo context
/// (`_context_roles`, `_context_service_catalog`, ...) can be kilobytes,
/// and building it into a tree, as an earlier version did, cost more than
/// everything Tally reads.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Fields<'a> {
    #[serde(rename = "oslo.message", borrow)]
    oslo_message: Option<&'a RawValue>,
    #[serde(borrow)]
    request: Option<&'a RawValue>,
    #[serde(borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    counter_name: Option<&'a RawValue>,
    #[serde(borrow)]
    message_id: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    ctxt: Option<&'a RawValue>,
    #[serde(rename = "_context_project_id", borrow)]
    context_project_id: Option<&'a RawValue>,
    #[serde(rename = "_context_tenant", borrow)]
    context_tenant: Option<&'a RawValue>,
    #[serde(borrow)]
    project_id: Option<&'a RawValue>,
    #[serde(borrow)]
    tenant_id: Option<&'a RawValue>,
    #[serde(borrow)]
    tenant: Option<&'a RawValue>,
}

/// Reads the keys Tally needs from one JSON object. `what` names the text
/// in the error ("the message", "'oslo.message'").
fn fields<'a>(text: &'a str, what: &str) -> Result<Fields<'a>, ElementError> {
    // Serde reads a struct from an array too (fields in order): only an
    // object is a message.
    if !text.trim_start().starts_with('{') {
        let message = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => format!(
                "{what} must be a JSON object (an oslo envelope, a notification or a sample)"
            ),
            Err(e) => format!("{what} is not JSON: {e}"),
        };
        return Err(err(RejectCode::MalformedJson, message));
    }
    serde_json::from_str(text).map_err(|e| {
        let message = match e.classify() {
            // A key given twice.
            serde_json::error::Category::Data => format!("{what} cannot be read: {e}"),
            _ => format!("{what} is not JSON: {e}"),
        };
        err(RejectCode::MalformedJson, message)
    })
}

/// The string a raw JSON value holds, or `None` when it is not a string.
fn raw_string(raw: Option<&RawValue>) -> Option<String> {
    let text = raw?.get();
    if !text.starts_with('"') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The keys of a nested object (`metadata`, `ctxt`); none when the value
/// is not an object.
fn nested<'a>(raw: Option<&'a RawValue>) -> Fields<'a> {
    raw.filter(|r| r.get().starts_with('{'))
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or_default()
}

/// Removes the envelopes of one message: the AMQP 1.0 bridge's wrapping,
/// then oslo's v2 envelope (whose message is a JSON string, decoded again).
fn unwrap(element: &[u8]) -> Result<Message, ElementError> {
    let text = std::str::from_utf8(element).map_err(|e| {
        err(
            RejectCode::MalformedJson,
            format!("the message is not JSON: it is not UTF-8 ({e})"),
        )
    })?;
    let mut text: &str = text;
    let mut f = fields(text, "the message")?;
    // An AMQP 1.0 bridge wraps the envelope once more.
    if f.oslo_message.is_none()
        && f.event_type.is_none()
        && let Some(inner) = f.request
    {
        text = inner.get();
        f = fields(text, "the bridge's 'request'")?;
    }
    let message: String;
    if let Some(inner) = f.oslo_message {
        message = raw_string(Some(inner)).ok_or_else(|| {
            err(
                RejectCode::MalformedJson,
                "'oslo.message' must be a string holding the message as JSON",
            )
        })?;
        text = &message;
        f = fields(text, "the JSON in 'oslo.message'")?;
    }
    if f.counter_name.is_some() {
        let sample = serde_json::from_str(text).map_err(|e| {
            err(
                RejectCode::MalformedJson,
                format!("the sample is not a JSON object: {e}"),
            )
        })?;
        return Ok(Message::Sample(sample));
    }
    let event_type = match raw_string(f.event_type) {
        Some(s) if !s.is_empty() => s,
        _ => {
            return Err(err(
                RejectCode::MissingField,
                "the message has no 'event_type' (nor 'counter_name'): it is not a notification or a sample",
            ));
        }
    };
    let context_project = raw_string(f.context_project_id)
        .or_else(|| raw_string(f.context_tenant))
        .or_else(|| {
            let ctxt = nested(f.ctxt);
            [ctxt.project_id, ctxt.tenant_id, ctxt.tenant]
                .into_iter()
                .find_map(|k| raw_string(k).filter(|s| !s.is_empty()))
        });
    let metadata = nested(f.metadata);
    let payload = match f.payload {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| {
            err(
                RejectCode::MalformedJson,
                format!("the 'payload' is not JSON: {e}"),
            )
        })?,
        None => Value::Null,
    };
    Ok(Message::Notification {
        context_project,
        message_id: raw_string(f.message_id).or_else(|| raw_string(metadata.message_id)),
        timestamp: raw_string(f.timestamp).or_else(|| raw_string(metadata.timestamp)),
        payload,
        event_type,
    })
}

/// Parses the timestamps OpenStack writes: RFC 3339, or naive UTC with a
/// space or a `T` (`2018-05-29 20:12:38.640725`), or with an offset after a
/// space (`2016-03-07 17:24:49+00:00`).
pub fn parse_openstack_time(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if let Some(t) = parse_naive_utc(t) {
        return Some(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(t) {
        return Some(t.with_timezone(&Utc).trunc_subsecs(6));
    }
    if let Ok(t) = DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(t.with_timezone(&Utc).trunc_subsecs(6));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(t, f) {
            return Some(t.and_utc().trunc_subsecs(6));
        }
    }
    None
}

/// The form oslo.messaging writes every notification's `timestamp` in
/// (`2018-05-29 20:12:38.640725`, naive UTC), read without chrono's format
/// interpreter, which re-reads its format string on every call: this runs
/// once per notification. Anything else (a zone, fewer digits, a `T`
/// with a zone) is left to the general parsers.
fn parse_naive_utc(t: &str) -> Option<DateTime<Utc>> {
    let b = t.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let micros = match &b[19..] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            // Microseconds: the store's resolution (later digits dropped,
            // as `trunc_subsecs(6)` does).
            num(20, b.len())?;
            let kept = digits.len().min(6);
            num(20, 20 + kept)? * 10u32.pow(6 - kept as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 7)?, num(8, 10)?)?;
    let time = date.and_hms_micro_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, micros)?;
    Some(time.and_utc())
}

/// What [`OpenStackDecoder`] does with an event type: bill it (and as
/// which family), or ignore it with the reason.
pub fn classify(event_type: &str) -> Result<&'static str, &'static str> {
    let family = if event_type == "metering" {
        "ceilometer"
    } else if event_type.starts_with("compute.instance.") || event_type.starts_with("instance.") {
        "nova"
    } else if event_type == "volume.usage" {
        return Err("Nova's per-instance volume I/O counters are not billed");
    } else if event_type.starts_with("volume.") {
        "volume"
    } else if event_type.starts_with("snapshot.") {
        "snapshot"
    } else if event_type.starts_with("backup.") {
        "backup"
    } else if event_type.starts_with("floatingip.") {
        "floatingip"
    } else if event_type.starts_with("router.") {
        "router"
    } else if event_type.starts_with("port.") {
        "port"
    } else if event_type == "l3.meter" {
        "l3meter"
    } else if event_type.starts_with("image.") && !event_type.starts_with("image.member.") {
        "image"
    } else if event_type == "objectstore.http.request" {
        "swift"
    } else {
        return Err("not a billable event type");
    };
    if event_type.ends_with(".start") {
        return Err("start events change nothing billable: the matching .end does");
    }
    if event_type.ends_with(".error") {
        return Err("a failed action changes nothing billable");
    }
    if family == "router"
        && (event_type.contains(".interface.") || event_type.contains(".gateway."))
    {
        return Err("an interface or gateway change does not change the router's existence");
    }
    // Interface and volume attachments, key pairs and the like carry no
    // usage of their own.
    for part in [
        "interface_",
        "volume_attach",
        "volume_detach",
        "volume_swap",
        "snapshot.",
    ] {
        if family == "nova" && event_type.contains(part) {
            return Err("an attachment or snapshot action bills nothing on the instance");
        }
    }
    Ok(family)
}

struct Builder<'a> {
    id: String,
    time: DateTime<Utc>,
    received_at: DateTime<Utc>,
    payload_bytes: &'a Bytes,
    event_type: &'a str,
    records: Vec<UsageRecord>,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        project: &str,
        user: Option<&str>,
        resource: &str,
        meter: &str,
        kind: MeterKind,
        volume: Decimal,
        unit: &str,
        mut attributes: Attributes,
    ) {
        attributes.insert(
            "event_type".into(),
            AttributeValue::String(self.event_type.to_string()),
        );
        // One message can give several records (an instance's state, vCPUs,
        // RAM, disk): the meter makes each id unique and stable.
        let id = if self.records.is_empty() && meter_is_primary(meter) {
            self.id.clone()
        } else {
            format!("{}:{meter}", self.id)
        };
        self.records.push(UsageRecord {
            id,
            source: SOURCE.to_string(),
            time: self.time,
            received_at: self.received_at,
            project_id: project.to_string(),
            user_id: user.map(str::to_string),
            domain_id: None,
            resource_id: resource.to_string(),
            meter: meter.to_string(),
            kind,
            volume,
            unit: Some(unit.to_string()),
            attributes,
            payload: self.payload_bytes.clone(),
        });
    }
}

fn meter_is_primary(meter: &str) -> bool {
    matches!(
        meter,
        "instance"
            | "volume.size"
            | "snapshot.size"
            | "backup.size"
            | "ip.floating"
            | "router"
            | "image.size"
    )
}

fn text<'a>(m: &'a Value, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn number(m: &Value, key: &str) -> Option<Decimal> {
    match m.get(key)? {
        Value::Number(n) => n.to_string().parse().ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn owner<'a>(payload: &'a Value, what: &str) -> Result<&'a str, ElementError> {
    text(payload, "tenant_id")
        .or_else(|| text(payload, "project_id"))
        .or_else(|| text(payload, "owner"))
        .ok_or_else(|| {
            err(
                RejectCode::MissingField,
                format!(
                    "the {what} payload names no owner ('tenant_id', 'project_id' or 'owner'): Tally bills the owner, not the caller in the context"
                ),
            )
        })
}

fn required<'a>(payload: &'a Value, key: &str, what: &str) -> Result<&'a str, ElementError> {
    text(payload, key).ok_or_else(|| {
        err(
            RejectCode::MissingField,
            format!("the {what} payload has no '{key}'"),
        )
    })
}

fn attr_str(a: &mut Attributes, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        a.insert(name.into(), AttributeValue::String(v.to_string()));
    }
}

fn is_delete(event_type: &str) -> bool {
    event_type.contains(".delete.") || event_type.ends_with(".delete")
}

/// Nova's versioned payloads are `{nova_object.data, nova_object.version}`;
/// Tally reads the 1.x versions.
fn nova_object<'a>(v: &'a Value, what: &str) -> Result<&'a Value, ElementError> {
    let Some(data) = v.get("nova_object.data") else {
        return Ok(v);
    };
    let version = v
        .get("nova_object.version")
        .and_then(Value::as_str)
        .unwrap_or("");
    // Nova has shipped payloads at majors 1 (actions, flavors) and 2
    // (update, exists); a new major may move fields Tally reads.
    if !(version.starts_with("1.") || version.starts_with("2.")) {
        return Err(err(
            RejectCode::InvalidField,
            format!(
                "{what} nova_object.version '{version}' is not one Tally knows (1.x, 2.x): upgrade Tally or send unversioned notifications"
            ),
        ));
    }
    Ok(data)
}

fn nova(b: &mut Builder<'_>, payload: &Value) -> Result<(), ElementError> {
    let p = nova_object(payload, "the instance payload's")?;
    let project = owner(p, "instance")?;
    let resource = text(p, "uuid")
        .or_else(|| text(p, "instance_id"))
        .ok_or_else(|| {
            err(
                RejectCode::MissingField,
                "the instance payload has no 'uuid' (nor 'instance_id')",
            )
        })?;
    let flavor = match p.get("flavor") {
        Some(f) => Some(nova_object(f, "the flavor's")?),
        None => None,
    };
    let flavor_name = flavor
        .and_then(|f| text(f, "name"))
        .or_else(|| text(p, "instance_type"));
    let flavor_id = flavor
        .and_then(|f| text(f, "flavorid"))
        .map(str::to_string)
        .or_else(|| {
            p.get("instance_type_id")
                .map(|v| v.to_string().trim_matches('"').to_string())
        });
    let size = |key: &str, legacy: &str| {
        flavor
            .and_then(|f| number(f, key))
            .or_else(|| number(p, legacy))
    };
    let status = if is_delete(b.event_type) && b.event_type.ends_with(".end") {
        "deleted"
    } else {
        text(p, "state").unwrap_or("unknown")
    };
    let mut a = Attributes::new();
    attr_str(&mut a, "status", Some(status));
    attr_str(&mut a, "flavor_name", flavor_name);
    attr_str(&mut a, "flavor_id", flavor_id.as_deref());
    attr_str(&mut a, "availability_zone", text(p, "availability_zone"));
    attr_str(&mut a, "host", text(p, "host"));
    if b.event_type.ends_with("exists") {
        attr_str(
            &mut a,
            "audit_period_beginning",
            text(p, "audit_period_beginning"),
        );
        attr_str(
            &mut a,
            "audit_period_ending",
            text(p, "audit_period_ending"),
        );
        if let Some(ap) = p.get("audit_period") {
            let ap = nova_object(ap, "the audit period's")?;
            attr_str(
                &mut a,
                "audit_period_beginning",
                text(ap, "audit_period_beginning"),
            );
            attr_str(
                &mut a,
                "audit_period_ending",
                text(ap, "audit_period_ending"),
            );
        }
    }
    let user = text(p, "user_id");
    b.push(
        project,
        user,
        resource,
        "instance",
        MeterKind::Gauge,
        Decimal::ONE,
        "instance",
        a,
    );
    let mut gauge = Attributes::new();
    attr_str(&mut gauge, "status", Some(status));
    attr_str(&mut gauge, "flavor_name", flavor_name);
    for (meter, key, legacy, unit) in [
        ("vcpus", "vcpus", "vcpus", "vcpu"),
        ("memory", "memory_mb", "memory_mb", "MiB"),
        ("disk.root.size", "root_gb", "root_gb", "GiB"),
    ] {
        if let Some(v) = size(key, legacy) {
            b.push(
                project,
                user,
                resource,
                meter,
                MeterKind::Gauge,
                v,
                unit,
                gauge.clone(),
            );
        }
    }
    Ok(())
}

fn cinder(b: &mut Builder<'_>, family: &str, p: &Value) -> Result<(), ElementError> {
    let project = owner(p, family)?;
    let (id_key, size_key, meter) = match family {
        "volume" => ("volume_id", "size", "volume.size"),
        "snapshot" => ("snapshot_id", "volume_size", "snapshot.size"),
        _ => ("backup_id", "size", "backup.size"),
    };
    let resource = required(p, id_key, family)?;
    let size = number(p, size_key).ok_or_else(|| {
        err(
            RejectCode::InvalidVolume,
            format!("the {family} payload has no numeric '{size_key}'"),
        )
    })?;
    let mut a = Attributes::new();
    let status = if is_delete(b.event_type) {
        Some("deleted")
    } else {
        text(p, "status")
    };
    attr_str(&mut a, "status", status);
    attr_str(&mut a, "volume_type", text(p, "volume_type"));
    attr_str(&mut a, "availability_zone", text(p, "availability_zone"));
    attr_str(
        &mut a,
        "volume_id",
        text(p, "volume_id").filter(|_| family != "volume"),
    );
    b.push(
        project,
        text(p, "user_id"),
        resource,
        meter,
        MeterKind::Gauge,
        size,
        "GiB",
        a,
    );
    Ok(())
}

fn neutron(
    b: &mut Builder<'_>,
    family: &str,
    payload: &Value,
    context_project: Option<&str>,
) -> Result<(), ElementError> {
    // Deletes carry only the id (`floatingip_id`); the rest carry the object.
    let object = payload.get(family).unwrap_or(payload);
    let id_key = format!("{family}_id");
    let resource = text(object, "id")
        .or_else(|| text(payload, &id_key))
        .ok_or_else(|| {
            err(
                RejectCode::MissingField,
                format!("the {family} payload has no 'id' (nor '{id_key}')"),
            )
        })?;
    let project = text(object, "project_id")
        .or_else(|| text(object, "tenant_id"))
        .or_else(|| text(payload, "project_id"))
        .or_else(|| text(payload, "tenant_id"));
    let mut a = Attributes::new();
    // Neutron's deletes name only the id. The actor who deleted it is the
    // owner unless an administrator did it for them: the record says where
    // the owner came from (docs/openstack.md).
    let project = match (project, context_project) {
        (Some(p), _) => p,
        (None, Some(c)) if is_delete(b.event_type) => {
            attr_str(&mut a, "owner_from", Some("context"));
            c
        }
        _ => {
            return Err(err(
                RejectCode::MissingField,
                format!("the {family} payload names no owner ('project_id' or 'tenant_id')"),
            ));
        }
    };
    let status = if is_delete(b.event_type) {
        Some("deleted")
    } else {
        text(object, "status")
    };
    attr_str(
        &mut a,
        "status",
        status.map(|s| s.to_ascii_lowercase()).as_deref(),
    );
    attr_str(
        &mut a,
        "floating_ip_address",
        text(object, "floating_ip_address"),
    );
    attr_str(&mut a, "port_id", text(object, "port_id"));
    let (meter, unit) = match family {
        "floatingip" => ("ip.floating", "ip"),
        "port" => ("port", "port"),
        _ => ("router", "router"),
    };
    attr_str(&mut a, "device_owner", text(object, "device_owner"));
    attr_str(&mut a, "network_id", text(object, "network_id"));
    b.push(
        project,
        None,
        resource,
        meter,
        MeterKind::Gauge,
        Decimal::ONE,
        unit,
        a,
    );
    Ok(())
}

/// Neutron's metering agent: bytes through a metering label since the
/// previous report.
fn l3_meter(b: &mut Builder<'_>, p: &Value) -> Result<(), ElementError> {
    let project = text(p, "project_id")
        .or_else(|| text(p, "tenant_id"))
        .ok_or_else(|| {
            err(
                RejectCode::MissingField,
                "the l3.meter payload names no owner ('project_id' or 'tenant_id')",
            )
        })?;
    let resource = required(p, "label_id", "l3.meter")?;
    let bytes = number(p, "bytes").ok_or_else(|| {
        err(
            RejectCode::InvalidVolume,
            "the l3.meter payload has no numeric 'bytes'",
        )
    })?;
    b.push(
        project,
        None,
        resource,
        "bandwidth",
        MeterKind::Delta,
        bytes,
        "B",
        Attributes::new(),
    );
    Ok(())
}

fn glance(b: &mut Builder<'_>, p: &Value) -> Result<(), ElementError> {
    let project = owner(p, "image")?;
    let resource = required(p, "id", "image")?;
    let size = number(p, "size").unwrap_or(Decimal::ZERO);
    let mut a = Attributes::new();
    let status = if is_delete(b.event_type) {
        Some("deleted")
    } else {
        text(p, "status")
    };
    attr_str(&mut a, "status", status);
    attr_str(&mut a, "disk_format", text(p, "disk_format"));
    attr_str(&mut a, "container_format", text(p, "container_format"));
    b.push(
        project,
        None,
        resource,
        "image.size",
        MeterKind::Gauge,
        size,
        "B",
        a,
    );
    Ok(())
}

fn swift(b: &mut Builder<'_>, p: &Value) -> Result<(), ElementError> {
    let project = p
        .get("initiator")
        .and_then(|i| text(i, "project_id"))
        .or_else(|| {
            // The account is the path's second segment, `<reseller
            // prefix>_<project>` (`AUTH_` by default): what ceilometermiddleware
            // bills when the initiator names no project.
            p.get("target")
                .and_then(|t| t.get("metadata"))
                .and_then(|m| text(m, "path"))
                .and_then(|path| path.split('/').filter(|s| !s.is_empty()).nth(1))
                .and_then(|account| account.split_once('_').map(|(_, project)| project))
                .filter(|project| !project.is_empty())
        })
        .ok_or_else(|| {
            err(
                RejectCode::MissingField,
                "the objectstore.http.request payload names no project (initiator.project_id, or an AUTH_ account in target.metadata.path)",
            )
        })?;
    let resource = p
        .get("target")
        .and_then(|t| text(t, "id"))
        .unwrap_or(project);
    let measurements = p
        .get("measurements")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for m in measurements {
        let Some(name) = m.get("metric").and_then(|x| text(x, "name")) else {
            continue;
        };
        let volume = number(m, "result").ok_or_else(|| {
            err(
                RejectCode::InvalidVolume,
                format!("measurement '{name}' has no numeric 'result'"),
            )
        })?;
        let unit = m.get("metric").and_then(|x| text(x, "unit")).unwrap_or("B");
        b.push(
            project,
            None,
            resource,
            name,
            MeterKind::Delta,
            volume,
            unit,
            Attributes::new(),
        );
    }
    Ok(())
}

/// One Ceilometer sample (a JSON object) into one record.
fn sample(
    v: &Value,
    id_fallback: &str,
    payload_bytes: &Bytes,
    received_at: DateTime<Utc>,
) -> Result<UsageRecord, ElementError> {
    let meter = required(v, "counter_name", "sample")?;
    let id = text(v, "message_id")
        .map(str::to_string)
        .unwrap_or_else(|| format!("{id_fallback}:{meter}"));
    let with_id = |mut e: ElementError| {
        e.id = Some(id.clone());
        e
    };
    let project = required(v, "project_id", "sample").map_err(with_id)?;
    let resource = required(v, "resource_id", "sample").map_err(with_id)?;
    let volume = number(v, "counter_volume").ok_or_else(|| {
        with_id(err(
            RejectCode::InvalidVolume,
            format!(
                "sample '{meter}' has counter_volume {}: it must be a number",
                v.get("counter_volume").unwrap_or(&Value::Null)
            ),
        ))
    })?;
    let kind = match text(v, "counter_type").unwrap_or("gauge") {
        "gauge" => MeterKind::Gauge,
        "delta" => MeterKind::Delta,
        "cumulative" => MeterKind::Cumulative,
        other => {
            return Err(with_id(err(
                RejectCode::InvalidKind,
                format!("sample counter_type '{other}' is not gauge, delta or cumulative"),
            )));
        }
    };
    let time = text(v, "timestamp")
        .and_then(parse_openstack_time)
        .ok_or_else(|| {
            with_id(err(
                RejectCode::InvalidTime,
                "the sample's 'timestamp' is missing or not a time",
            ))
        })?;
    let mut attributes = Attributes::new();
    if let Some(Value::Object(md)) = v.get("resource_metadata") {
        for (k, val) in md {
            let value = match val {
                Value::String(s) if s.len() <= crate::cloudevents::MAX_ATTRIBUTE_LEN => {
                    AttributeValue::String(s.clone())
                }
                Value::Number(n) => AttributeValue::Number(n.clone()),
                Value::Bool(b) => AttributeValue::Bool(*b),
                _ => continue,
            };
            attributes.insert(k.clone(), value);
        }
        if let Some(name) = md.get("flavor").and_then(|f| text(f, "name")) {
            attributes.insert(
                "flavor_name".into(),
                AttributeValue::String(name.to_string()),
            );
        }
    }
    Ok(UsageRecord {
        id,
        source: SOURCE.to_string(),
        time,
        received_at,
        project_id: project.to_string(),
        user_id: text(v, "user_id").map(str::to_string),
        domain_id: None,
        resource_id: resource.to_string(),
        meter: meter.to_string(),
        kind,
        volume,
        unit: text(v, "counter_unit").map(str::to_string),
        attributes,
        payload: payload_bytes.clone(),
    })
}

/// When a message decodes to no records because its event type is not
/// billed: the event type and why. `None` for samples, billed types and
/// messages that cannot be read (those are errors of [`Decoder::decode`]).
pub fn ignored(element: &[u8]) -> Option<(String, &'static str)> {
    match unwrap(element).ok()? {
        Message::Notification { event_type, .. } => {
            let reason = classify(&event_type).err()?;
            Some((event_type, reason))
        }
        Message::Sample(_) => None,
    }
}

/// A stable id for a message that carries none: a hash of its bytes.
fn derived_id(element: &Bytes) -> String {
    let digest = Sha256::digest(element);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The time of a message without a timestamp, from its payload.
fn payload_time(event_type: &str, payload: &Value) -> Option<DateTime<Utc>> {
    let p = payload.get("nova_object.data").unwrap_or(payload);
    let keys: &[&str] = if is_delete(event_type) {
        &["terminated_at", "deleted_at", "updated_at", "launched_at"]
    } else {
        &["updated_at", "launched_at", "created_at"]
    };
    keys.iter()
        .find_map(|k| text(p, k).and_then(parse_openstack_time))
}

impl Decoder for OpenStackDecoder {
    fn format(&self) -> &'static str {
        "openstack"
    }

    fn decode(
        &self,
        element: &Bytes,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>, ElementError> {
        let (message_id, event_type, timestamp, payload, context_project) = match unwrap(element)? {
            Message::Sample(s) => {
                return Ok(vec![sample(
                    &s,
                    &derived_id(element),
                    element,
                    received_at,
                )?]);
            }
            Message::Notification {
                message_id,
                event_type,
                timestamp,
                payload,
                context_project,
            } => (message_id, event_type, timestamp, payload, context_project),
        };
        let with_id = |mut e: ElementError| {
            e.id = message_id.clone();
            e
        };
        let family = match classify(&event_type) {
            Ok(f) => f,
            Err(_) => return Ok(Vec::new()),
        };
        let id = message_id.clone().unwrap_or_else(|| derived_id(element));
        if family == "ceilometer" {
            let samples = payload.as_array().map_or(&[][..], Vec::as_slice);
            return samples
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Value::Object(_) => {
                        sample(s, &format!("{id}:{i}"), element, received_at).map_err(with_id)
                    }
                    _ => Err(with_id(err(
                        RejectCode::InvalidField,
                        "a metering notification's payload must be a list of sample objects",
                    ))),
                })
                .collect();
        }
        let time = match &timestamp {
            Some(t) => parse_openstack_time(t).ok_or_else(|| {
                with_id(err(
                    RejectCode::InvalidTime,
                    format!("'timestamp' ('{t}') is not a time such as 2018-05-29 20:12:38.640725"),
                ))
            })?,
            None => payload_time(&event_type, &payload).ok_or_else(|| {
                with_id(err(
                    RejectCode::InvalidTime,
                    "the message has no 'timestamp' and its payload no terminated_at, updated_at or launched_at",
                ))
            })?,
        };
        let mut b = Builder {
            id,
            time,
            received_at,
            payload_bytes: element,
            event_type: &event_type,
            records: Vec::new(),
        };
        let result = match family {
            "nova" => nova(&mut b, &payload),
            "volume" | "snapshot" | "backup" => cinder(&mut b, family, &payload),
            "floatingip" | "router" | "port" => {
                neutron(&mut b, family, &payload, context_project.as_deref())
            }
            "l3meter" => l3_meter(&mut b, &payload),
            "image" => glance(&mut b, &payload),
            _ => swift(&mut b, &payload),
        };
        result.map_err(with_id)?;
        Ok(b.records)
    }
}

/// One server of a saved `os-simple-tenant-usage` response, against Tally's
/// instance hours for the same window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageComparison {
    /// The instance.
    pub instance_id: String,
    /// Its name in Nova.
    pub name: String,
    /// Nova's hours (the whole window at `nova_flavor`).
    pub nova_hours: Decimal,
    /// The flavor Nova prices it at (its current one).
    pub nova_flavor: String,
    /// Tally's instance hours in the window, all flavors.
    pub tally_hours: Decimal,
    /// Tally's hours per flavor.
    pub tally_by_flavor: std::collections::BTreeMap<String, Decimal>,
    /// tally − nova.
    pub difference: Decimal,
    /// Why they differ, in words.
    pub explanation: String,
}

/// A saved `os-simple-tenant-usage` response: its window and servers.
#[derive(Debug, Clone, PartialEq)]
pub struct NovaUsage {
    /// Window start.
    pub start: DateTime<Utc>,
    /// Window end.
    pub stop: DateTime<Utc>,
    /// The servers it lists.
    pub servers: Vec<NovaServer>,
}

/// One server of an `os-simple-tenant-usage` response.
#[derive(Debug, Clone, PartialEq)]
pub struct NovaServer {
    /// Its id.
    pub instance_id: String,
    /// Its name.
    pub name: String,
    /// Its current flavor.
    pub flavor: String,
    /// Hours Nova counts in the window.
    pub hours: Decimal,
    /// Nova's `started_at` (the latest `launched_at`).
    pub started_at: Option<DateTime<Utc>>,
}

/// Reads a saved `os-simple-tenant-usage` response (`tenant_usage` for one
/// project or `tenant_usages` for all, with `server_usages`).
pub fn parse_nova_usage(bytes: &[u8]) -> Result<NovaUsage, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let usages: Vec<&Value> =
        match (v.get("tenant_usage"), v.get("tenant_usages")) {
            (Some(u), _) => vec![u],
            (None, Some(Value::Array(all))) => all.iter().collect(),
            _ => return Err(
                "no 'tenant_usage' or 'tenant_usages': is this an os-simple-tenant-usage response?"
                    .into(),
            ),
        };
    let time = |u: &Value, k: &str| text(u, k).and_then(parse_openstack_time);
    let first = usages.first().ok_or("the response lists no project")?;
    let (start, stop) = match (time(first, "start"), time(first, "stop")) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("the response has no readable 'start' and 'stop'".into()),
    };
    let mut servers = Vec::new();
    for u in usages {
        for s in u
            .get("server_usages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = text(s, "instance_id").ok_or("a server usage has no instance_id")?;
            servers.push(NovaServer {
                instance_id: id.to_string(),
                name: text(s, "name").unwrap_or("").to_string(),
                flavor: text(s, "flavor").unwrap_or("").to_string(),
                hours: number(s, "hours").ok_or("a server usage has no numeric 'hours'")?,
                started_at: time(s, "started_at"),
            });
        }
    }
    Ok(NovaUsage {
        start,
        stop,
        servers,
    })
}

/// Compares Nova's hours with Tally's per instance and explains each
/// difference. Differences under 0.01 h (36 s: Nova's clock against the
/// notification times) count as agreement.
pub fn compare_usage(
    nova: &NovaUsage,
    tally: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, Decimal>>,
) -> Vec<UsageComparison> {
    let tolerance = Decimal::new(1, 2);
    let mut out = Vec::new();
    for NovaServer {
        instance_id: id,
        name,
        flavor,
        hours,
        started_at: started,
    } in &nova.servers
    {
        let by_flavor = tally.get(id).cloned().unwrap_or_default();
        let total: Decimal = by_flavor.values().copied().sum();
        let difference = (total - hours).round_dp(6);
        let mut why = Vec::new();
        if by_flavor.is_empty() {
            why.push("Tally has no instance hours for it in this window: its notifications did not reach Tally (check the exchanges and topics)".to_string());
        } else {
            if by_flavor.len() > 1 || by_flavor.keys().any(|f| f != flavor) {
                let parts: Vec<String> = by_flavor
                    .iter()
                    .map(|(f, h)| format!("{f} {}", h.normalize()))
                    .collect();
                why.push(format!(
                    "resized: Tally bills each flavor for the hours it ran ({}); Nova prices the whole window at {flavor}",
                    parts.join(", ")
                ));
            }
            if difference < -tolerance {
                why.push(format!(
                    "Tally billed {} h less: hours in states Tally does not bill (stopped, shelved_offloaded, …); Nova ignores power states",
                    (-difference).normalize()
                ));
            } else if difference > tolerance {
                let since = started.map(|t| t.to_rfc3339()).unwrap_or_default();
                why.push(format!(
                    "Tally billed {} h more: Nova counts from the latest launched_at ({since}), which a rebuild, unshelve or evacuation resets; Tally from the creation",
                    difference.normalize()
                ));
            }
        }
        let explanation = if why.is_empty() {
            "agrees".to_string()
        } else {
            why.join("; ")
        };
        out.push(UsageComparison {
            instance_id: id.clone(),
            name: name.clone(),
            nova_hours: hours.normalize(),
            nova_flavor: flavor.clone(),
            tally_hours: total.normalize(),
            tally_by_flavor: by_flavor,
            difference: difference.normalize(),
            explanation,
        });
    }
    for (id, by_flavor) in tally {
        if !nova.servers.iter().any(|s| &s.instance_id == id) {
            let total: Decimal = by_flavor.values().copied().sum();
            out.push(UsageComparison {
                instance_id: id.clone(),
                name: String::new(),
                nova_hours: Decimal::ZERO,
                nova_flavor: String::new(),
                tally_hours: total.normalize(),
                tally_by_flavor: by_flavor.clone(),
                difference: total.normalize(),
                explanation: "Nova does not list it: deleted before the window, or in a project the response does not cover".into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn decode(text: &str) -> Result<Vec<UsageRecord>, ElementError> {
        OpenStackDecoder.decode(&Bytes::from(text.to_string()), Utc::now())
    }

    #[test]
    fn every_envelope_layer_is_read_and_the_context_skipped() {
        let inner = serde_json::json!({
            "message_id": "m-1",
            "event_type": "floatingip.delete.end",
            "timestamp": "2026-10-01 10:00:00.000000",
            "priority": "INFO",
            "publisher_id": "network.host",
            // Context keys Tally never reads, of every JSON type.
            "_context_roles": ["admin", "member"],
            "_context_service_catalog": [{"endpoints": [{"url": "http://x\"y"}]}],
            "_context_is_admin": true,
            "_context_project_id": "actor",
            "payload": {"floatingip_id": "fip-1"},
        });
        let v2 = serde_json::json!({"oslo.version": "2.0", "oslo.message": inner.to_string()});
        let bridged = serde_json::json!({"request": v2, "context": {}});
        for text in [inner.to_string(), v2.to_string(), bridged.to_string()] {
            let r = decode(&text).unwrap();
            assert_eq!(r.len(), 1, "{text}");
            assert_eq!(r[0].id, "m-1");
            assert_eq!(r[0].resource_id, "fip-1");
            // A delete naming no owner is billed to the actor, and says so.
            assert_eq!(r[0].project_id, "actor");
            assert_eq!(
                r[0].attributes.get("owner_from"),
                Some(&AttributeValue::String("context".into()))
            );
            assert_eq!(r[0].time.to_rfc3339(), "2026-10-01T10:00:00+00:00");
        }
        // What a listener hands over: the id and time in `metadata`, the
        // actor in `ctxt`.
        let listener = serde_json::json!({
            "ctxt": {"project_id": "", "tenant_id": "actor-2"},
            "event_type": "floatingip.delete.end",
            "publisher_id": "network.host",
            "payload": {"floatingip_id": "fip-2"},
            "metadata": {"message_id": "m-2", "timestamp": "2026-10-02 00:00:00"},
        });
        let r = decode(&listener.to_string()).unwrap();
        assert_eq!(
            (r[0].id.as_str(), r[0].project_id.as_str()),
            ("m-2", "actor-2")
        );
        assert_eq!(r[0].time.to_rfc3339(), "2026-10-02T00:00:00+00:00");
        // A message id that is not a string is no id: one is derived.
        let numbered = inner.to_string().replace(r#""m-1""#, "17");
        assert!(decode(&numbered).unwrap()[0].id.starts_with("sha256:"));
    }

    #[test]
    fn unreadable_envelopes_say_which_layer_is_wrong() {
        let cases = [
            ("[1, 2]", "the message must be a JSON object"),
            ("{\"oslo.message\": ", "the message is not JSON"),
            (
                r#"{"oslo.version": "2.0", "oslo.message": {"event_type": "x"}}"#,
                "'oslo.message' must be a string",
            ),
            (
                r#"{"oslo.version": "2.0", "oslo.message": "[1]"}"#,
                "the JSON in 'oslo.message' must be a JSON object",
            ),
            (
                r#"{"oslo.version": "2.0", "oslo.message": "{oops"}"#,
                "the JSON in 'oslo.message' is not JSON",
            ),
            (
                r#"{"request": 5, "context": {}}"#,
                "the bridge's 'request' must be a JSON object",
            ),
            (
                r#"{"event_type": "a.b", "event_type": "c.d"}"#,
                "duplicate field `event_type`",
            ),
            (
                r#"{"event_type": "", "payload": {}}"#,
                "has no 'event_type'",
            ),
        ];
        for (text, expected) in cases {
            let e = decode(text).unwrap_err();
            let code = if expected.contains("event_type'") {
                RejectCode::MissingField
            } else {
                RejectCode::MalformedJson
            };
            assert_eq!(e.code, code, "{text}");
            assert!(e.message.contains(expected), "{text}: {}", e.message);
        }
    }

    #[test]
    fn every_kind_of_usage_difference_is_explained() {
        let nova = parse_nova_usage(
            br#"{"tenant_usages": [{"start": "2026-10-01T00:00:00", "stop": "2026-10-02T00:00:00",
                "server_usages": [
                  {"instance_id": "same", "name": "a", "flavor": "m1.small", "hours": 24.0},
                  {"instance_id": "rebuilt", "name": "b", "flavor": "m1.small", "hours": 6.0,
                   "started_at": "2026-10-01T18:00:00"},
                  {"instance_id": "unseen", "name": "c", "flavor": "m1.small", "hours": 3.5}]}]}"#,
        )
        .unwrap();
        let tally = BTreeMap::from([
            (
                "same".to_string(),
                BTreeMap::from([("m1.small".to_string(), d("23.995"))]),
            ),
            (
                "rebuilt".to_string(),
                BTreeMap::from([("m1.small".to_string(), d("24"))]),
            ),
            (
                "extra".to_string(),
                BTreeMap::from([("m1.tiny".to_string(), d("1"))]),
            ),
        ]);
        let rows = compare_usage(&nova, &tally);
        let why: BTreeMap<&str, &str> = rows
            .iter()
            .map(|r| (r.instance_id.as_str(), r.explanation.as_str()))
            .collect();
        assert_eq!(why["same"], "agrees");
        assert!(
            why["rebuilt"].contains("18 h more") && why["rebuilt"].contains("2026-10-01T18:00:00")
        );
        assert!(why["unseen"].contains("did not reach Tally"));
        assert!(why["extra"].contains("Nova does not list it"));
        assert!(
            parse_nova_usage(b"{}")
                .unwrap_err()
                .contains("os-simple-tenant-usage")
        );
    }

    #[test]
    fn ports_and_l3_meters_become_records() {
        let d = OpenStackDecoder;
        let now = Utc::now();
        let r = d
            .decode(&Bytes::from_static(br#"{"message_id":"p1","event_type":"port.create.end","timestamp":"2026-10-01 00:00:00","payload":{"port":{"id":"port-1","project_id":"p","status":"DOWN","device_owner":"compute:nova","network_id":"n"}}}"#), now)
            .unwrap();
        assert_eq!(
            (r[0].meter.as_str(), r[0].resource_id.as_str()),
            ("port", "port-1")
        );
        let r = d
            .decode(&Bytes::from_static(br#"{"message_id":"l1","event_type":"l3.meter","timestamp":"2026-10-01 00:00:00","payload":{"label_id":"lab","tenant_id":"p","bytes":1024,"pkts":3,"time":30}}"#), now)
            .unwrap();
        assert_eq!(
            (
                r[0].meter.as_str(),
                r[0].volume.to_string().as_str(),
                r[0].kind
            ),
            ("bandwidth", "1024", MeterKind::Delta)
        );
        let e = d
            .decode(&Bytes::from_static(br#"{"message_id":"l2","event_type":"l3.meter","timestamp":"2026-10-01 00:00:00","payload":{"label_id":"lab","bytes":1}}"#), now)
            .unwrap_err();
        assert!(e.message.contains("names no owner"), "{}", e.message);
    }

    #[test]
    fn the_fast_timestamp_reader_agrees_with_chrono() {
        let slow = |t: &str| {
            NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f"))
                .ok()
                .map(|t| t.and_utc().trunc_subsecs(6))
        };
        for t in [
            "2018-05-29 20:12:38.640725",
            "2018-05-29 20:12:38",
            "2018-05-29T20:12:38.1",
            "2024-02-29 23:59:59.999999999",
            "2026-10-01 00:00:00.000001",
        ] {
            assert_eq!(parse_naive_utc(t), slow(t), "{t}");
            assert!(parse_naive_utc(t).is_some(), "{t}");
        }
        // Not this form, or not a real instant: left to the general parsers,
        // which refuse what is not a time.
        for t in [
            "2018-05-29 20:12:38+00:00",
            "2018-05-29 20:12:38.",
            "2018-05-29 20:12:38.12345678901",
            "2023-02-29 00:00:00",
            "2018-05-29 24:00:00",
            "2018-05-29 20:1a:38",
            "2018/05/29 20:12:38",
            "2018-05-29",
            "2018-05-29 20:12:38.12x",
        ] {
            assert_eq!(parse_naive_utc(t), None, "{t}");
        }
        assert_eq!(
            parse_openstack_time("2018-05-29 20:12:38+00:00"),
            parse_openstack_time("2018-05-29 20:12:38")
        );
    }

    #[test]
    fn openstack_times_are_read_as_utc() {
        for (text, want) in [
            (
                "2018-05-29 20:12:38.640725",
                "2018-05-29T20:12:38.640725+00:00",
            ),
            ("2012-10-29T13:42:11Z", "2012-10-29T13:42:11+00:00"),
            ("2016-03-07 17:24:49+00:00", "2016-03-07T17:24:49+00:00"),
            ("2015-08-06T12:48:14.000000", "2015-08-06T12:48:14+00:00"),
        ] {
            assert_eq!(
                parse_openstack_time(text).unwrap().to_rfc3339(),
                want,
                "{text}"
            );
        }
        assert!(parse_openstack_time("yesterday").is_none());
    }
}
