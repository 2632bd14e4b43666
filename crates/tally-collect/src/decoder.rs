//! The decoder trait and the loop that applies it to a framed body.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tally_core::{RejectCode, Rejection, UsageRecord};

use crate::framing::{BodyError, Framing};

/// Why one element could not be turned into records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementError {
    /// The element's id, when it could be read before the error.
    pub id: Option<String>,
    /// The stable reason.
    pub code: RejectCode,
    /// What is wrong and which field, in words a sender can act on.
    pub message: String,
}

impl ElementError {
    /// An error without a known record id.
    pub fn new(code: RejectCode, message: impl Into<String>) -> ElementError {
        ElementError {
            id: None,
            code,
            message: message.into(),
        }
    }
}

/// One input format: turns one element (a JSON object, a line) into zero or
/// more usage records. Implementations must be pure functions of their input
/// and `received_at`, so a redelivered element gives the same records (and so
/// the same idempotency keys).
pub trait Decoder: Send + Sync {
    /// A short name of the format, for logs and errors.
    fn format(&self) -> &'static str;

    /// Decodes one element. `element` is kept as the records' payload.
    fn decode(
        &self,
        element: &Bytes,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>, ElementError>;
}

/// The records and rejections decoded from a body or a chunk of a file.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Good records, each with the index of the element it came from.
    pub records: Vec<(u64, UsageRecord)>,
    /// One entry per refused element.
    pub rejected: Vec<Rejection>,
}

/// Splits a body with `framing` and decodes every element. A body that cannot
/// be framed at all is refused as a whole; otherwise each bad element gets a
/// rejection and the good ones are returned.
pub fn decode_body(
    decoder: &dyn Decoder,
    framing: Framing,
    body: &Bytes,
    received_at: DateTime<Utc>,
) -> Result<(Decoded, u64), BodyError> {
    let elements = framing.split(body)?;
    let n = elements.len() as u64;
    Ok((decode_elements(decoder, &elements, 0, received_at), n))
}

/// Decodes a run of elements whose first has index `base_index`.
pub fn decode_elements(
    decoder: &dyn Decoder,
    elements: &[Bytes],
    base_index: u64,
    received_at: DateTime<Utc>,
) -> Decoded {
    let mut out = Decoded {
        records: Vec::with_capacity(elements.len()),
        rejected: Vec::new(),
    };
    for (i, element) in elements.iter().enumerate() {
        let index = base_index + i as u64;
        match decoder.decode(element, received_at) {
            Ok(records) => out.records.extend(records.into_iter().map(|r| (index, r))),
            Err(e) => out.rejected.push(Rejection {
                index,
                id: e.id,
                code: e.code,
                message: e.message,
            }),
        }
    }
    out
}

/// The input formats Tally knows, by name. The HTTP endpoint's `format`
/// query parameter and `tally ingest --format` pick from these.
pub fn decoder_for(format: &str) -> Option<std::sync::Arc<dyn Decoder>> {
    match format {
        "cloudevents" => Some(std::sync::Arc::new(crate::CloudEventsDecoder)),
        "openstack" => Some(std::sync::Arc::new(crate::OpenStackDecoder)),
        _ => None,
    }
}

/// Names accepted by [`decoder_for`].
pub const FORMATS: &[&str] = &["cloudevents", "openstack"];
