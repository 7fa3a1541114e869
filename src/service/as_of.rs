//! `GET /balances?as_of=` (SPEC §10.1): the figures in force at a past time, from the store
//! alone, in one query for every selected account.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::balances::{Selection, SelectionError, Status};
use super::totals::{CurrencySums, totals};
use super::{Service, Within};
use crate::clock::{age, age_seconds};
use crate::domain::{AccountId, BalanceEntry, Provider};
use crate::store::StoreError;

/// What the store held for the selected accounts at `as_of`.
#[derive(Clone, Debug)]
pub struct AsOfOutcome {
    pub as_of: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    /// Every selected account, in config order.
    pub accounts: Vec<AsOfAccount>,
    /// The currencies the request selected (empty: all).
    selection: Selection,
    /// `[reporting]`, when set: the totals are converted at the rates of the `as_of` day (UTC).
    pub reporting: Option<std::sync::Arc<super::reporting::Reporting>>,
}

/// One account as of the time asked.
#[derive(Clone, Debug)]
pub struct AsOfAccount {
    pub account: AccountId,
    pub provider: Provider,
    /// `Fresh` when every entry was confirmed within the account's ttl of `as_of`, `Stale`
    /// when one was not, `Failed` when nothing was stored by then (`no_data`).
    pub status: Status,
    /// The oldest `fetched_at` of its entries; `None` without entries.
    pub fetched_at: Option<DateTime<Utc>>,
    /// Every entry of the account (whatever the currency filter), ordered by wallet and currency.
    pub entries: Vec<AsOfEntry>,
}

/// One stored figure set as of the time asked.
#[derive(Clone, Debug)]
pub struct AsOfEntry {
    pub entry: BalanceEntry,
    /// `as_of` when the figure was confirmed unchanged at or after it, else its last confirmation.
    pub fetched_at: DateTime<Utc>,
    pub age_seconds: u64,
    /// `as_of − fetched_at` is more than the account's ttl.
    pub stale: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AsOfError {
    #[error(transparent)]
    Selection(#[from] SelectionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Service {
    /// The figures of the selected accounts in force at `as_of` (not in the future: the
    /// caller checks), read from the store in one query within the request deadline.
    pub async fn balances_as_of(&self, selection: &Selection, as_of: DateTime<Utc>) -> Result<AsOfOutcome, AsOfError> {
        let selected: Vec<_> = self.select(selection)?.map(|(_, a)| a).collect();
        let ids: Vec<AccountId> = selected.iter().map(|a| a.id().clone()).collect();
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let points = self.store.balances_as_of(&ids, as_of, Within::Until(deadline)).await?;
        let accounts = selected
            .iter()
            .map(|account| {
                let ttl: Duration = account.config.freshness.ttl;
                let entries: Vec<AsOfEntry> = points
                    .iter()
                    .filter(|p| p.account == *account.id())
                    .map(|p| {
                        let fetched_at = if p.last_confirmed_at >= as_of { as_of } else { p.last_confirmed_at };
                        AsOfEntry {
                            entry: p.entry.clone(),
                            fetched_at,
                            age_seconds: age_seconds(as_of, fetched_at),
                            stale: age(as_of, fetched_at) > ttl,
                        }
                    })
                    .collect();
                let status = if entries.is_empty() {
                    Status::Failed
                } else if entries.iter().any(|e| e.stale) {
                    Status::Stale
                } else {
                    Status::Fresh
                };
                AsOfAccount {
                    account: account.id().clone(),
                    provider: account.provider(),
                    status,
                    fetched_at: entries.iter().map(|e| e.fetched_at).min(),
                    entries,
                }
            })
            .collect();
        Ok(AsOfOutcome {
            as_of,
            generated_at: self.clock.now(),
            accounts,
            selection: selection.clone(),
            reporting: self.reporting.clone(),
        })
    }
}

impl AsOfOutcome {
    /// The entries in a selected currency, with their accounts, in config order.
    pub fn entries(&self) -> impl Iterator<Item = (&AsOfAccount, &AsOfEntry)> {
        let currencies = &self.selection.currencies;
        self.accounts.iter().flat_map(move |a| {
            a.entries
                .iter()
                .filter(|e| currencies.is_empty() || currencies.contains(&e.entry.currency))
                .map(move |e| (a, e))
        })
    }

    /// Per-currency totals of [`entries`](Self::entries); a stale entry counts as stale.
    pub fn totals(&self) -> Vec<CurrencySums> {
        totals(self.entries().map(|(_, e)| (&e.entry, e.stale)))
    }

    /// True when every selected account is fresh as of the time asked.
    pub fn complete(&self) -> bool {
        self.accounts.iter().all(|a| a.status == Status::Fresh)
    }
}
