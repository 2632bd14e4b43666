//! `tally account`, `tally invoice` and `tally report`: the bill module
//! from the command line, on the billing database in force (`--database`).

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_bill::accounts::{self, AccountSpec, Owned};
use tally_bill::invoices::{self, CreditRequest, InvoiceFilter, StoredInvoice};
use tally_bill::{AccountScope, alerts, ledger, reports};
use tally_core::billing::{Coupon, Party, PaymentMode, PeriodLabel};
use tally_core::invoice::{Discount, TaxRate};
use tally_db::Database;

use crate::config::Config;
use crate::output::OutputFormat;

/// `tally account ...`
#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Create a billing account.
    Create(Box<CreateArgs>),
    /// List accounts.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show one account with what it owns, its plans and coupons.
    Show {
        /// Account id.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Make the account pay for a Keystone project.
    AddProject {
        /// Account id.
        id: String,
        /// Keystone project id.
        project: String,
    },
    /// Stop billing a project to the account.
    RemoveProject {
        /// Account id.
        id: String,
        /// Keystone project id.
        project: String,
    },
    /// Make the account pay for every project of a Keystone domain,
    /// including projects created later.
    AddDomain {
        /// Account id.
        id: String,
        /// Keystone domain id.
        domain: String,
    },
    /// Stop billing a domain to the account.
    RemoveDomain {
        /// Account id.
        id: String,
        /// Keystone domain id.
        domain: String,
    },
    /// Record the Keystone domain of a project (so domain-owning accounts
    /// find it).
    MapProject {
        /// Keystone project id.
        project: String,
        /// Its domain id.
        #[arg(long)]
        domain: String,
    },
    /// Price the account's usage with a plan from an instant on (a change
    /// inside a period splits the period).
    AssignPlan {
        /// Account id.
        id: String,
        /// Plan id (`tally plan list`).
        plan: String,
        /// From when (RFC 3339); default: always.
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Until when (RFC 3339, exclusive); then the plan assigned before
        /// resumes (or the default plan).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
    },
    /// Grant a coupon: a percentage or a fixed amount off, for N periods.
    Coupon {
        /// Account id.
        id: String,
        /// Coupon code (printed on invoices).
        code: String,
        /// Percentage off (0–100].
        #[arg(long, conflicts_with = "fixed", required_unless_present = "fixed")]
        percent: Option<Decimal>,
        /// Fixed amount off, in the account's currency.
        #[arg(long)]
        fixed: Option<Decimal>,
        /// First billing period it applies to (YYYY-MM).
        #[arg(long)]
        first_period: String,
        /// How many periods.
        #[arg(long, default_value_t = 1)]
        periods: u32,
    },
    /// Set a budget per billing period for the account (or one of its
    /// projects); alerts are raised at each threshold percentage.
    Budget {
        /// Account id.
        id: String,
        /// The limit per period, in the account's currency.
        amount: Decimal,
        /// Only this project of the account.
        #[arg(long)]
        project: Option<String>,
        /// Alert thresholds in percent, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "50,80,100")]
        thresholds: Vec<Decimal>,
    },
    /// Credit prepaid funds received.
    TopUp {
        /// Account id.
        id: String,
        /// Amount received.
        amount: Decimal,
        /// Payment reference.
        #[arg(long, default_value = "")]
        reference: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Post a manual adjustment of what the account owes (negative lowers it).
    Adjust {
        /// Account id.
        id: String,
        /// Amount (positive: owes more).
        #[arg(allow_negative_numbers = true)]
        amount: Decimal,
        /// Why (required; kept in the ledger).
        #[arg(long)]
        reason: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// What the account owes and its prepaid funds, from the ledger.
    Balance {
        /// Account id.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// The account's ledger transactions.
    Ledger {
        /// Account id.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// `tally account create`
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Account id (letters, digits, '-', '_', '.').
    id: String,
    /// Display name (the buyer on invoices).
    #[arg(long)]
    name: String,
    /// Currency of its invoices (ISO 4217).
    #[arg(long)]
    currency: String,
    /// prepaid or postpaid.
    #[arg(long, default_value = "postpaid")]
    mode: String,
    /// Day of the month periods start (1 = calendar months, up to 28).
    #[arg(long, default_value_t = 1)]
    billing_day: u32,
    /// IANA timezone of period boundaries.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// A tax as NAME=RATE with the rate as a fraction ("VAT 19%=0.19");
    /// repeat for several.
    #[arg(long)]
    tax: Vec<String>,
    /// Least a period costs before tax.
    #[arg(long)]
    minimum_commitment: Option<Decimal>,
    /// Prepaid balance under which an alert is raised.
    #[arg(long)]
    low_balance: Option<Decimal>,
    /// Days from issue to due date.
    #[arg(long, default_value_t = 30)]
    payment_terms_days: u32,
    /// Invoice number series.
    #[arg(long, default_value = "INV")]
    series: String,
    /// Billing e-mail.
    #[arg(long)]
    email: Option<String>,
    /// Postal address line; repeat for several.
    #[arg(long)]
    address: Vec<String>,
    /// VAT or tax id.
    #[arg(long)]
    tax_id: Option<String>,
    /// Keystone projects it pays for; repeat for several.
    #[arg(long)]
    project: Vec<String>,
    /// Keystone domains it pays for; repeat for several.
    #[arg(long)]
    domain: Vec<String>,
    /// Plan pricing its usage (default: the default plan).
    #[arg(long)]
    plan: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

impl CreateArgs {
    fn spec(&self) -> anyhow::Result<AccountSpec> {
        let taxes = self
            .tax
            .iter()
            .map(|t| {
                let (name, rate) = t.rsplit_once('=').with_context(|| {
                    format!("--tax '{t}' is not NAME=RATE (e.g. \"VAT 19%=0.19\")")
                })?;
                Ok(TaxRate {
                    name: name.trim().to_string(),
                    rate: rate.trim().parse().with_context(|| {
                        format!("--tax '{t}': the rate is not a decimal fraction such as 0.19")
                    })?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(AccountSpec {
            account_id: self.id.clone(),
            name: self.name.clone(),
            currency: self
                .currency
                .parse()
                .with_context(|| format!("--currency '{}'", self.currency))?,
            payment_mode: self
                .mode
                .parse::<PaymentMode>()
                .map_err(anyhow::Error::msg)?,
            billing_day: self.billing_day,
            timezone: self.timezone.clone(),
            taxes,
            minimum_commitment: self.minimum_commitment,
            low_balance: self.low_balance,
            payment_terms_days: self.payment_terms_days,
            series: self.series.clone(),
            contact: Party {
                name: String::new(),
                address: self.address.clone(),
                email: self.email.clone(),
                tax_id: self.tax_id.clone(),
            },
        })
    }
}

/// `tally invoice ...`
#[derive(Subcommand, Debug)]
pub enum InvoiceCommand {
    /// Build (or regenerate) the draft invoice of every account for a
    /// period that has ended and been rated.
    Run {
        /// The billing period (YYYY-MM).
        #[arg(long)]
        period: String,
        /// Only these accounts; repeat for several.
        #[arg(long)]
        account: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// List invoices.
    List {
        /// Only this period (YYYY-MM).
        #[arg(long)]
        period: Option<String>,
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        /// Only this status: draft, finalized, paid, void.
        #[arg(long)]
        status: Option<String>,
        /// Output format (CSV: one row per invoice line).
        #[arg(long, value_enum, default_value_t)]
        output: crate::output::ReportFormat,
        #[command(flatten)]
        remote: crate::client::ServerArgs,
    },
    /// Write an invoice as a PDF document.
    Pdf {
        /// Invoice id (`ACCOUNT-YYYY-MM`).
        id: String,
        /// The file to write (default `<ID>.pdf`).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[command(flatten)]
        remote: crate::client::ServerArgs,
    },
    /// Show an invoice document.
    Show {
        /// Invoice id (`ACCOUNT-YYYY-MM`).
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
        #[command(flatten)]
        remote: crate::client::ServerArgs,
    },
    /// Number, freeze and post a draft (or every draft of a period).
    Finalize {
        /// Invoice id.
        #[arg(required_unless_present = "period", conflicts_with = "period")]
        id: Option<String>,
        /// Every draft of this period (YYYY-MM).
        #[arg(long)]
        period: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Record payment of a finalized invoice.
    Pay {
        /// Invoice id.
        id: String,
        /// Payment reference.
        #[arg(long, default_value = "payment")]
        reference: String,
    },
    /// Void a finalized, unpaid invoice (reverses it in the ledger).
    Void {
        /// Invoice id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Issue a credit note against a finalized invoice.
    Credit {
        /// Invoice id.
        id: String,
        /// Credit one line (its number on the invoice).
        #[arg(long)]
        line: Option<u32>,
        /// Amount, tax included (default: what remains of the line or invoice).
        #[arg(long)]
        amount: Option<Decimal>,
        /// Why (printed on the note).
        #[arg(long)]
        reason: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Delete a draft (finalized invoices are never deleted).
    Delete {
        /// Invoice id.
        id: String,
    },
}

/// `tally alert ...`
#[derive(Subcommand, Debug)]
pub enum AlertCommand {
    /// List raised alerts.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Draw prepaid balances down to the usage rated so far, check budgets,
    /// and deliver due webhooks (what `tally serve` does on its own).
    Check {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Register a webhook for alerts (all accounts, or one); prints its
    /// signing secret once.
    AddWebhook {
        /// http:// URL alerts are POSTed to.
        url: String,
        /// Only this account's alerts.
        #[arg(long)]
        account: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// The webhook delivery log.
    Deliveries {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// `tally report ...`
#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// Rated usage of projects no account pays for.
    Unbilled {
        #[command(flatten)]
        range: crate::rating::RangeArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

fn label(text: &str) -> anyhow::Result<PeriodLabel> {
    Ok(text.parse::<PeriodLabel>()?)
}

/// Runs `tally account`.
pub async fn account(cfg: Config, cmd: AccountCommand) -> anyhow::Result<()> {
    let db = Database::open(&cfg.database_url()).await?;
    let all = AccountScope::All;
    match cmd {
        AccountCommand::Create(args) => {
            let spec = args.spec()?;
            accounts::create_account(&db, &spec).await?;
            for p in &args.project {
                accounts::own(&db, &spec.account_id, Owned::Project, p).await?;
            }
            for d in &args.domain {
                accounts::own(&db, &spec.account_id, Owned::Domain, d).await?;
            }
            if let Some(plan) = &args.plan {
                accounts::assign_plan(
                    &db,
                    &spec.account_id,
                    plan,
                    DateTime::<Utc>::UNIX_EPOCH,
                    None,
                )
                .await?;
            }
            let a = accounts::get_account(&db, &all, &spec.account_id).await?;
            match args.output {
                OutputFormat::Json => print_json(&a),
                OutputFormat::Table => println!(
                    "created account {} ({}, {}, {})",
                    a.spec.account_id,
                    a.spec.name,
                    a.spec.currency,
                    a.spec.payment_mode.as_str()
                ),
            }
        }
        AccountCommand::List { output } => {
            let list = accounts::list_accounts(&db, &all).await?;
            match output {
                OutputFormat::Json => print_json(&list),
                OutputFormat::Table => {
                    println!(
                        "{:<20} {:<28} {:<4} {:<9} {:>8} {:>8}",
                        "account", "name", "cur", "mode", "projects", "domains"
                    );
                    for a in &list {
                        println!(
                            "{:<20} {:<28} {:<4} {:<9} {:>8} {:>8}",
                            a.spec.account_id,
                            a.spec.name,
                            a.spec.currency,
                            a.spec.payment_mode.as_str(),
                            a.projects.len(),
                            a.domains.len()
                        );
                    }
                }
            }
        }
        AccountCommand::Show { id, output } => {
            let a = accounts::get_account(&db, &all, &id).await?;
            match output {
                OutputFormat::Json => print_json(&a),
                OutputFormat::Table => {
                    println!("account   {} ({})", a.spec.account_id, a.spec.name);
                    println!(
                        "billing   {} {}, day {} ({}), terms {} days, series {}",
                        a.spec.currency,
                        a.spec.payment_mode.as_str(),
                        a.spec.billing_day,
                        a.spec.timezone,
                        a.spec.payment_terms_days,
                        a.spec.series
                    );
                    for t in &a.spec.taxes {
                        println!("tax       {} ({})", t.name, t.rate);
                    }
                    println!("projects  {}", a.projects.join(", "));
                    println!("domains   {}", a.domains.join(", "));
                    for p in &a.plans {
                        let until = p.to.map(|t| format!(" until {}", t.to_rfc3339()));
                        println!(
                            "plan      {} from {}{}",
                            p.plan_id,
                            p.from.to_rfc3339(),
                            until.unwrap_or_default()
                        );
                    }
                    for c in &a.coupons {
                        println!(
                            "coupon    {} {:?} from {} for {} periods",
                            c.code, c.discount, c.first_period, c.periods
                        );
                    }
                }
            }
        }
        AccountCommand::AddProject { id, project } => {
            accounts::own(&db, &id, Owned::Project, &project).await?;
            println!("account {id} now pays for project {project}");
        }
        AccountCommand::RemoveProject { id, project } => {
            accounts::release(&db, &id, Owned::Project, &project).await?;
            println!("account {id} no longer pays for project {project}");
        }
        AccountCommand::AddDomain { id, domain } => {
            accounts::own(&db, &id, Owned::Domain, &domain).await?;
            println!("account {id} now pays for domain {domain}");
        }
        AccountCommand::RemoveDomain { id, domain } => {
            accounts::release(&db, &id, Owned::Domain, &domain).await?;
            println!("account {id} no longer pays for domain {domain}");
        }
        AccountCommand::MapProject { project, domain } => {
            accounts::record_project_domains(&db, &[(project.clone(), domain.clone())]).await?;
            println!("project {project} is in domain {domain}");
        }
        AccountCommand::AssignPlan {
            id,
            plan,
            from,
            until,
        } => {
            let from = from.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
            accounts::assign_plan(&db, &id, &plan, from, until).await?;
            println!(
                "account {id} is priced with plan {plan} from {}; re-rate periods after that to apply it",
                from.to_rfc3339()
            );
        }
        AccountCommand::Coupon {
            id,
            code,
            percent,
            fixed,
            first_period,
            periods,
        } => {
            let discount = match (percent, fixed) {
                (Some(p), _) => Discount::Percent(p),
                (None, Some(f)) => Discount::Fixed(f),
                (None, None) => anyhow::bail!("give --percent or --fixed"),
            };
            let coupon = Coupon {
                code: code.clone(),
                discount,
                first_period: label(&first_period)?,
                periods,
            };
            accounts::grant_coupon(&db, &id, &coupon, Utc::now()).await?;
            println!(
                "coupon {code} granted to {id} for {first_period} to {}",
                coupon.last_period()
            );
        }
        AccountCommand::Budget {
            id,
            amount,
            project,
            thresholds,
        } => {
            let b =
                alerts::create_budget(&db, &id, project.as_deref(), amount, &thresholds).await?;
            println!(
                "budget {} for {}: {} per period, alerts at {}%",
                b.budget_id,
                b.project_id.as_deref().unwrap_or(&b.account_id),
                b.amount,
                b.thresholds
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            );
        }
        AccountCommand::TopUp {
            id,
            amount,
            reference,
            output,
        } => print_balances(&ledger::top_up(&db, &id, amount, &reference).await?, output),
        AccountCommand::Adjust {
            id,
            amount,
            reason,
            output,
        } => print_balances(&ledger::adjust(&db, &id, amount, &reason).await?, output),
        AccountCommand::Balance { id, output } => {
            print_balances(&ledger::balances(&db, &all, &id).await?, output)
        }
        AccountCommand::Ledger { id, output } => {
            let txs = ledger::transactions(&db, &all, &id).await?;
            match output {
                OutputFormat::Json => print_json(&txs),
                OutputFormat::Table => {
                    for t in &txs {
                        println!(
                            "{}  {:<18} {}",
                            t.created_at.format("%Y-%m-%d %H:%M"),
                            t.kind,
                            t.memo
                        );
                        for (acct, cur, amount) in &t.entries {
                            println!("      {acct:<28} {amount:>14} {cur}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_balances(b: &ledger::Balances, output: OutputFormat) {
    match output {
        OutputFormat::Json => print_json(b),
        OutputFormat::Table => println!(
            "account {}: owes {} {}, prepaid funds {} {}",
            b.account_id, b.receivable, b.currency, b.prepaid, b.currency
        ),
    }
}

/// Runs `tally invoice`.
pub async fn invoice(cfg: Config, cmd: InvoiceCommand) -> anyhow::Result<()> {
    let db = Database::open(&cfg.database_url()).await?;
    let all = AccountScope::All;
    let settings = cfg.invoice_settings();
    match cmd {
        InvoiceCommand::Run {
            period,
            account,
            output,
        } => {
            let rated = cfg.rated_store()?;
            let only = (!account.is_empty()).then_some(account.as_slice());
            let summary =
                invoices::run_invoices(&db, &rated, &settings, label(&period)?, only, Utc::now())
                    .await?;
            match output {
                OutputFormat::Json => print_json(&summary),
                OutputFormat::Table => {
                    println!(
                        "period {}: {} rated lines read, {} of projects no account owns (see `tally report unbilled`)",
                        summary.period, summary.lines_read, summary.unbilled_lines
                    );
                    for o in &summary.accounts {
                        println!(
                            "{:<20} {:<12} {:<24} {}",
                            o.account_id,
                            o.outcome,
                            o.invoice_id.as_deref().unwrap_or("-"),
                            o.total
                                .map(|t| t.to_string())
                                .or(o.message.clone())
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        InvoiceCommand::List {
            period,
            account,
            status,
            output,
            remote,
        } => {
            let list: Vec<StoredInvoice> = match remote.connect(&cfg)? {
                Some(server) => {
                    let query: Vec<(&str, String)> = [
                        ("period", period),
                        ("account_id", account),
                        ("status", status),
                    ]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect();
                    let page = server
                        .json(
                            server
                                .request(reqwest::Method::GET, "/v1/invoices")
                                .query(&query),
                        )
                        .await?;
                    serde_json::from_value(page["invoices"].clone())?
                }
                None => {
                    let filter = InvoiceFilter {
                        account_id: account,
                        period: period.as_deref().map(label).transpose()?,
                        status,
                        credited_between: None,
                    };
                    invoices::list_invoices(&db, &all, &filter).await?
                }
            };
            match output {
                crate::output::ReportFormat::Json => print_json(&list),
                crate::output::ReportFormat::Csv => {
                    tally_show::csv_export::invoices(&list, std::io::stdout().lock())?;
                }
                crate::output::ReportFormat::Table => {
                    println!(
                        "{:<28} {:<14} {:<20} {:<8} {:<10} {:>14}",
                        "invoice", "number", "account", "period", "status", "total"
                    );
                    for i in &list {
                        let d = &i.document;
                        println!(
                            "{:<28} {:<14} {:<20} {:<8} {:<10} {:>10} {}",
                            d.invoice_id,
                            d.number.as_deref().unwrap_or("-"),
                            d.account_id,
                            d.period,
                            d.status,
                            d.total,
                            d.currency
                        );
                    }
                }
            }
        }
        InvoiceCommand::Show { id, output, remote } => {
            print_invoice(&fetch_invoice(&cfg, &db, &remote, &id).await?, output)
        }
        InvoiceCommand::Pdf { id, out, remote } => {
            let invoice = fetch_invoice(&cfg, &db, &remote, &id).await?;
            let bytes = tally_show::pdf::invoice_pdf(&invoice.document);
            let path = out.unwrap_or_else(|| format!("{id}.pdf").into());
            std::fs::write(&path, &bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {} ({} bytes)", path.display(), bytes.len());
        }
        InvoiceCommand::Finalize { id, period, output } => {
            let done = match (id, period) {
                (Some(id), _) => vec![invoices::finalize(&db, &id, Utc::now()).await?],
                (None, Some(p)) => invoices::finalize_period(&db, label(&p)?, Utc::now()).await?,
                (None, None) => anyhow::bail!("give an invoice id or --period"),
            };
            match output {
                OutputFormat::Json => print_json(&done),
                OutputFormat::Table => {
                    for i in &done {
                        let d = &i.document;
                        println!(
                            "{} is {} {} ({} {}, due {})",
                            d.invoice_id,
                            d.status,
                            d.number.as_deref().unwrap_or("-"),
                            d.total,
                            d.currency,
                            d.due_at
                                .map(|t| t.format("%Y-%m-%d").to_string())
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        InvoiceCommand::Pay { id, reference } => {
            let i = invoices::pay(&db, &id, &reference, Utc::now()).await?;
            println!("{} is {}", id, i.document.status);
        }
        InvoiceCommand::Void { id, reason } => {
            let i = invoices::void(&db, &id, &reason, Utc::now()).await?;
            println!("{} is {}", id, i.document.status);
        }
        InvoiceCommand::Credit {
            id,
            line,
            amount,
            reason,
            output,
        } => {
            let note = invoices::credit(
                &db,
                &settings,
                &CreditRequest {
                    invoice_id: id,
                    line_no: line,
                    amount,
                    reason,
                },
                Utc::now(),
            )
            .await?;
            match output {
                OutputFormat::Json => print_json(&note),
                OutputFormat::Table => println!(
                    "credit note {} on {}: {} (net {}, tax {})",
                    note.number, note.invoice_id, note.total, note.net, note.tax
                ),
            }
        }
        InvoiceCommand::Delete { id } => {
            invoices::delete_draft(&db, &id).await?;
            println!("draft {id} deleted");
        }
    }
    Ok(())
}

/// One invoice, from the server when `--server` is given (scoped by the
/// key used), else from the database.
async fn fetch_invoice(
    cfg: &Config,
    db: &Database,
    remote: &crate::client::ServerArgs,
    id: &str,
) -> anyhow::Result<StoredInvoice> {
    match remote.connect(cfg)? {
        Some(server) => {
            let path = format!("/v1/invoices/{id}");
            let v = server
                .json(server.request(reqwest::Method::GET, &path))
                .await?;
            Ok(serde_json::from_value(v)?)
        }
        None => Ok(invoices::get_invoice(db, &AccountScope::All, id).await?),
    }
}

fn print_invoice(i: &StoredInvoice, output: OutputFormat) {
    let d = &i.document;
    match output {
        OutputFormat::Json => print_json(i),
        OutputFormat::Table => {
            println!(
                "INVOICE {}   ({}, {})",
                d.number.as_deref().unwrap_or("(draft)"),
                d.invoice_id,
                d.status
            );
            println!("seller    {}", d.seller.name);
            println!("buyer     {} ({})", d.buyer.name, d.account_id);
            println!(
                "period    {} ({} to {})",
                d.period,
                d.period_start.to_rfc3339(),
                d.period_end.to_rfc3339()
            );
            if let Some(at) = d.issued_at {
                println!(
                    "issued    {}   due {}",
                    at.format("%Y-%m-%d"),
                    d.due_at
                        .map(|t| t.format("%Y-%m-%d").to_string())
                        .unwrap_or_default()
                );
            }
            println!();
            println!(
                "{:>3}  {:<16} {:<22} {:>16} {:<12} {:>10} {:>12}",
                "#", "project", "meter", "quantity", "unit", "price", "amount"
            );
            for l in &d.lines {
                println!(
                    "{:>3}  {:<16} {:<22} {:>16} {:<12} {:>10} {:>12}{}",
                    l.line_no,
                    l.project_id,
                    l.meter,
                    l.quantity.round_dp(4).normalize(),
                    l.unit,
                    l.unit_price.map(|p| p.to_string()).unwrap_or("-".into()),
                    l.amount,
                    if l.correction { "  (correction)" } else { "" }
                );
            }
            let row = |label: &str, v: Decimal| println!("{label:>80} {v:>12}");
            row("subtotal", d.subtotal);
            for c in &d.discounts {
                row(&format!("coupon {}", c.code), -c.amount);
            }
            if !d.commitment_top_up.is_zero() {
                row("minimum commitment top-up", d.commitment_top_up);
            }
            for t in &d.taxes {
                row(&format!("{} on {}", t.name, t.base), t.amount);
            }
            row(&format!("total {}", d.currency), d.total);
            for c in &i.credit_notes {
                row(&format!("credit note {}", c.number), -c.total);
            }
        }
    }
}

/// Runs `tally alert`.
pub async fn alert(cfg: Config, cmd: AlertCommand) -> anyhow::Result<()> {
    let db = Database::open(&cfg.database_url()).await?;
    match cmd {
        AlertCommand::List { output } => {
            let list = alerts::list_alerts(&db, &AccountScope::All).await?;
            match output {
                OutputFormat::Json => print_json(&list),
                OutputFormat::Table => {
                    for a in &list {
                        println!(
                            "{}  {:<12} {}",
                            a.raised_at.format("%Y-%m-%d %H:%M"),
                            a.kind,
                            a.message
                        );
                    }
                }
            }
        }
        AlertCommand::Check { output } => {
            let rated = cfg.rated_store()?;
            let now = Utc::now();
            let after = tally_bill::after_rating(&db, &rated, now).await?;
            let delivered = alerts::deliver_due(&db, now).await?;
            match output {
                OutputFormat::Json => print_json(&serde_json::json!({
                    "drawdowns": after.drawdowns,
                    "alerts": after.alerts,
                    "delivered": delivered,
                })),
                OutputFormat::Table => {
                    for d in &after.drawdowns {
                        println!(
                            "drawdown {} {}: rated {}, posted {}",
                            d.account_id, d.period, d.rated, d.posted
                        );
                    }
                    for a in &after.alerts {
                        println!("alert: {}", a.message);
                    }
                    println!("{delivered} webhook deliveries made");
                }
            }
        }
        AlertCommand::AddWebhook {
            url,
            account,
            output,
        } => {
            let hook = alerts::create_webhook(&db, &url, account.as_deref()).await?;
            match output {
                OutputFormat::Json => print_json(&hook),
                OutputFormat::Table => {
                    println!("{}", hook.secret.as_deref().unwrap_or_default());
                    eprintln!(
                        "webhook {} -> {}; the signing secret above is shown only once",
                        hook.webhook_id, hook.url
                    );
                }
            }
        }
        AlertCommand::Deliveries { output } => {
            let log = alerts::deliveries(&db).await?;
            match output {
                OutputFormat::Json => print_json(&log),
                OutputFormat::Table => {
                    for d in &log {
                        println!(
                            "{:<40} {:<10} attempts {} last {} {}",
                            d.delivery_id,
                            d.status,
                            d.attempts,
                            d.last_status.map(|s| s.to_string()).unwrap_or("-".into()),
                            d.last_error.as_deref().unwrap_or("")
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs `tally report`.
pub async fn report(cfg: Config, cmd: ReportCommand) -> anyhow::Result<()> {
    match cmd {
        ReportCommand::Unbilled { range, output } => {
            let (from, to) = range.required()?;
            let db = Database::open(&cfg.database_url()).await?;
            let rated = cfg.rated_store()?;
            let rows = reports::unbilled_usage(&db, &rated, from, to).await?;
            match output {
                OutputFormat::Json => print_json(&rows),
                OutputFormat::Table => {
                    println!(
                        "{:<20} {:<24} {:>16} {:<12} {:>14}",
                        "project", "meter", "quantity", "unit", "amount"
                    );
                    for r in &rows {
                        println!(
                            "{:<20} {:<24} {:>16} {:<12} {:>10} {}",
                            r.project_id,
                            r.meter,
                            r.quantity.round_dp(4),
                            r.unit,
                            r.amount.round_dp(4),
                            r.currency
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
