//! The audit trail of writes made with the CLI on the data directory.
//!
//! Writes through the API are audited by the server (with the caller's key
//! and the subject's state before and after). A command that writes to the
//! data directory directly has no key: it is recorded with the operating
//! system user who ran it and the command line (option values that are
//! secrets left out), after it succeeded. A command sent to a server with
//! `--server` (or `[client] server`) is audited by that server instead.

use clap::ArgMatches;
use tally_admin::audit::{NewAuditEntry, record};

use crate::config::Config;

/// Commands that only read, by `(command, subcommand)`; a subcommand of
/// `None` covers every subcommand. Anything else writes and is audited, so
/// a new command is audited until someone says it only reads.
const READS: &[(&str, Option<&str>)] = &[
    ("serve", None),
    ("ingest", None),
    ("events", None),
    ("gen", None),
    ("demo", None),
    ("lines", None),
    ("costs", None),
    ("usage", None),
    ("explain", None),
    ("export", None),
    ("reconcile", None),
    ("report", None),
    ("plan", Some("check")),
    ("plan", Some("list")),
    ("plan", Some("simulate")),
    ("account", Some("list")),
    ("account", Some("show")),
    ("account", Some("balance")),
    ("account", Some("ledger")),
    ("invoice", Some("list")),
    ("invoice", Some("show")),
    ("invoice", Some("pdf")),
    ("alert", Some("list")),
    ("alert", Some("deliveries")),
];

/// Options whose values are never written to the audit log.
const SECRET_OPTIONS: &[&str] = &["--api-key", "--secret"];

/// What to record for this command line, when it writes locally: the
/// action text and the subject. `None` for reads and for commands a server
/// carries out.
pub fn local_write(
    matches: &ArgMatches,
    argv: &[String],
    cfg: &Config,
) -> Option<(String, String)> {
    let (command, sub) = matches.subcommand()?;
    let subcommand = sub.subcommand_name();
    // `meters` writes only with --apply.
    if command == "meters" && !matches!(sub.try_get_one::<std::path::PathBuf>("apply"), Ok(Some(_)))
    {
        return None;
    }
    if READS
        .iter()
        .any(|(c, s)| *c == command && (s.is_none() || *s == subcommand))
    {
        return None;
    }
    let leaf = sub.subcommand().map_or(sub, |(_, m)| m);
    let remote = matches!(leaf.try_get_one::<String>("server"), Ok(Some(_)));
    if remote || (cfg.client.server.is_some() && leaf.try_get_one::<String>("server").is_ok()) {
        return None;
    }
    let subject = ["id", "account", "invoice", "account_id", "invoice_id"]
        .iter()
        .find_map(|name| leaf.try_get_one::<String>(name).ok().flatten().cloned())
        .unwrap_or_default();
    Some((format!("cli: {}", redacted(argv)), subject))
}

/// The command line with secret option values replaced.
fn redacted(argv: &[String]) -> String {
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for arg in argv {
        if hide_next {
            out.push("<redacted>".to_string());
            hide_next = false;
            continue;
        }
        match SECRET_OPTIONS.iter().find(|o| arg.starts_with(*o)) {
            Some(o) if arg.len() > o.len() && arg.as_bytes()[o.len()] == b'=' => {
                out.push(format!("{o}=<redacted>"));
            }
            Some(o) if arg == o => {
                out.push(arg.clone());
                hide_next = true;
            }
            _ => out.push(arg.clone()),
        }
    }
    out.join(" ")
}

/// Records a local write that succeeded. A failure to record is reported
/// on stderr but does not turn the (done) write into a failure.
pub async fn record_local(cfg: &Config, action: String, subject: String) {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let entry = NewAuditEntry {
        principal: format!("local:{user}"),
        action,
        subject,
        before: None,
        after: None,
    };
    let recorded = match tally_db::Database::open(&cfg.database_url()).await {
        Ok(db) => record(&db.pool, &entry, chrono::Utc::now())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = recorded {
        eprintln!(
            "warning: the command succeeded but could not be recorded in the audit log ({e}): {}",
            entry.action
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_the_command_line() {
        let argv: Vec<String> = [
            "tally",
            "invoice",
            "finalize",
            "x",
            "--api-key",
            "tly_s",
            "--secret=abc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            redacted(&argv),
            "tally invoice finalize x --api-key <redacted> --secret=<redacted>"
        );
    }
}
