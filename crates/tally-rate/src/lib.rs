//! Tally's rate module.
//!
//! Today: meter definitions ([`meters`]), which say how raw records of a
//! meter become the quantity that is priced. The rating job that runs them
//! over the raw store on Apache DataFusion comes next and will live here.

pub mod meters;

pub use meters::{Aggregation, MeterDefinition, MeterSet, RecordSelector};
