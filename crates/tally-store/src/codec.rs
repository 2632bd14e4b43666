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

/// Appends one record's encoding to `out`.
pub fn encode(r: &UsageRecord, out: &mut Vec<u8>) {
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
    put_bytes(out, r.attributes_json().as_bytes());
    put_bytes(out, &r.payload);
}

/// Reads records back from an encoded buffer.
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a Bytes) -> Self {
        Reader { buf, pos: 0 }
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

    fn bytes(&mut self) -> Result<Bytes, CodecError> {
        let n = self.u32()? as usize;
        let start = self.pos;
        self.take(n)?;
        Ok(self.buf.slice(start..start + n))
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
        let attributes: Attributes = serde_json::from_str(&self.string()?)
            .map_err(|e| CodecError(format!("attributes: {e}")))?;
        let payload = self.bytes()?;
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

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode(&sample(1), &mut buf);
        buf.truncate(buf.len() - 3);
        let buf = Bytes::from(buf);
        assert!(Reader::new(&buf).record().is_err());
    }
}
