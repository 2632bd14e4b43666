//! The `tally` binary: one command with subcommands for every job.
//!
//! This is the edge of the program: it parses arguments and configuration,
//! sets up logging and metrics, and calls the library crates. `anyhow` is
//! used here and only here, to add context to errors on their way to the
//! user.

mod admin;
mod allocator;
mod audit;
mod billing;
mod client;
mod config;
mod demo;
mod events;
mod gen_cmd;
mod ingest;
mod output;
mod plan;
mod rating;
mod reconcile;
mod serve;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[cfg(test)]
use crate::output::OutputFormat;

/// Tally meters, rates and bills the use of OpenStack clouds.
#[derive(Parser, Debug)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML). Default: ./tally.toml when it exists.
    /// Every key can also be set with a TALLY_... environment variable.
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir` in the configuration).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Billing database URL: sqlite://PATH or postgres://USER@HOST/DB
    /// (overrides `database_url`; default: a SQLite file in the data
    /// directory).
    #[arg(long, global = true, env = "TALLY_DATABASE_URL")]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: HTTP ingest and API, flushing, compaction.
    Serve {
        /// Address to listen on (overrides `listen`).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Import event files (NDJSON or JSON arrays; plain, .gz or .zst).
    Ingest(ingest::IngestArgs),
    /// List raw usage records with their original payloads.
    Events(events::EventsArgs),
    /// Generate realistic OpenStack-like usage as CloudEvents NDJSON.
    Gen(gen_cmd::GenArgs),
    /// Start a server on a data directory and send it a generated sample.
    Demo(demo::DemoArgs),
    /// Rate a range of raw usage into priced lines (replaces the range's lines).
    Rate(rating::RateArgs),
    /// List rated lines.
    Lines(rating::LinesArgs),
    /// Price plans: check, apply, import from CloudKitty, list, simulate.
    Plan {
        #[command(subcommand)]
        command: plan::PlanCommand,
    },
    /// List the meter definitions in force (or a file's), or replace them.
    Meters(plan::MetersArgs),
    /// Billing accounts: create, own projects and domains, plans, coupons,
    /// top-ups, balances and the ledger.
    Account {
        #[command(subcommand)]
        command: billing::AccountCommand,
    },
    /// Invoices: run a period, list, show, finalize, pay, void, credit.
    Invoice {
        #[command(subcommand)]
        command: billing::InvoiceCommand,
    },
    /// Alerts: budgets crossed, low prepaid balances, webhook deliveries.
    Alert {
        #[command(subcommand)]
        command: billing::AlertCommand,
    },
    /// Reconcile Tally's usage with another system's (Nova's
    /// os-simple-tenant-usage).
    Reconcile {
        #[command(subcommand)]
        command: reconcile::ReconcileCommand,
    },
    /// Reports: usage that no account pays for.
    Report {
        #[command(subcommand)]
        command: billing::ReportCommand,
    },
    /// Cost, grouped and bucketed (account, project, service, meter,
    /// resource, attributes; hour, day, month).
    Costs(show::SummaryArgs),
    /// Usage per meter, grouped and bucketed like `costs`.
    Usage(show::SummaryArgs),
    /// Why a rated line costs what it does: run, meter, plan rule, raw
    /// records with their payloads.
    Explain(show::ExplainArgs),
    /// Exports: FOCUS 1.2 (CSV or Parquet) of a billing period.
    Export {
        #[command(subcommand)]
        command: show::ExportCommand,
    },
    /// Administration: API keys.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
}

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    let argv: Vec<String> = std::env::args().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, &matches, &argv));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, matches: &clap::ArgMatches, argv: &[String]) -> anyhow::Result<ExitCode> {
    let mut cfg = config::Config::load(cli.config.as_deref())?;
    if let Some(d) = cli.data_dir {
        cfg.data_dir = d;
    }
    if let Some(url) = cli.database {
        cfg.database_url = Some(url);
    }
    let audited = audit::local_write(matches, argv, &cfg);
    let kept = audited.as_ref().map(|_| cfg.clone());
    let code = dispatch(cfg, cli.command).await?;
    if let (Some((action, subject)), Some(cfg)) = (audited, kept)
        && code == ExitCode::SUCCESS
    {
        audit::record_local(&cfg, action, subject).await;
    }
    Ok(code)
}

/// Runs one command.
async fn dispatch(mut cfg: config::Config, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { listen } => {
            if let Some(l) = listen {
                cfg.listen = l;
            }
            config::init_logging(&cfg);
            serve::run(cfg, None, serve::shutdown_signal()).await?;
        }
        Command::Ingest(args) => {
            config::init_logging_quiet(&cfg);
            return ingest::run(cfg, args).await;
        }
        Command::Events(args) => {
            config::init_logging_quiet(&cfg);
            events::run(cfg, args).await?;
        }
        Command::Gen(args) => gen_cmd::run(args)?,
        Command::Demo(args) => {
            config::init_logging_quiet(&cfg);
            demo::run(cfg, args).await?;
        }
        Command::Rate(args) => {
            config::init_logging_quiet(&cfg);
            rating::rate(cfg, args).await?;
        }
        Command::Lines(args) => {
            config::init_logging_quiet(&cfg);
            rating::lines(cfg, args).await?;
        }
        Command::Plan { command } => {
            config::init_logging_quiet(&cfg);
            return plan::run(cfg, command).await;
        }
        Command::Meters(args) => {
            config::init_logging_quiet(&cfg);
            plan::meters(cfg, args).await?;
        }
        Command::Account { command } => {
            config::init_logging_quiet(&cfg);
            billing::account(cfg, command).await?;
        }
        Command::Invoice { command } => {
            config::init_logging_quiet(&cfg);
            billing::invoice(cfg, command).await?;
        }
        Command::Alert { command } => {
            config::init_logging_quiet(&cfg);
            billing::alert(cfg, command).await?;
        }
        Command::Reconcile { command } => {
            config::init_logging_quiet(&cfg);
            reconcile::run(cfg, command).await?;
        }
        Command::Report { command } => {
            config::init_logging_quiet(&cfg);
            billing::report(cfg, command).await?;
        }
        Command::Costs(args) => {
            config::init_logging_quiet(&cfg);
            show::run_summary(cfg, args, false).await?;
        }
        Command::Usage(args) => {
            config::init_logging_quiet(&cfg);
            show::run_summary(cfg, args, true).await?;
        }
        Command::Explain(args) => {
            config::init_logging_quiet(&cfg);
            show::run_explain(cfg, args).await?;
        }
        Command::Export { command } => {
            config::init_logging_quiet(&cfg);
            show::run_export(cfg, command).await?;
        }
        Command::Admin { command } => {
            config::init_logging_quiet(&cfg);
            admin::run(cfg, command).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn output_flag_parses() {
        let cli = Cli::try_parse_from(["tally", "ingest", "--output", "json", "a.ndjson"]).unwrap();
        match cli.command {
            Command::Ingest(a) => assert_eq!(a.output, OutputFormat::Json),
            other => panic!("{other:?}"),
        }
    }
}
