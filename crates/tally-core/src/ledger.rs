//! Double-entry bookkeeping: every money movement is one transaction whose
//! entries sum to zero per currency, and balances are sums of entries.
//!
//! Sign convention: a positive amount debits the ledger account, a negative
//! one credits it. Ledger accounts are named `<kind>:<billing account>`
//! (`receivable:acme`, `prepaid:acme`) or `<kind>` for the operator's own
//! (`revenue`, `tax`, `cash`). The billing module stores transactions; this
//! module only builds and checks them.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::{Currency, Money};

/// What a transaction records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TransactionKind {
    /// An invoice was finalized.
    InvoiceFinalized,
    /// A credit note was issued.
    CreditNote,
    /// A prepaid account was topped up.
    TopUp,
    /// A postpaid invoice was paid.
    Payment,
    /// Rated usage drew down a prepaid balance.
    UsageDrawdown,
    /// A manual correction (with a reason).
    Adjustment,
}

/// One side of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerEntry {
    /// The ledger account (`receivable:acme`).
    pub account: String,
    /// Debit (positive) or credit (negative).
    pub amount: Money,
}

/// A balanced set of entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerTransaction {
    /// What it records.
    pub kind: TransactionKind,
    /// Why (required for adjustments).
    pub memo: String,
    /// Its entries; they sum to zero per currency.
    pub entries: Vec<LedgerEntry>,
}

/// A transaction that would not balance or is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Entries of a currency do not sum to zero.
    #[error("the entries in {currency} sum to {sum}, not 0: a transaction must balance")]
    Unbalanced {
        /// The currency.
        currency: String,
        /// Their sum.
        sum: Decimal,
    },
    /// Fewer than two entries, or an entry of zero.
    #[error("a transaction needs at least two non-zero entries")]
    TooFew,
    /// An adjustment without a reason.
    #[error("an adjustment needs a reason")]
    NoReason,
    /// An amount that is not positive where one is required.
    #[error("the amount must be positive, got {0}")]
    NotPositive(Decimal),
}

impl LedgerTransaction {
    /// Builds a transaction, refusing one that does not balance.
    pub fn new(
        kind: TransactionKind,
        memo: impl Into<String>,
        entries: Vec<LedgerEntry>,
    ) -> Result<LedgerTransaction, LedgerError> {
        let memo = memo.into();
        if kind == TransactionKind::Adjustment && memo.trim().is_empty() {
            return Err(LedgerError::NoReason);
        }
        if entries.len() < 2 || entries.iter().any(|e| e.amount.amount.is_zero()) {
            return Err(LedgerError::TooFew);
        }
        let mut sums: BTreeMap<&str, Decimal> = BTreeMap::new();
        for e in &entries {
            *sums.entry(e.amount.currency.code()).or_default() += e.amount.amount;
        }
        if let Some((currency, sum)) = sums.into_iter().find(|(_, s)| !s.is_zero()) {
            return Err(LedgerError::Unbalanced {
                currency: currency.to_string(),
                sum,
            });
        }
        Ok(LedgerTransaction {
            kind,
            memo,
            entries,
        })
    }

    /// A finalized invoice: the customer owes the total; revenue and tax
    /// payable are credited.
    pub fn invoice_finalized(
        account: &str,
        invoice: &str,
        net: Decimal,
        tax: Decimal,
        currency: Currency,
    ) -> Result<LedgerTransaction, LedgerError> {
        let mut entries = vec![
            entry(format!("receivable:{account}"), net + tax, currency),
            entry("revenue".into(), -net, currency),
        ];
        if !tax.is_zero() {
            entries.push(entry("tax".into(), -tax, currency));
        }
        LedgerTransaction::new(
            TransactionKind::InvoiceFinalized,
            format!("invoice {invoice}"),
            entries,
        )
    }

