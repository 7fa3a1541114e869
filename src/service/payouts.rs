//! `GET /payouts/{id}`: one payout status across accounts.
//!
//! Every payout-capable account (or the one asked) is checked concurrently within the request
//! deadline. A stored payout in a final status is served without an upstream call; a non-final
//! one younger than `max_age` too. Lookups of the same id on the same account coalesce. A final
//! status never silently goes back to a non-final one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::coalesce::{Joined, Shared};
use super::{AccountState, FetchFailure, Service};
use crate::clock::age;
use crate::domain::{AccountId, Payout, PayoutLookup};
use crate::providers::UpstreamError;
use crate::store::StoredPayout;

/// How old a stored non-final payout may be before it is looked up again, by default.
pub const DEFAULT_PAYOUT_MAX_AGE: Duration = Duration::from_secs(10);

/// The outcome of one upstream lookup, shared by coalesced callers.
pub type LookupOutcome = Result<PayoutLookup, FetchFailure>;

/// The key of a payout lookup in flight.
pub type LookupKey = (AccountId, String);

#[derive(Debug, Clone)]
pub struct PayoutQuery {
    pub id: String,
    pub account: Option<AccountId>,
    pub max_age: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum PayoutQueryError {
    #[error("no account `{0}` is configured")]
    UnknownAccount(AccountId),
    #[error("account `{0}` cannot look up payouts (its provider documents no payout lookup)")]
    Unsupported(AccountId),
}

/// A payout as served: the stored observation, whether a refresh failed, and why.
#[derive(Debug, Clone)]
pub struct PayoutView {
    pub stored: StoredPayout,
    pub stale: bool,
    /// Why the refresh failed (or was not made), when it did.
    pub error: Option<FetchFailure>,
}

#[derive(Debug)]
pub enum PayoutAnswer {
    Found(Box<PayoutView>),
    NotFound,
    Ambiguous(Vec<AccountId>),
    /// Nothing found, and at least one lookup failed (when it failed) with nothing stored
    /// for it.
    Failed(Vec<(AccountId, FetchFailure)>),
}

/// One account's answer.
enum Per {
    Found(Box<PayoutView>),
    NotFound,
    Failed(FetchFailure),
}

impl Service {
    pub async fn payout(self: &Arc<Self>, query: &PayoutQuery) -> Result<PayoutAnswer, PayoutQueryError> {
        let accounts: Vec<Arc<AccountState>> = match &query.account {
            Some(id) => {
                let account = self.account(id).ok_or_else(|| PayoutQueryError::UnknownAccount(id.clone()))?;
                if !account.capabilities().payouts {
                    return Err(PayoutQueryError::Unsupported(id.clone()));
                }
                vec![Arc::clone(account)]
            }
            None => self.accounts.iter().filter(|a| a.capabilities().payouts).cloned().collect(),
        };
        let deadline = Instant::now() + self.request_timeout;
        let mut tasks = tokio::task::JoinSet::new();
        for account in accounts {
            let service = Arc::clone(self);
            let query = query.clone();
            tasks.spawn(async move {
                // Every step of payout_on() keeps within the deadline; this is the backstop.
                let per = tokio::time::timeout_at(deadline, service.payout_on(&account, &query, deadline))
                    .await
                    .unwrap_or_else(|_| Per::Failed(service.deadline_failure()));
                (account.id().clone(), per)
            });
        }
        let mut found = Vec::new();
        let mut failed = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (id, per) = super::joined(&mut tasks, joined);
            match per {
                Per::Found(view) => found.push(view),
                Per::NotFound => {}
                Per::Failed(e) => failed.push((id, e)),
            }
        }
        Ok(match found.len() {
            1 => PayoutAnswer::Found(found.remove(0)),
            // "Not found" only when every account asked could answer: one that failed may be
            // the one that knows the payout.
            0 if failed.is_empty() => PayoutAnswer::NotFound,
            0 => {
                failed.sort_by(|a, b| a.0.cmp(&b.0));
                PayoutAnswer::Failed(failed)
            }
            _ => {
                let mut ids: Vec<AccountId> = found.into_iter().map(|v| v.stored.account).collect();
                ids.sort();
                PayoutAnswer::Ambiguous(ids)
            }
        })
    }

