//! The binary form of a usage record inside the write-ahead log.
//!
//! Hand-written rather than serde-derived because it sits on the hottest path
//! (every acknowledged record is encoded once) and must stay stable across
//! releases: a log written by one version is replayed by the next. Layout of
//! one record, little-endian:
//!
//! ```text
//! str id | str source | i64 time_us | i64 received_us | str project_id
//! | opt user_id | opt domain_id | str resource_id | str meter | u8 kind
//! | [u8;16] volume (rust_decimal serialized) | opt unit
//! | str attributes_json | bytes payload
//! str/bytes = u32 length + bytes; opt = u8 flag (0/1) + str
//! ```
//!
//! Within one frame, `attributes_json` and `payload` may instead be the
//! length `u32::MAX` alone, meaning "the same as the record before". One
//! notification becomes several records (an instance's existence, vCPUs,
//! RAM and disk) that share the message's payload and mostly their
//! attributes; writing the payload once per message instead of once per
//! record cuts the log's bytes about fourfold on the consumer's hot path.
//! Logs written before this marker existed never contain it (no field is
//! 4 GiB long), so they replay unchanged.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{Attributes, MeterKind, UsageRecord};

/// A log entry that cannot be decoded (only possible with a corrupted log
/// whose checksum still matched, or a log from an incompatible version).
#[derive(Debug, thiserror::Error)]
#[error("corrupt record in the write-ahead log: {0}")]
pub struct CodecError(pub String);

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_bytes(out, s.as_bytes());
        }
    }
}

/// Microseconds since the epoch; the store's time resolution.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The instant of a microsecond timestamp.
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).expect("timestamps in range")
}

/// The length that stands for "the same bytes as the previous record".
const SAME_AS_PREVIOUS: u32 = u32::MAX;

/// The attributes of a run of records as JSON, serialized only when they
/// differ from the previous record's. One message's records (an instance's
/// vCPUs, RAM and disk) sit side by side in a log frame and in a segment,
/// and mostly have equal attributes. Compared by value: they share maps by
/// content, not by allocation, and a map of a handful of scalars compares
/// faster than it serializes.
#[derive(Default)]
pub struct AttributesJson<'a> {
    previous: Option<(&'a Attributes, String)>,
}

impl<'a> AttributesJson<'a> {
    /// The JSON of `r`'s attributes, and whether it is the previous call's.
    pub fn of(&mut self, r: &'a UsageRecord) -> (&str, bool) {
        let same = matches!(&self.previous, Some((p, _)) if **p == r.attributes);
        if !same {
            self.previous = Some((&r.attributes, r.attributes_json()));
        }
        let json = self.previous.as_ref().map_or("", |(_, j)| j.as_str());
        (json, same)
    }
}

/// Encodes the records of one log frame, in order, writing a payload or
/// an attribute set that equals the previous record's as a back-reference.
/// The reader of the frame must read every record in the same order.
#[derive(Default)]
pub struct FrameEncoder<'a> {
    previous: Option<&'a UsageRecord>,
    attributes: AttributesJson<'a>,
}

impl<'a> FrameEncoder<'a> {
    /// A fresh encoder, for a new frame.
    pub fn new() -> Self {
        FrameEncoder::default()
    }

    /// Appends one record's encoding to `out`.
    pub fn push(&mut self, r: &'a UsageRecord, out: &mut Vec<u8>) {
        encode_fields(r, out);
        match self.attributes.of(r) {
            (_, true) => out.extend_from_slice(&SAME_AS_PREVIOUS.to_le_bytes()),
            (json, false) => put_bytes(out, json.as_bytes()),
        }
        let previous = self.previous.replace(r);
        if previous.is_some_and(|p| same_bytes(&p.payload, &r.payload)) {
            out.extend_from_slice(&SAME_AS_PREVIOUS.to_le_bytes());
        } else {
            put_bytes(out, &r.payload);
        }
    }
}

/// Whether two payloads are equal, checking the common case (clones of one
/// `Bytes`) without reading them.
pub(crate) fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
    a.len() == b.len() && (a.as_ptr() == b.as_ptr() || a == b)
}

