//! `tally plan check` and `tally meters`: the price plan and meter
//! definition formats, usable before the rating job that applies them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use tally_price::PricePlan;
use tally_rate::MeterSet;

use crate::output::OutputFormat;

/// `tally plan ...`
#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Check a price plan file: prints its versions and rules, or what to fix.
    Check {
        /// The plan (TOML, see docs/pricing.md).
        file: PathBuf,
        /// Meter definitions its rules must refer to (default: the OpenStack set).
        #[arg(long)]
        meters: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Validate a plan and store it; the first plan (or one applied with
    /// --default) prices rating runs.
    Apply {
        /// The plan (TOML).
        file: PathBuf,
        /// Make it the plan that prices rating runs.
        #[arg(long)]
        default: bool,
    },
    /// Create a plan from a CloudKitty hashmap listing (one JSON object with
    /// services, fields, groups, mappings and thresholds).
    ImportCloudkitty {
        /// The listing (JSON).
        file: PathBuf,
        /// The new plan's id.
        #[arg(long)]
        id: String,
        /// Its currency (ISO 4217): CloudKitty costs carry none.
        #[arg(long)]
        currency: String,
        /// Make it the plan that prices rating runs.
        #[arg(long)]
        default: bool,
    },
    /// List stored plans.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Rate a range with a candidate plan, store nothing, and compare with
    /// the current lines per project and meter.
    Simulate {
        /// The candidate plan (TOML).
        #[arg(long)]
        plan: PathBuf,
        #[command(flatten)]
        range: crate::rating::RangeArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// `tally meters`
#[derive(clap::Args, Debug)]
pub struct MetersArgs {
    /// A meter definitions file to list (default: the definitions in force).
    #[arg(long, conflicts_with = "apply")]
    pub file: Option<PathBuf>,
    /// Validate a definitions file and make it the one in force.
    #[arg(long)]
    pub apply: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

fn load_meters(file: Option<&PathBuf>) -> anyhow::Result<MeterSet> {
    match file {
        None => Ok(MeterSet::openstack_default()),
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            MeterSet::from_toml(&text).with_context(|| format!("{} is not usable", f.display()))
        }
    }
}

/// Runs `tally plan`.
pub async fn run(cfg: crate::config::Config, cmd: PlanCommand) -> anyhow::Result<ExitCode> {
    use crate::rating;
    let (file, meters, output) = match cmd {
        PlanCommand::Check {
            file,
            meters,
            output,
        } => (file, meters, output),
        PlanCommand::Apply { file, default } => {
            return rating::plan_apply(cfg, file, default).await;
        }
        PlanCommand::ImportCloudkitty {
            file,
            id,
            currency,
            default,
        } => return rating::plan_import_cloudkitty(cfg, file, id, currency, default).await,
        PlanCommand::List { output } => {
            rating::plan_list(cfg, output).await?;
            return Ok(ExitCode::SUCCESS);
        }
        PlanCommand::Simulate {
            plan,
            range,
            output,
        } => return rating::plan_simulate(cfg, plan, range, output).await,
    };
    let meter_set = load_meters(meters.as_ref())?;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let plan = match PricePlan::from_toml(&text, Some(&meter_set.names())) {
        Ok(p) => p,
        Err(e) => {
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"valid": false, "file": file.display().to_string(), "error": e.to_string()})
                ),
                OutputFormat::Table => eprintln!("{}: {e}", file.display()),
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    match output {
        OutputFormat::Json => {
            let versions: Vec<_> = plan
                .versions
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "version": v.number,
                        "effective_from": v.effective_from,
                        "rules": v.rules.iter().map(|r| serde_json::json!({
                            "index": r.index,
                            "meter": r.meter,
                            "match": r.matches,
                            "projects": r.projects,
                            "charge": r.rule.charge,
                            "free_allowance": r.rule.free_allowance,
                            "minimum": r.rule.minimum,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"valid": true, "id": plan.id, "currency": plan.currency, "versions": versions})
            );
        }
        OutputFormat::Table => {
            println!(
                "plan {} ({}), currency {}: valid",
                plan.id, plan.name, plan.currency
            );
            for v in &plan.versions {
                println!(
                    "  version {} from {}: {} rules",
                    v.number,
                    v.effective_from,
                    v.rules.len()
                );
                for r in &v.rules {
                    let scope = if r.projects.is_empty() {
                        String::new()
                    } else {
                        format!(" projects {:?}", r.projects)
                    };
                    println!("    [{}] {} {:?}{scope}", r.index, r.meter, r.matches);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `tally meters`.
pub async fn meters(cfg: crate::config::Config, args: MetersArgs) -> anyhow::Result<()> {
    let set = match (&args.file, &args.apply) {
        (Some(f), _) => load_meters(Some(f))?,
        (None, apply) => {
            let db = tally_db::Database::open(&cfg.database_url()).await?;
            match apply {
                Some(f) => {
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    tally_rate::plans::replace_meters(&db, &text)
                        .await
                        .with_context(|| {
                            format!(
                                "{} is not usable; the definitions in force are unchanged",
                                f.display()
                            )
                        })?
                }
                None => tally_rate::plans::current_meters(&db).await?,
            }
        }
    };
    match args.output {
        OutputFormat::Json => {
            let list = set.summaries();
            println!("{}", serde_json::to_string(&list)?);
        }
        OutputFormat::Table => {
            println!(
                "{:<26}  {:<10}  {:<24}  description",
                "meter", "unit", "from records"
            );
            for m in &set.meters {
                println!(
                    "{:<26}  {:<10}  {:<24}  {}",
                    m.name, m.unit, m.records.meter, m.description
                );
            }
        }
    }
    Ok(())
}
