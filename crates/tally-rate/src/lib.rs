//! Tally's rate module: meter definitions, metering of one resource's raw
//! records into lines, and the rating job that runs it over a period of the
//! raw store on Apache DataFusion.
//!
//! Layers, pure first: [`meters`] (definition files), [`aggregate`] (one
//! resource's records → unpriced lines; no I/O), [`lines`] (rated lines as
//! Arrow/Parquet), [`job`] (the DataFusion scan and the per-partition
//! tasks), [`runs`] (the run catalog, line files, reading current lines back),
//! [`plans`] (meter definitions and plans in force), [`service`] (what the
//! CLI and API call).

pub mod aggregate;
pub mod carry;
pub mod cells;
pub mod job;
pub mod levels;
pub mod lines;
pub mod meters;
pub mod plans;
pub mod runs;
pub mod service;
pub mod shuffle;

pub use aggregate::{
    DurationError, MeteredLine, Metering, RatingWindow, RawUsage, WindowError, parse_duration,
};
pub use job::{
    LineSink, PricedLine, RatingConfig, RatingError, RatingRequest, ResourceLines, RunTotals,
};
pub use meters::{Aggregation, MeterDefinition, MeterSet, RecordSelector};
pub use service::{LineFilter, QuoteRequest, RatingService, ServiceError};