/// Appends one record's encoding to `out`, standing alone (no
/// back-references), as the first record of a frame is written.
pub fn encode(r: &UsageRecord, out: &mut Vec<u8>) {
    FrameEncoder::new().push(r, out);
}

/// Every field before the attributes.
fn encode_fields(r: &UsageRecord, out: &mut Vec<u8>) {
    put_bytes(out, r.id.as_bytes());
    put_bytes(out, r.source.as_bytes());
    out.extend_from_slice(&to_micros(r.time).to_le_bytes());
    out.extend_from_slice(&to_micros(r.received_at).to_le_bytes());
    put_bytes(out, r.project_id.as_bytes());
    put_opt(out, r.user_id.as_deref());
    put_opt(out, r.domain_id.as_deref());
    put_bytes(out, r.resource_id.as_bytes());
    put_bytes(out, r.meter.as_bytes());
    out.push(match r.kind {
        MeterKind::Gauge => 0,
        MeterKind::Delta => 1,
        MeterKind::Cumulative => 2,
    });
    out.extend_from_slice(&r.volume.serialize());
    put_opt(out, r.unit.as_deref());
}

/// Reads records back from an encoded buffer (one frame).
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    /// The previous record's attributes and payload, for back-references.
    previous: Option<(Attributes, Bytes)>,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a Bytes) -> Self {
        Reader {
            buf,
            pos: 0,
            previous: None,
        }
    }

    /// Whether all bytes were consumed.
    pub fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| CodecError("truncated entry".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| CodecError(e.to_string()))
    }

    fn opt(&mut self) -> Result<Option<String>, CodecError> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => self.string().map(Some),
            f => Err(CodecError(format!("bad option flag {f}"))),
        }
    }

    /// Bytes, or `None` for a back-reference to the previous record's.
    fn bytes_or_same(&mut self) -> Result<Option<Bytes>, CodecError> {
        let n = self.u32()?;
        if n == SAME_AS_PREVIOUS {
            return Ok(None);
        }
        let start = self.pos;
        self.take(n as usize)?;
        Ok(Some(self.buf.slice(start..start + n as usize)))
    }

    fn previous(&self, what: &str) -> Result<&(Attributes, Bytes), CodecError> {
        self.previous.as_ref().ok_or_else(|| {
            CodecError(format!(
                "the first record of a frame refers to a previous record's {what}"
            ))
        })
    }

    /// Decodes the next record.
    pub fn record(&mut self) -> Result<UsageRecord, CodecError> {
        let id = self.string()?;
        let source = self.string()?;
        let time = from_micros(self.i64()?);
        let received_at = from_micros(self.i64()?);
        let project_id = self.string()?;
        let user_id = self.opt()?;
        let domain_id = self.opt()?;
        let resource_id = self.string()?;
        let meter = self.string()?;
        let kind = match self.take(1)?[0] {
            0 => MeterKind::Gauge,
            1 => MeterKind::Delta,
            2 => MeterKind::Cumulative,
            k => return Err(CodecError(format!("bad kind {k}"))),
        };
        let volume = Decimal::deserialize(self.take(16)?.try_into().expect("16 bytes"));
        let unit = self.opt()?;
        let attributes: Attributes = match self.bytes_or_same()? {
            Some(json) => {
                serde_json::from_slice(&json).map_err(|e| CodecError(format!("attributes: {e}")))?
            }
            None => self.previous("attributes")?.0.clone(),
        };
        let payload = match self.bytes_or_same()? {
            Some(payload) => payload,
            None => self.previous("payload")?.1.clone(),
        };
        self.previous = Some((attributes.clone(), payload.clone()));
        Ok(UsageRecord {
            id,
            source,
            time,
            received_at,
            project_id,
            user_id,
            domain_id,
            resource_id,
            meter,
            kind,
            volume,
            unit,
            attributes,
            payload,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::str::FromStr;
    use tally_core::AttributeValue;

    pub(crate) fn sample(i: u64) -> UsageRecord {
        let mut attributes = Attributes::new();
        attributes.insert("flavor".into(), AttributeValue::String("m1.small".into()));
        attributes.insert("vcpus".into(), AttributeValue::Number(8.into()));
        attributes.insert(
            "ratio".into(),
            AttributeValue::Number(serde_json::Number::from_f64(8.0).unwrap()),
        );
        UsageRecord {
            id: format!("id-{i}"),
            source: "test".into(),
            time: from_micros(1_790_000_000_000_000 + i as i64 * 1_000_000),
            received_at: from_micros(1_790_000_100_000_000),
            project_id: format!("p-{}", i % 3),
            user_id: if i.is_multiple_of(2) {
                Some("u".into())
            } else {
                None
            },
            domain_id: None,
            resource_id: format!("r-{}", i % 5),
            meter: "volume.size".into(),
            kind: MeterKind::Gauge,
            volume: Decimal::from_str("0.1").unwrap() * Decimal::from(i),
            unit: Some("GiB".into()),
            attributes,
            payload: Bytes::from(format!("{{\"id\":\"id-{i}\"}}")),
        }
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        let records: Vec<_> = (0..10).map(sample).collect();
        for r in &records {
            encode(r, &mut buf);
        }
        let buf = Bytes::from(buf);
        let mut rd = Reader::new(&buf);
        let mut back = Vec::new();
        while !rd.is_done() {
            back.push(rd.record().unwrap());
        }
        assert_eq!(back, records);
        assert_eq!(back[3].attributes_json(), records[3].attributes_json());
    }

    /// Four records of one message: one payload, and the three gauges'
    /// attributes equal.
    fn one_message() -> Vec<UsageRecord> {
        let payload = Bytes::from(vec![b'x'; 2000]);
        (0..4)
            .map(|i| {
                let mut r = sample(i);
                r.payload = payload.clone();
                if i == 0 {
                    r.attributes
                        .insert("status".into(), AttributeValue::String("active".into()));
                }
                r
            })
            .collect()
    }

    fn decode_all(buf: Vec<u8>) -> Result<Vec<UsageRecord>, CodecError> {
        let buf = Bytes::from(buf);
        let mut rd = Reader::new(&buf);
        let mut back = Vec::new();
        while !rd.is_done() {
            back.push(rd.record()?);
        }
        Ok(back)
    }

    #[test]
    fn a_frame_writes_a_shared_payload_and_equal_attributes_once() {
        let records = one_message();
        let mut framed = Vec::new();
        let mut encoder = FrameEncoder::new();
        for r in &records {
            encoder.push(r, &mut framed);
        }
        let mut standalone = Vec::new();
        for r in &records {
            encode(r, &mut standalone);
        }
        // Three payloads of 2,000 bytes are back-references.
        assert!(
            standalone.len() - framed.len() > 3 * 2000,
            "{} vs {}",
            framed.len(),
            standalone.len()
        );
        assert_eq!(decode_all(framed).unwrap(), records);
        // Logs written one record at a time (as before back-references
        // existed) still read.
        assert_eq!(decode_all(standalone).unwrap(), records);
        // A payload equal by content but not by allocation is shared too.
        let mut copied = one_message();
        copied[2].payload = Bytes::from(copied[2].payload.to_vec());
        let mut framed = Vec::new();
        let mut encoder = FrameEncoder::new();
        for r in &copied {
            encoder.push(r, &mut framed);
        }
        assert_eq!(decode_all(framed).unwrap(), copied);
    }

    #[test]
    fn a_back_reference_without_a_previous_record_is_corrupt() {
        let records = one_message();
        let mut buf = Vec::new();
        let mut encoder = FrameEncoder::new();
        for r in &records[..2] {
            encoder.push(r, &mut buf);
        }
        // Drop the first record: the second now opens the frame.
        let mut first = Vec::new();
        encode(&records[0], &mut first);
        let err = decode_all(buf[first.len()..].to_vec()).unwrap_err();
        assert!(err.0.contains("first record of a frame"), "{err}");
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode(&sample(1), &mut buf);
        buf.truncate(buf.len() - 3);
        let buf = Bytes::from(buf);
        assert!(Reader::new(&buf).record().is_err());
    }
}
