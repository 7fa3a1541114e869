//! Upstream budgets (SPEC §12): every upstream call of an account (balance fetches, with their
//! retries and background refreshes; payout lookups) draws one call from the account's
//! `max_calls_per_minute` before it is made, and a provider's 429 with `Retry-After` pauses the
//! account's calls until then. A call the budget cannot afford is not made: it fails with
//! `rate_budget_exhausted` ([`FetchFailure::denied`]), which the routes serve from the store.
//!
//! The budget is a window of one minute that starts at the first call after the previous
//! window ended, counting calls up to the limit: whole numbers only, and on PostgreSQL one
//! upsert that both decides and counts ([`Cluster::draw_call`](crate::store::Cluster::draw_call)),
//! so replicas sharing the store share one budget and one pause. Alone (SQLite), or while the
//! store is failing, the process keeps the window itself ([`Local`]). Time is the service's
//! clock, as for the circuit.

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;

use super::guarded_store::{Within, write_until};
use super::{AccountState, FetchFailure, Service};
use crate::providers::{MAX_RETRY_AFTER, UpstreamError, UpstreamErrorKind};
use crate::store::{BUDGET_WINDOW, CallDenied};
use crate::sync::MutexExt;

/// The code of a call the budget (or a provider's pause) did not allow.
pub const RATE_BUDGET_EXHAUSTED: &str = "rate_budget_exhausted";

/// One account's budget as this process keeps it: the window in progress and the pause.
#[derive(Debug, Default)]
pub(super) struct Local {
    window_start: Option<DateTime<Utc>>,
    calls: u32,
    paused_until: Option<DateTime<Utc>>,
}

fn window() -> TimeDelta {
    TimeDelta::from_std(BUDGET_WINDOW).expect("a minute is a TimeDelta")
}

impl Local {
    /// The pause in force at `now`, if any.
    fn paused(&self, now: DateTime<Utc>) -> Option<CallDenied> {
        self.paused_until.filter(|&until| until > now).map(|until| CallDenied::Paused { until })
    }

    /// Draws one call at `now`, as [`Cluster::draw_call`](crate::store::Cluster::draw_call)
    /// does in the store.
    pub(super) fn draw(&mut self, limit: Option<NonZeroU32>, now: DateTime<Utc>) -> Result<(), CallDenied> {
        if let Some(paused) = self.paused(now) {
            return Err(paused);
        }
        let Some(limit) = limit else { return Ok(()) };
        match self.window_start.and_then(|start| start.checked_add_signed(window())) {
            Some(ends) if ends > now => {
                if self.calls >= limit.get() {
                    return Err(CallDenied::Exhausted { until: ends });
                }
                self.calls = self.calls.saturating_add(1);
            }
            _ => {
                self.window_start = Some(now);
                self.calls = 1;
            }
        }
        Ok(())
    }

    pub(super) fn pause(&mut self, until: DateTime<Utc>) {
        self.paused_until = self.paused_until.max(Some(until));
    }
}

