//! Tally's collect module: turning bytes that producers send into usage
//! records, with one clear error per bad record.
//!
//! Two ideas are kept apart on purpose:
//! - **framing** ([`Framing`]) says how a body holds its elements: one JSON
//!   object, a JSON array, or newline-delimited JSON;
//! - a **decoder** ([`Decoder`]) turns one element into records.
//!
//! The HTTP endpoint, `tally ingest` and (later) the message-bus consumer all
//! combine the two the same way through [`decode_body`] or [`files`], so a
//! new input format is one new `Decoder` implementation.
//!
//! This crate does no network I/O; [`files`] reads local files.

pub mod cloudevents;
pub mod decoder;
pub mod files;
pub mod framing;
pub mod openstack;

pub use cloudevents::CloudEventsDecoder;
pub use decoder::{
    Decoded, Decoder, ElementError, FORMATS, decode_body, decode_elements, decoder_for,
};
pub use framing::{BodyError, Framing};
pub use openstack::OpenStackDecoder;