    async fn payout_on(self: &Arc<Self>, account: &Arc<AccountState>, query: &PayoutQuery, deadline: Instant) -> Per {
        let found = self.store.find_payout(account.id(), &query.id, super::Within::share_of(deadline)).await;
        let stored = match found {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(account = %account.id(), error = %e, "could not read a stored payout");
                None
            }
        };
        let now = self.clock.now();
        if let Some(stored) = &stored {
            let forced = query.max_age == Some(Duration::ZERO);
            let young = age(now, stored.fetched_at) <= query.max_age.unwrap_or(DEFAULT_PAYOUT_MAX_AGE);
            if !forced && (stored.payout.is_final || young) {
                return Per::Found(Box::new(PayoutView { stored: stored.clone(), stale: false, error: None }));
            }
        }
        let looked_up = super::await_shared(self.lookup(account, &query.id, deadline), deadline).await;
        match (looked_up.unwrap_or_else(|| Err(self.deadline_failure())), stored) {
            (Ok(PayoutLookup::Found(payout)), stored) => {
                Per::Found(Box::new(self.observe(account, *payout, stored, deadline, "lookup").await))
            }
            (Ok(PayoutLookup::NotFound), None) => Per::NotFound,
            // The provider no longer finds what it once reported: serve what we saw, flagged.
            (Ok(PayoutLookup::NotFound), Some(stored)) => {
                Per::Found(Box::new(PayoutView { stored, stale: true, error: None }))
            }
            // The lookup failed, or was not made (the upstream budget): what we saw, and why.
            (Err(e), Some(stored)) => Per::Found(Box::new(PayoutView { stored, stale: true, error: Some(e) })),
            (Err(e), None) => Per::Failed(e),
        }
    }

    /// Records a lookup's answer (`source`: `lookup`, or `watch` for the watch's own), refusing
    /// a regression from a final status, keeps the payout watched while it is not final, and
    /// returns what to serve.
    pub(super) async fn observe(
        &self,
        account: &AccountState,
        payout: Payout,
        stored: Option<StoredPayout>,
        deadline: Instant,
        source: &'static str,
    ) -> PayoutView {
        let now = self.clock.now();
        if let Some(previous) = &stored
            && crate::store::decide::regresses(&previous.payout, &payout)
        {
            tracing::warn!(account = %account.id(), payout = %payout.id, stored = previous.payout.status.as_str(),
                reported = payout.status.as_str(), provider_status = %payout.provider_status,
                "provider reported a non-final status for a final payout; keeping the final status");
            return PayoutView {
                stored: StoredPayout { fetched_at: now, ..previous.clone() },
                stale: false,
                error: None,
            };
        }
        let mut payout = payout;
        // A lookup that does not carry the merchant's reference (LeanX's status API) keeps the
        // one a callback stored.
        if payout.reference.is_none() {
            payout.reference = stored.as_ref().and_then(|s| s.payout.reference.clone());
        }
        let fresh =
            StoredPayout { account: account.id().clone(), provider: account.provider(), payout, fetched_at: now };
        // Until the deadline only: this runs within the request's own deadline (a lookup outlives
        // no request), and a write still running then goes on while the payout is served.
        match self.store.save_payout(&fresh, source, deadline).await {
            Some(Ok(())) => {
                let within = super::Within::Until(deadline);
                self.keep_watching(account.id(), &fresh.payout.id, fresh.payout.is_final, within).await;
            }
            Some(Err(e)) => {
                tracing::error!(account = %account.id(), error = %e, "could not store a payout observation")
            }
            None => {
                tracing::warn!(account = %account.id(), "serving a payout before the slow store confirmed its write")
            }
        }
        PayoutView { stored: fresh, stale: false, error: None }
    }

    /// Joins the lookup of `(account, id)` in flight, or starts one in its own task; its
    /// store calls keep within `deadline`, the starting caller's.
    pub(super) fn lookup(
        self: &Arc<Self>,
        account: &Arc<AccountState>,
        id: &str,
        deadline: Instant,
    ) -> Shared<LookupOutcome> {
        let key: LookupKey = (account.id().clone(), id.to_owned());
        let (publisher, rx) = match self.payout_lookups.join_or_start(&key) {
            Joined::Waiting(rx) => {
                metrics::counter!("tally_coalesced_payout_waiters_total", "account" => account.id().to_string())
                    .increment(1);
                return rx;
            }
            Joined::Started(publisher, rx) => (publisher, rx),
        };
        let service = Arc::clone(self);
        let account = Arc::clone(account);
        tokio::spawn(async move {
            // A lookup is an upstream call like a balance fetch: it waits for one of the same
            // permits (`server.max_concurrent_fetches`), held for the call only.
            let permit = service.fetch_permits.acquire().await.expect("the fetch semaphore is never closed");
            // And it draws from the account's upstream budget: a call it cannot afford is not made.
            if let Err(denied) = service.draw_call(&account, "payout", deadline).await {
                drop(permit);
                service.payout_lookups.finish(publisher, Err(denied));
                return;
            }
            let started = Instant::now();
            let timeout = account.config.freshness.timeout;
            let outcome =
                tokio::time::timeout(timeout, account.client.lookup_payout(&key.1)).await.unwrap_or_else(|_| {
                    Err(UpstreamError::timeout(format!("no answer within {}", humantime::format_duration(timeout))))
                });
            drop(permit);
            if let Err(error) = &outcome {
                service.pause_calls(&account, error, deadline).await;
            }
            // A failure is reported as of when it happened, to every caller sharing it.
            let outcome = outcome.map_err(|error| FetchFailure::new(error, service.clock.now()));
            let result = match &outcome {
                Ok(PayoutLookup::Found(_)) => "found",
                Ok(PayoutLookup::NotFound) => "not_found",
                Err(f) => f.error.code(),
            };
            if let Err(FetchFailure { error: e, .. }) = &outcome {
                tracing::warn!(account = %account.id(), code = e.code(), upstream_status = ?e.upstream_status,
                    "payout lookup failed: {}", e.message);
            }
            let provider = account.provider().as_str();
            metrics::counter!("tally_upstream_calls_total", "provider" => provider, "account" => account.id().to_string(),
                "operation" => "payout", "outcome" => result)
            .increment(1);
            metrics::histogram!("tally_upstream_latency_seconds", "provider" => provider, "operation" => "payout")
                .record(started.elapsed().as_secs_f64());
            service.payout_lookups.finish(publisher, outcome);
        });
        rx
    }
}
