//! How commands print: a table for people, JSON for programs.

use clap::ValueEnum;
use tally_core::IngestSummary;

/// `--output`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Aligned text for a terminal.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// `--output` of reports (usage, costs, invoices, explain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ReportFormat {
    /// Aligned text for a terminal.
    #[default]
    Table,
    /// One JSON document.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// Prints an ingest summary.
pub fn print_summary(summary: &IngestSummary, format: OutputFormat) {
    match format {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string(summary).expect("serializable"));
        }
        OutputFormat::Table => {
            println!(
                "accepted {}  duplicates {}  rejected {}",
                summary.accepted,
                summary.duplicates,
                summary.rejected.len()
            );
            if !summary.rejected.is_empty() {
                println!("{:>8}  {:<36}  {:<24}  message", "index", "id", "code");
                for r in &summary.rejected {
                    println!(
                        "{:>8}  {:<36}  {:<24}  {}",
                        r.index,
                        r.id.as_deref().unwrap_or("-"),
                        r.code.as_str(),
                        r.message
                    );
                }
            }
        }
    }
}
