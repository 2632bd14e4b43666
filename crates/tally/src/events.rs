//! `tally events`: list raw usage records.

use chrono::{DateTime, Utc};
use tally_api::events::EventList;
use tally_core::{Identity, Role};
use tally_db::Database;
use tally_store::{DataDirLock, EventFilter, LockHolder, QueryCursor, RawStore};

use crate::client;
use crate::config::Config;
use crate::output::OutputFormat;

/// Arguments of `tally events`.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Only this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only this resource.
    #[arg(long)]
    pub resource: Option<String>,
    /// Only this meter.
    #[arg(long)]
    pub meter: Option<String>,
    /// Event time at or after (RFC 3339).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// Event time before (RFC 3339).
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
    /// Records per page.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue after this cursor (printed at the end of a page).
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub remote: client::ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Runs `tally events`.
pub async fn run(cfg: Config, args: EventsArgs) -> anyhow::Result<()> {
    let page: serde_json::Value = match args.remote.connect(&cfg)? {
        Some(server) => {
            let mut q: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
            let opt = [
                ("project_id", args.project.clone()),
                ("resource_id", args.resource.clone()),
                ("meter", args.meter.clone()),
                ("from", args.from.map(|t| t.to_rfc3339())),
                ("to", args.to.map(|t| t.to_rfc3339())),
                ("cursor", args.cursor.clone()),
            ];
            q.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
            server
                .json(server.request(reqwest::Method::GET, "/v1/events").query(&q))
                .await?
        }
        None => {
            let _lock = DataDirLock::acquire(
                &cfg.data_dir,
                &LockHolder {
                    pid: std::process::id(),
                    command: "events".into(),
                    listen: None,
                },
            )
            .map_err(|e| anyhow::anyhow!("{e}: ask it with --server http://ADDR instead"))?;
            let db = Database::open(&cfg.database_url()).await?;
            let store = RawStore::open(cfg.store_config(), db).await?;
            let filter = EventFilter {
                project_id: args.project.clone(),
                resource_id: args.resource.clone(),
                meter: args.meter.clone(),
                from: args.from,
                to: args.to,
            };
            let cursor = args
                .cursor
                .as_deref()
                .map(QueryCursor::decode)
                .transpose()?;
            // The local data directory belongs to whoever can read it: the
            // operator, with admin scope.
            let operator = Identity {
                principal: "local".into(),
                role: Role::Admin,
            };
            let page = store
                .query(&operator, &filter, cursor.as_ref(), args.limit.max(1))
                .await?;
            store.shutdown().await?;
            serde_json::to_value(EventList::new(page.records, page.next.as_ref()))?
        }
    };
    match args.output {
        OutputFormat::Json => println!("{page}"),
        OutputFormat::Table => print_table(&page),
    }
    Ok(())
}

fn print_table(page: &serde_json::Value) {
    let s = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string()
    };
    println!(
        "{:<20}  {:<32}  {:<36}  {:<22}  {:>14}  unit",
        "time", "project", "resource", "meter", "volume"
    );
    for e in page["events"].as_array().into_iter().flatten() {
        println!(
            "{:<20}  {:<32}  {:<36}  {:<22}  {:>14}  {}",
            s(e, "time"),
            s(e, "project_id"),
            s(e, "resource_id"),
            s(e, "meter"),
            s(e, "volume"),
            s(e, "unit")
        );
    }
    if let Some(c) = page["next_cursor"].as_str() {
        println!("more: --cursor {c}");
    }
}
