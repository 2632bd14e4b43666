//! `tally admin`: API keys.

use clap::{Subcommand, ValueEnum};
use tally_admin::ApiKeys;
use tally_core::Role;
use tally_db::Database;

use crate::config::Config;
use crate::output::OutputFormat;

/// `tally admin ...`
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// Roles a key can have.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RoleName {
    /// Everything.
    Admin,
    /// One project (needs --project).
    ProjectReader,
    /// One billing account: its invoices, balance and ledger (needs --account).
    AccountReader,
}

/// `tally admin key ...`
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key; its secret is printed once.
    Create {
        /// What the key may do.
        #[arg(long, value_enum)]
        role: RoleName,
        /// The project of a project_reader key.
        #[arg(long)]
        project: Option<String>,
        /// The billing account of an account_reader key.
        #[arg(long)]
        account: Option<String>,
        /// A note for people.
        #[arg(long, default_value = "")]
        label: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// List keys (never their secrets).
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key id (as listed).
        key_id: String,
    },
}

/// Runs `tally admin`.
pub async fn run(cfg: Config, cmd: AdminCommand) -> anyhow::Result<()> {
    // The database allows a server and this command at once (SQLite WAL).
    let db = Database::open(&cfg.database_url()).await?;
    let keys = ApiKeys::new(db.pool.clone());
    let AdminCommand::Key { command } = cmd;
    match command {
        KeyCommand::Create {
            role,
            project,
            account,
            label,
            output,
        } => {
            let role = match (role, project, account) {
                (RoleName::Admin, None, None) => Role::Admin,
                (RoleName::ProjectReader, Some(project_id), None) => {
                    Role::ProjectReader { project_id }
                }
                (RoleName::ProjectReader, _, _) => {
                    anyhow::bail!("a project_reader key needs --project ID (and no --account)")
                }
                (RoleName::AccountReader, None, Some(account_id)) => {
                    // The key is useless for an account that does not exist.
                    tally_bill::accounts::get_account(
                        &db,
                        &tally_bill::AccountScope::All,
                        &account_id,
                    )
                    .await?;
                    Role::AccountReader { account_id }
                }
                (RoleName::AccountReader, _, _) => {
                    anyhow::bail!("an account_reader key needs --account ID (and no --project)")
                }
                (RoleName::Admin, _, _) => {
                    anyhow::bail!("--project and --account apply to reader keys only")
                }
            };
            let key = keys.create(role, &label).await?;
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"key": key.secret, "info": key.info})
                ),
                OutputFormat::Table => {
                    println!("{}", key.secret);
                    eprintln!(
                        "key id {} ({}); the secret above is shown only once",
                        key.info.key_id,
                        key.info.role.name()
                    );
                }
            }
        }
        KeyCommand::List { output } => {
            let list = keys.list().await?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string(&list)?),
                OutputFormat::Table => {
                    println!(
                        "{:<14}  {:<16}  {:<22}  {:<22}  label",
                        "key id", "role", "created", "last used"
                    );
                    for k in list {
                        println!(
                            "{:<14}  {:<16}  {:<22}  {:<22}  {}{}",
                            k.key_id,
                            k.role.name(),
                            k.created_at,
                            k.last_used_at.unwrap_or_else(|| "-".into()),
                            k.label,
                            if k.revoked_at.is_some() {
                                " (revoked)"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
        }
        KeyCommand::Revoke { key_id } => {
            keys.revoke(&key_id).await?;
            eprintln!("revoked key {key_id}");
        }
    }
    Ok(())
}
