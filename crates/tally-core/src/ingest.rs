//! What an ingest caller gets back: counts and one error per refused record.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable, machine-readable reason a record or request was refused.
///
/// These strings are part of the API: clients match on them, so a variant's
/// wire name never changes once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RejectCode {
    /// The bytes are not JSON, or not the JSON shape expected.
    MalformedJson,
    /// A required field is absent or empty.
    MissingField,
    /// A field has the wrong JSON type or an unusable value.
    InvalidField,
    /// `specversion` is not `1.0`.
    UnsupportedSpecversion,
    /// `time` is not RFC 3339 with an offset.
    InvalidTime,
    /// `data.volume` is not a finite decimal that can be stored exactly.
    InvalidVolume,
    /// `data.kind` is not gauge, delta or cumulative.
    InvalidKind,
    /// An attribute is not a scalar.
    InvalidAttribute,
    /// A string field is longer than Tally stores.
    FieldTooLong,
}

impl RejectCode {
    /// The wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::MalformedJson => "malformed_json",
            RejectCode::MissingField => "missing_field",
            RejectCode::InvalidField => "invalid_field",
            RejectCode::UnsupportedSpecversion => "unsupported_specversion",
            RejectCode::InvalidTime => "invalid_time",
            RejectCode::InvalidVolume => "invalid_volume",
            RejectCode::InvalidKind => "invalid_kind",
            RejectCode::InvalidAttribute => "invalid_attribute",
            RejectCode::FieldTooLong => "field_too_long",
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One refused record of a batch: where it was, what it was, and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rejection {
    /// Zero-based position of the record in the request (or the file).
    pub index: u64,
    /// The record's id when it could be read, so the sender can find it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    /// The stable reason.
    pub code: RejectCode,
    /// A message that names the field and what is wrong with it.
    pub message: String,
}

/// The answer to an ingest request or file import.
///
/// `accepted + duplicates + rejected.len()` equals the number of records the
/// caller sent. Accepted records were durable before this was produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestSummary {
    /// Records stored by this request.
    pub accepted: u64,
    /// Records whose (source, id) was already stored; not stored again.
    pub duplicates: u64,
    /// Records refused, each with its reason.
    pub rejected: Vec<Rejection>,
}

impl IngestSummary {
    /// Adds another summary's counts and rejections to this one.
    pub fn merge(&mut self, other: IngestSummary) {
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.rejected.extend(other.rejected);
    }

    /// Total number of records this summary accounts for.
    pub fn total(&self) -> u64 {
        self.accepted + self.duplicates + self.rejected.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_serializes_to_the_documented_shape() {
        let s = IngestSummary {
            accepted: 2,
            duplicates: 1,
            rejected: vec![Rejection {
                index: 3,
                id: Some("e-4".into()),
                code: RejectCode::InvalidTime,
                message: "time has no offset".into(),
            }],
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"accepted":2,"duplicates":1,"rejected":[{"index":3,"id":"e-4","code":"invalid_time","message":"time has no offset"}]}"#
        );
        assert_eq!(s.total(), 4);
    }

    #[test]
    fn code_names_match_serde_names() {
        for code in [
            RejectCode::MalformedJson,
            RejectCode::MissingField,
            RejectCode::InvalidField,
            RejectCode::UnsupportedSpecversion,
            RejectCode::InvalidTime,
            RejectCode::InvalidVolume,
            RejectCode::InvalidKind,
            RejectCode::InvalidAttribute,
            RejectCode::FieldTooLong,
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }
}