    /// Money received for a prepaid account: cash debited, the prepaid
    /// balance (owed to the customer) credited.
    pub fn top_up(
        account: &str,
        amount: Decimal,
        currency: Currency,
    ) -> Result<LedgerTransaction, LedgerError> {
        if amount <= Decimal::ZERO {
            return Err(LedgerError::NotPositive(amount));
        }
        LedgerTransaction::new(
            TransactionKind::TopUp,
            "top-up",
            vec![
                entry("cash".into(), amount, currency),
                entry(format!("prepaid:{account}"), -amount, currency),
            ],
        )
    }
}

impl LedgerTransaction {
    /// A postpaid customer paid: cash debited, what they owe credited.
    pub fn payment(
        account: &str,
        invoice: &str,
        amount: Decimal,
        currency: Currency,
    ) -> Result<LedgerTransaction, LedgerError> {
        if amount <= Decimal::ZERO {
            return Err(LedgerError::NotPositive(amount));
        }
        LedgerTransaction::new(
            TransactionKind::Payment,
            format!("payment of invoice {invoice}"),
            vec![
                entry("cash".into(), amount, currency),
                entry(format!("receivable:{account}"), -amount, currency),
            ],
        )
    }

    /// A prepaid balance settles what the customer owes: the prepaid
    /// liability is debited, the receivable credited.
    pub fn drawdown(
        account: &str,
        memo: String,
        amount: Decimal,
        currency: Currency,
    ) -> Result<LedgerTransaction, LedgerError> {
        if amount <= Decimal::ZERO {
            return Err(LedgerError::NotPositive(amount));
        }
        LedgerTransaction::new(
            TransactionKind::UsageDrawdown,
            memo,
            vec![
                entry(format!("prepaid:{account}"), amount, currency),
                entry(format!("receivable:{account}"), -amount, currency),
            ],
        )
    }

    /// A credit note (or a void, `kind` says which): revenue and tax are
    /// debited back; the customer's side (`receivable:` for what is still
    /// owed, `prepaid:` to return it to a prepaid balance) is credited.
    pub fn reversal(
        kind: TransactionKind,
        customer_account: String,
        memo: String,
        net: Decimal,
        tax: Decimal,
        currency: Currency,
    ) -> Result<LedgerTransaction, LedgerError> {
        let mut entries = vec![entry(customer_account, -(net + tax), currency)];
        if !net.is_zero() {
            entries.push(entry("revenue".into(), net, currency));
        }
        if !tax.is_zero() {
            entries.push(entry("tax".into(), tax, currency));
        }
        LedgerTransaction::new(kind, memo, entries)
    }

    /// A manual correction with a reason: a positive amount adds to what
    /// the customer owes, a negative one takes from it; the other side is
    /// the operator's `adjustments` account.
    pub fn adjustment(
        account: &str,
        amount: Decimal,
        reason: &str,
        currency: Currency,
    ) -> Result<LedgerTransaction, LedgerError> {
        LedgerTransaction::new(
            TransactionKind::Adjustment,
            reason,
            vec![
                entry(format!("receivable:{account}"), amount, currency),
                entry("adjustments".into(), -amount, currency),
            ],
        )
    }
}

impl TransactionKind {
    /// The stored name (`invoice_finalized`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionKind::InvoiceFinalized => "invoice_finalized",
            TransactionKind::CreditNote => "credit_note",
            TransactionKind::TopUp => "top_up",
            TransactionKind::Payment => "payment",
            TransactionKind::UsageDrawdown => "usage_drawdown",
            TransactionKind::Adjustment => "adjustment",
        }
    }
}

fn entry(account: String, amount: Decimal, currency: Currency) -> LedgerEntry {
    LedgerEntry {
        account,
        amount: Money::new(amount, currency),
    }
}