/// When a pause of `retry_after` from `now` ends: `Retry-After` is clamped where it is read,
/// and again here, so no arithmetic on it can overflow.
fn pause_end(now: DateTime<Utc>, retry_after: Duration) -> DateTime<Utc> {
    let wait = TimeDelta::from_std(retry_after.min(MAX_RETRY_AFTER)).unwrap_or(TimeDelta::MAX);
    now.checked_add_signed(wait).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl FetchFailure {
    /// A call that was not made: the budget could not afford it, or the provider's pause
    /// lasts. Its error says until when (`retry_after`), and its code is
    /// [`RATE_BUDGET_EXHAUSTED`].
    pub fn denied(denied: CallDenied, at: DateTime<Utc>) -> Self {
        let until = denied.until();
        let when = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let message = match denied {
            CallDenied::Exhausted { .. } => {
                format!("the account's upstream budget (max_calls_per_minute) is spent until {when}; no call was made")
            }
            CallDenied::Paused { .. } => {
                format!("the provider asked for a pause (429 with Retry-After) until {when}; no call was made")
            }
        };
        let wait = until.signed_duration_since(at).to_std().unwrap_or_default();
        let error = UpstreamError::new(UpstreamErrorKind::RateLimited, message).with_retry_after(Some(wait));
        Self { error, at, denied: Some(denied) }
    }

    /// How long until the call may be asked for again, when it was [`denied`](Self::denied).
    pub fn retry_after(&self) -> Option<Duration> {
        self.denied.map(|d| d.until().signed_duration_since(self.at).to_std().unwrap_or_default())
    }
}

impl Service {
    /// Draws one upstream call of `account` (for `operation`, in the log) before it is made.
    /// With replicas the cluster's budget decides, within a share of the time left before
    /// `deadline`; alone, or when the store cannot answer, this process's own window.
    pub(super) async fn draw_call(
        &self,
        account: &AccountState,
        operation: &'static str,
        deadline: Instant,
    ) -> Result<(), FetchFailure> {
        let now = self.clock.now();
        let limit = account.config.max_calls_per_minute;
        // A pause known here needs no round trip to deny.
        let known_pause = account.budget.locked().paused(now);
        let decided = match (known_pause, self.cluster.as_ref().filter(|c| c.answers())) {
            (Some(paused), _) => Err(paused),
            (None, Some(cluster)) => {
                match cluster.draw_call(account.id(), now, limit, Within::share_of(deadline)).await {
                    Ok(decided) => decided,
                    Err(e) => {
                        tracing::warn!(account = %account.id(), error = %e,
                            "could not draw from the cluster's upstream budget; counting in this process");
                        account.budget.locked().draw(limit, now)
                    }
                }
            }
            (None, None) => account.budget.locked().draw(limit, now),
        };
        decided.map_err(|denied| {
            metrics::counter!("tally_upstream_budget_denied_total", "account" => account.id().to_string())
                .increment(1);
            tracing::debug!(account = %account.id(), operation, until = %denied.until(), "upstream call not made: {denied:?}");
            FetchFailure::denied(denied, now)
        })
    }

    /// A provider answered 429 (or its own rate-limit code) with `Retry-After`: pauses the
    /// account's calls until then, here and, with replicas, in the cluster (the write waits
    /// until `deadline` at most, and goes on after).
    pub(super) async fn pause_calls(&self, account: &AccountState, error: &UpstreamError, deadline: Instant) {
        let (UpstreamErrorKind::RateLimited, Some(retry_after)) = (error.kind, error.retry_after) else {
            return;
        };
        let until = pause_end(self.clock.now(), retry_after);
        account.budget.locked().pause(until);
        tracing::info!(account = %account.id(), until = %until, "the provider asked for a pause; calls wait until then");
        if let Some(cluster) = self.cluster.as_ref().filter(|c| c.answers()) {
            match cluster.pause_calls(account.id(), until, write_until(deadline)).await {
                Some(Ok(())) | None => {}
                Some(Err(e)) => {
                    tracing::warn!(account = %account.id(), error = %e, "could not share a provider's pause")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn a_window_counts_its_limit_then_denies_until_it_ends() {
        let mut b = Local::default();
        let limit = NonZeroU32::new(2);
        assert_eq!(b.draw(limit, t0()), Ok(()));
        assert_eq!(b.draw(limit, t0() + TimeDelta::seconds(30)), Ok(()));
        let ends = t0() + TimeDelta::seconds(60);
        assert_eq!(b.draw(limit, t0() + TimeDelta::seconds(59)), Err(CallDenied::Exhausted { until: ends }));
        assert_eq!(b.draw(limit, ends), Ok(()), "a new window starts with the first call after the last ended");
        assert_eq!(b.draw(limit, ends), Ok(()));
        assert!(b.draw(limit, ends).is_err());
    }

    #[test]
    fn a_pause_denies_every_call_even_unlimited_and_a_longer_one_wins() {
        let mut b = Local::default();
        b.pause(t0() + TimeDelta::seconds(10));
        b.pause(t0() + TimeDelta::seconds(5));
        let until = t0() + TimeDelta::seconds(10);
        assert_eq!(b.draw(None, t0()), Err(CallDenied::Paused { until }));
        assert_eq!(b.draw(None, until), Ok(()));
    }

    #[test]
    fn a_pause_of_any_length_ends_without_overflow() {
        assert_eq!(pause_end(t0(), Duration::MAX), t0() + TimeDelta::hours(1));
        assert_eq!(pause_end(DateTime::<Utc>::MAX_UTC, Duration::from_secs(1)), DateTime::<Utc>::MAX_UTC);
    }
}
