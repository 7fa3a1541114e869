//! Provider callbacks (SPEC §9.2), once their provider's room has verified them
//! (`providers::callback`): a verified payout is stored as observed (source `callback`, its
//! events raised by the store), watched while not final, and confirmed by a lookup coalesced
//! with any in flight; a trigger only makes tally look again through the provider's API. Every
//! callback to a configured account leaves a receipt.
//!
//! The provider's request is answered once the callback is stored: the confirming lookup and
//! the triggered refreshes run in tasks of their own, each bounded by the request deadline.

use std::sync::Arc;

use reqwest::header::HeaderMap;
use tokio::time::Instant;

use super::{AccountState, Service, Within};
use crate::clock::age;
use crate::domain::{AccountId, Payout, PayoutLookup};
use crate::providers::{Callback, CallbackAck, CallbackRefusal, CallbackRequest, Trigger};
use crate::store::{CallbackOutcome, CallbackReceipt, StoreError, StoredPayout};

/// Why a callback was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("no account `{0}` is configured")]
    UnknownAccount(String),
    #[error(transparent)]
    Refused(#[from] CallbackRefusal),
    /// A verified payout could not be stored: the provider should send it again.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Service {
    /// Takes one callback to `account` (its raw body and headers), and says how to answer it.
    pub async fn receive_callback(
        self: &Arc<Self>,
        account: &str,
        body: &[u8],
        headers: &HeaderMap,
    ) -> Result<CallbackAck, CallbackError> {
        let unknown = || CallbackError::UnknownAccount(account.to_owned());
        let id: AccountId = account.parse().map_err(|_| unknown())?;
        let account = Arc::clone(self.account(&id).ok_or_else(unknown)?);
        let now = self.clock.now();
        let request = CallbackRequest { body, headers, now, utc_offset: account.config.utc_offset };
        let deadline = Instant::now() + self.request_timeout;
        let mut receipt = CallbackReceipt {
            received_at: now,
            account: id.clone(),
            provider: account.provider(),
            verified: false,
            outcome: CallbackOutcome::Rejected,
            payout_id: None,
            status: None,
            error: None,
        };
        let answer = match account.config.provider.verify_callback(&request) {
            Err(refusal) => {
                receipt.error = Some(refusal.message.clone());
                Err(CallbackError::Refused(refusal))
            }
            Ok(Callback::Payout(payout)) => {
                receipt.verified = true;
                receipt.payout_id = Some(payout.id.clone());
                receipt.status = Some(payout.status);
                match self.apply_callback(&account, *payout, deadline).await {
                    Ok((outcome, note)) => {
                        receipt.outcome = outcome;
                        receipt.error = note;
                        Ok(())
                    }
                    Err(e) => {
                        receipt.error = Some(e.to_string());
                        Err(CallbackError::Store(e))
                    }
                }
            }
            Ok(Callback::Trigger(Trigger::Payout { id })) => {
                receipt.outcome = CallbackOutcome::Trigger;
                receipt.payout_id = Some(id.clone());
                self.confirm_later(&account, id);
                Ok(())
            }
            Ok(Callback::Trigger(Trigger::Balances)) => {
                receipt.outcome = CallbackOutcome::Trigger;
                self.refresh_if_due(&account);
                Ok(())
            }
        };
        metrics::counter!("tally_callbacks_total", "account" => id.to_string(), "outcome" => receipt.outcome.as_str())
            .increment(1);
        if let Err(e) = self.store.record_callback(&receipt, Within::Until(deadline)).await {
            tracing::warn!(account = %id, error = %e, "could not store a callback's receipt");
        }
        answer.map(|()| account.config.provider.callback_ack())
    }

    /// Stores a verified payout unless the stored one already has its status (a duplicate:
    /// nothing is written, no event raised) or is final and this one is not (kept, and said
    /// in the receipt). Then confirms it with a lookup.
    async fn apply_callback(
        self: &Arc<Self>,
        account: &Arc<AccountState>,
        payout: Payout,
        deadline: Instant,
    ) -> Result<(CallbackOutcome, Option<String>), StoreError> {
        let stored = self.store.find_payout(account.id(), &payout.id, Within::Until(deadline)).await?;
        let id = payout.id.clone();
        let outcome = match &stored {
            Some(s) if s.payout.status == payout.status && s.payout.provider_status == payout.provider_status => {
                (CallbackOutcome::Duplicate, None)
            }
            Some(s) if crate::store::decide::regresses(&s.payout, &payout) => {
                let note = format!("the stored status `{}` is final; kept", s.payout.status.as_str());
                (CallbackOutcome::Duplicate, Some(note))
            }
            _ => {
                let merged = merge(payout, stored.as_ref());
                let fresh = StoredPayout {
                    account: account.id().clone(),
                    provider: account.provider(),
                    fetched_at: self.clock.now(),
                    payout: merged,
                };
                match self.store.save_payout(&fresh, "callback", deadline).await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => return Err(e),
                    // Still being written: the provider's retry finds it stored (a duplicate).
                    None => return Err(StoreError::Unavailable("the store did not confirm the write in time".into())),
                }
                let within = Within::Until(deadline);
                self.keep_watching(account.id(), &fresh.payout.id, fresh.payout.is_final, within).await;
                (CallbackOutcome::Applied, None)
            }
        };
        self.confirm_later(account, id);
        Ok(outcome)
    }

    /// Looks the payout up through the provider's API in a task of its own (coalesced with
    /// any lookup in flight), storing what it finds (source `lookup`).
    fn confirm_later(self: &Arc<Self>, account: &Arc<AccountState>, id: String) {
        if !account.capabilities().payouts {
            return;
        }
        let (service, account) = (Arc::clone(self), Arc::clone(account));
        tokio::spawn(async move {
            let deadline = Instant::now() + service.request_timeout;
            let looked_up = super::await_shared(service.lookup(&account, &id, deadline), deadline).await;
            if let Some(Ok(PayoutLookup::Found(payout))) = looked_up {
                let stored =
                    service.store.find_payout(account.id(), &payout.id, Within::Until(deadline)).await.ok().flatten();
                service.observe(&account, *payout, stored, deadline, "lookup").await;
            }
        });
    }

    /// Refreshes the account's balances in a task of its own, unless its figure is younger
    /// than `ttl` (at most one refresh per `ttl`, coalesced with any fetch in flight).
    fn refresh_if_due(self: &Arc<Self>, account: &Arc<AccountState>) {
        let ttl = account.config.freshness.ttl;
        if account.latest().is_some_and(|l| age(self.clock.now(), l.fetched_at) < ttl) {
            return;
        }
        let rx = self.refresh(account, None, Instant::now() + self.request_timeout);
        drop(rx);
    }

    /// Callback receipts, newest first.
    pub async fn callback_receipts(
        &self,
        account: Option<&AccountId>,
        limit: u32,
    ) -> Result<Vec<CallbackReceipt>, StoreError> {
        self.store.callbacks(account, limit, Within::Until(Instant::now() + self.request_timeout)).await
    }
}

/// A callback's payout, with what it does not carry (Luxtak's notification has no amount or
/// times) taken from the stored observation.
fn merge(mut payout: Payout, stored: Option<&StoredPayout>) -> Payout {
    if let Some(s) = stored.map(|s| &s.payout) {
        payout.reference = payout.reference.or_else(|| s.reference.clone());
        payout.amount = payout.amount.or(s.amount);
        payout.currency = payout.currency.or_else(|| s.currency.clone());
        payout.fee = payout.fee.or(s.fee);
        payout.created_at = payout.created_at.or(s.created_at);
        payout.updated_at = payout.updated_at.or(s.updated_at);
    }
    payout
}
