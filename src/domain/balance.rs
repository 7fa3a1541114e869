use rust_decimal::Decimal;

use super::{Currency, RawJson};

/// One `(wallet, currency)` figure set of one account, as the provider reported it.
/// A figure the provider does not report is `None`, never an invented zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceEntry {
    pub wallet: String,
    pub currency: Currency,
    pub available: Option<Decimal>,
    pub pending: Option<Decimal>,
    pub reserved: Option<Decimal>,
    pub total: Option<Decimal>,
    pub blocked: bool,
}

impl BalanceEntry {
    /// The common shape of providers that report one figure per wallet: it is both what is
    /// available and the total.
    pub fn single_figure(wallet: impl Into<String>, currency: Currency, amount: Decimal) -> Self {
        Self {
            wallet: wallet.into(),
            currency,
            available: Some(amount),
            pending: None,
            reserved: None,
            total: Some(amount),
            blocked: false,
        }
    }

    /// Whether two entries carry the same figures, scale included (`1.0` differs from `1.00`,
    /// because the provider's scale is part of what tally reports).
    pub fn same_figures(&self, other: &Self) -> bool {
        fn same(a: &Option<Decimal>, b: &Option<Decimal>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => a == b && a.scale() == b.scale(),
                (None, None) => true,
                _ => false,
            }
        }
        same(&self.available, &other.available)
            && same(&self.pending, &other.pending)
            && same(&self.reserved, &other.reserved)
            && same(&self.total, &other.total)
            && self.blocked == other.blocked
    }
}

/// What one successful balance fetch returns: the normalized entries and the provider's raw
/// payload (served only with `include=raw`, for debugging).
#[derive(Clone, Debug)]
pub struct BalanceFetch {
    pub entries: Vec<BalanceEntry>,
    pub raw: RawJson,
}

impl BalanceFetch {
    /// The first `(wallet, currency)` the answer lists twice (`USD` and `usd` are one
    /// currency). Such an answer is ambiguous: counting both would double the totals, and
    /// keeping either would pick a figure the provider did not single out.
    pub fn repeated_entry(&self) -> Option<&BalanceEntry> {
        let mut seen = std::collections::HashSet::new();
        self.entries.iter().find(|e| !seen.insert((e.wallet.as_str(), &e.currency)))
    }
}
