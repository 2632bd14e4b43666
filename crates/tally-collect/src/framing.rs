//! How a body holds its elements.

use bytes::Bytes;
use serde_json::value::RawValue;
use tally_core::RejectCode;

/// The layout of a request body or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON object (`application/cloudevents+json`).
    Single,
    /// A JSON array of objects (`application/cloudevents-batch+json`).
    JsonArray,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
    /// `application/json`: an array or a single object, told apart by the
    /// first non-blank byte.
    Sniff,
}

/// A body refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    /// The stable reason.
    pub code: RejectCode,
    /// What is wrong.
    pub message: String,
}

impl Framing {
    /// The framing for a `Content-Type` value (parameters such as `charset`
    /// are ignored), or `None` when Tally does not accept that type.
    pub fn from_content_type(content_type: &str) -> Option<Framing> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/cloudevents+json" => Some(Framing::Single),
            "application/cloudevents-batch+json" => Some(Framing::JsonArray),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Some(Framing::Ndjson)
            }
            "application/json" => Some(Framing::Sniff),
            _ => None,
        }
    }

    /// Splits a body into its elements without copying them.
    pub fn split(self, body: &Bytes) -> Result<Vec<Bytes>, BodyError> {
        match self {
            Framing::Single => {
                if first_non_blank(body).is_none() {
                    return Err(malformed("the body is empty: send one CloudEvent object"));
                }
                serde_json::from_slice::<&RawValue>(body)
                    .map_err(|e| malformed(format!("the body is not valid JSON: {e}")))?;
                Ok(vec![body.clone()])
            }
            Framing::JsonArray => split_array(body),
            Framing::Ndjson => Ok(split_lines(body)),
            Framing::Sniff => match first_non_blank(body) {
                Some(b'[') => split_array(body),
                Some(_) => Framing::Single.split(body),
                None => Err(malformed("the body is empty")),
            },
        }
    }
}

fn malformed(message: impl Into<String>) -> BodyError {
    BodyError {
        code: RejectCode::MalformedJson,
        message: message.into(),
    }
}

fn first_non_blank(b: &[u8]) -> Option<u8> {
    b.iter().copied().find(|c| !c.is_ascii_whitespace())
}

fn split_array(body: &Bytes) -> Result<Vec<Bytes>, BodyError> {
    let items: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("the body is not a valid JSON array of events: {e}")))?;
    let base = body.as_ptr() as usize;
    Ok(items
        .into_iter()
        .map(|raw| {
            // RawValue borrows from `body`, so its offset is a pointer difference.
            let start = raw.get().as_ptr() as usize - base;
            body.slice(start..start + raw.get().len())
        })
        .collect())
}

/// Splits newline-delimited JSON. Blank lines are skipped (they are not
/// records) and a trailing `\r` is dropped, so CRLF files work.
pub fn split_lines(body: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = &body[..];
    while start < bytes.len() {
        let end = memchr_newline(&bytes[start..]).map_or(bytes.len(), |i| start + i);
        let mut line_end = end;
        if line_end > start && bytes[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        if bytes[start..line_end]
            .iter()
            .any(|c| !c.is_ascii_whitespace())
        {
            out.push(body.slice(start..line_end));
        }
        start = end + 1;
    }
    out
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_map_to_framings() {
        assert_eq!(
            Framing::from_content_type("application/cloudevents+json; charset=utf-8"),
            Some(Framing::Single)
        );
        assert_eq!(
            Framing::from_content_type("application/cloudevents-batch+json"),
            Some(Framing::JsonArray)
        );
        assert_eq!(
            Framing::from_content_type("application/x-ndjson"),
            Some(Framing::Ndjson)
        );
        assert_eq!(Framing::from_content_type("text/plain"), None);
    }

    #[test]
    fn array_elements_are_exact_slices_of_the_body() {
        let body = Bytes::from_static(b" [ {\"a\": 1} ,{\"b\":\"x]\"}\n]");
        let parts = Framing::JsonArray.split(&body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0][..], b"{\"a\": 1}");
        assert_eq!(&parts[1][..], b"{\"b\":\"x]\"}");
    }

    #[test]
    fn broken_array_is_refused_whole() {
        let body = Bytes::from_static(b"[{\"a\":1},");
        let err = Framing::JsonArray.split(&body).unwrap_err();
        assert_eq!(err.code, RejectCode::MalformedJson);
        assert!(Framing::Single.split(&Bytes::from_static(b"{")).is_err());
        assert!(Framing::Single.split(&Bytes::from_static(b"  ")).is_err());
    }

    #[test]
    fn ndjson_skips_blank_lines_and_handles_crlf() {
        let body = Bytes::from_static(b"{\"a\":1}\r\n\n  \n{\"b\":2}");
        let parts = Framing::Ndjson.split(&body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0][..], b"{\"a\":1}");
        assert_eq!(&parts[1][..], b"{\"b\":2}");
    }

    #[test]
    fn sniff_tells_arrays_from_objects() {
        assert_eq!(
            Framing::Sniff
                .split(&Bytes::from_static(b"[{},{}]"))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            Framing::Sniff
                .split(&Bytes::from_static(b"{}"))
                .unwrap()
                .len(),
            1
        );
    }
}
