//! Tally's rate module: meter definitions, metering of one resource's raw
//! records into lines, and the rating job that runs it over a period of the
//! raw store on Apache DataFusion.
//!
//! Layers, pure first: [`meters`] (definition files), [`aggregate`] (one
//! resource's records → unpriced lines; no I/O), [`lines`] (rated lines as
//! Arrow/Parquet), [`job`] (the DataFusion scan and the per-partition
//! tasks), [`runs`] (the run catalog and line files), [`query`] (reading
//! current lines back).

pub mod aggregate;
pub mod job;
pub mod lines;
pub mod meters;
pub mod runs;

pub use aggregate::{MeteredLine, Metering, RatingWindow, RawUsage, WindowError};
pub use job::{LineSink, RatingConfig, RatingError, RatingRequest, RunTotals};
pub use meters::{Aggregation, MeterDefinition, MeterSet, RecordSelector};
