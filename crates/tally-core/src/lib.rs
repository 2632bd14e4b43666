//! Tally's pure core: the domain types every other crate speaks.
//!
//! This crate holds the usage record (the raw billing data), its validation
//! rules, the ingest summary a caller gets back, exact money, and the caller's
//! identity. It has no I/O and no async on purpose: everything here must be
//! testable as plain functions and usable from any layer (HTTP, CLI, the
//! rating engine) without dragging a runtime along. Nothing in this crate may
//! depend on another Tally crate.

pub mod billing;
pub mod cloudkitty;
pub mod document;
pub mod focus;
pub mod identity;
pub mod ingest;
pub mod invoice;
pub mod ledger;
pub mod metering;
pub mod money;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod pricing;
pub mod rated;
pub mod record;
pub mod rollup;
pub mod service;
pub mod summary_levels;
pub mod volume;

pub use document::DocumentError;
pub use identity::{Identity, Role};
pub use ingest::{IngestSummary, RejectCode, Rejection};
pub use money::{Currency, Money, MoneyError, ROUNDING_RULE, rounded_amount};
pub use pricing::{Charge, PriceRule, Priced, PricingError, Tier, TierCharge};
pub use rated::{RatedLine, line_id, parse_line_id};
pub use record::{AttributeValue, Attributes, MeterKind, RecordKey, UsageRecord};
pub use volume::{VolumeError, parse_volume_text};
