//! `tally reconcile nova-usage FILE`: Tally's instance hours against a
//! saved `os-simple-tenant-usage` response, with the reason for each
//! difference (docs/openstack.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use rust_decimal::Decimal;
use tally_collect::openstack::{compare_usage, parse_nova_usage};
use tally_db::Database;

use crate::config::Config;
use crate::output::OutputFormat;

/// `tally reconcile ...`
#[derive(Subcommand, Debug)]
pub enum ReconcileCommand {
    /// Compare instance hours with Nova's os-simple-tenant-usage (the
    /// response saved as JSON, e.g. `openstack usage show -f json` or the
    /// API's body); the window is the response's start and stop.
    NovaUsage {
        /// The saved response.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// Runs `tally reconcile`.
pub async fn run(cfg: Config, cmd: ReconcileCommand) -> anyhow::Result<()> {
    let ReconcileCommand::NovaUsage { file, output } = cmd;
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let nova = parse_nova_usage(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let db = Database::open(&cfg.database_url()).await?;
    let rated = cfg.rated_store()?;
    // Tally's hours are those of the rating periods that start inside the
    // window: a window that does not start on a period boundary differs
    // by up to one period at each end.
    let mut tally: BTreeMap<String, BTreeMap<String, Decimal>> = BTreeMap::new();
    tally_rate::runs::read_current_lines(&db, &rated, nova.start, nova.stop, |l| {
        if l.meter == "instance.hours" {
            let flavor = l.group.get("flavor_name").cloned().unwrap_or_default();
            *tally
                .entry(l.resource_id.clone())
                .or_default()
                .entry(flavor)
                .or_default() += l.quantity;
        }
    })
    .await?;
    let rows = compare_usage(&nova, &tally);
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        OutputFormat::Table => {
            println!(
                "window {} to {}",
                nova.start.to_rfc3339(),
                nova.stop.to_rfc3339()
            );
            for r in &rows {
                println!(
                    "{} ({}): nova {} h at {}, tally {} h, difference {}: {}",
                    r.instance_id,
                    r.name,
                    r.nova_hours,
                    r.nova_flavor,
                    r.tally_hours,
                    r.difference,
                    r.explanation
                );
            }
        }
    }
    Ok(())
}