/// The balance of one ledger account per currency: the sum of its entries.
pub fn balance<'a>(
    transactions: impl IntoIterator<Item = &'a LedgerTransaction>,
    account: &str,
) -> BTreeMap<String, Decimal> {
    let mut out = BTreeMap::new();
    for t in transactions {
        for e in t.entries.iter().filter(|e| e.account == account) {
            *out.entry(e.amount.currency.code().to_string())
                .or_insert(Decimal::ZERO) += e.amount.amount;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eur() -> Currency {
        "EUR".parse().unwrap()
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn unbalanced_and_reasonless_transactions_are_refused() {
        let e = LedgerTransaction::new(
            TransactionKind::Payment,
            "",
            vec![
                entry("cash".into(), d("10"), eur()),
                entry("receivable:a".into(), d("-9.99"), eur()),
            ],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the entries in EUR sum to 0.01, not 0: a transaction must balance"
        );
        assert_eq!(
            LedgerTransaction::new(
                TransactionKind::Adjustment,
                " ",
                vec![
                    entry("cash".into(), d("1"), eur()),
                    entry("revenue".into(), d("-1"), eur())
                ],
            ),
            Err(LedgerError::NoReason)
        );
        assert_eq!(
            LedgerTransaction::top_up("a", d("0"), eur()),
            Err(LedgerError::NotPositive(d("0")))
        );
    }

    #[test]
    fn balances_are_sums_of_entries() {
        let txs = vec![
            LedgerTransaction::invoice_finalized("acme", "INV-1", d("100.00"), d("19.00"), eur())
                .unwrap(),
            LedgerTransaction::top_up("acme", d("50"), eur()).unwrap(),
        ];
        assert_eq!(balance(&txs, "receivable:acme")["EUR"], d("119.00"));
        assert_eq!(balance(&txs, "prepaid:acme")["EUR"], d("-50"));
        assert_eq!(balance(&txs, "tax")["EUR"], d("-19.00"));
    }

    #[test]
    fn payments_drawdowns_reversals_and_adjustments_balance() {
        let txs = vec![
            LedgerTransaction::invoice_finalized("acme", "INV-1", d("100.00"), d("19.00"), eur())
                .unwrap(),
            LedgerTransaction::reversal(
                TransactionKind::CreditNote,
                "receivable:acme".into(),
                "credit note CN-1".into(),
                d("8.40"),
                d("1.60"),
                eur(),
            )
            .unwrap(),
            LedgerTransaction::payment("acme", "INV-1", d("109.00"), eur()).unwrap(),
        ];
        assert_eq!(balance(&txs, "receivable:acme")["EUR"], d("0.00"));
        assert_eq!(balance(&txs, "revenue")["EUR"], d("-91.60"));
        assert_eq!(balance(&txs, "tax")["EUR"], d("-17.40"));
        let e = LedgerTransaction::adjustment("acme", d("5"), "", eur()).unwrap_err();
        assert_eq!(e, LedgerError::NoReason);
        assert!(LedgerTransaction::drawdown("acme", "x".into(), d("-1"), eur()).is_err());
    }

    proptest! {
        /// Every transaction the constructors build balances, and the sum of
        /// all balances over every ledger account is zero.
        #[test]
        fn the_books_always_balance(
            invoices in proptest::collection::vec((1i64..10_000_000, 0i64..2_000_000), 0..20),
            top_ups in proptest::collection::vec(1i64..10_000_000, 0..20),
        ) {
            let mut txs = Vec::new();
            for (i, (net, tax)) in invoices.iter().enumerate() {
                txs.push(LedgerTransaction::invoice_finalized(
                    "a", &format!("INV-{i}"), Decimal::new(*net, 2), Decimal::new(*tax, 2), eur(),
                ).unwrap());
            }
            for t in &top_ups {
                txs.push(LedgerTransaction::top_up("a", Decimal::new(*t, 2), eur()).unwrap());
            }
            let total: Decimal = ["receivable:a", "revenue", "tax", "cash", "prepaid:a"]
                .iter()
                .map(|a| balance(&txs, a).get("EUR").copied().unwrap_or_default())
                .sum();
            prop_assert_eq!(total, Decimal::ZERO);
        }
    }
}
