//! A per-account circuit breaker: after `failure_threshold` consecutive failed fetches the
//! circuit opens and no call is made for `cooldown`; then one probe is let through. Fetches of
//! one account are coalesced, so there is never more than one probe at a time in a process;
//! replicas sharing PostgreSQL keep the circuit in the store and decide under the account's
//! lease, so there is one probe at a time in the cluster ([`Circuit::adopt`]).

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::config::CircuitPolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The value of the `tally_circuit_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug)]
pub struct Circuit {
    policy: CircuitPolicy,
    consecutive_failures: u32,
    opened_at: Option<DateTime<Utc>>,
    /// When the circuit first opened in this run of failures (`opened_at` moves at each failed
    /// probe; this stays until a success).
    unhealthy_since: Option<DateTime<Utc>>,
}

impl Circuit {
    pub fn new(policy: CircuitPolicy) -> Self {
        Self { policy, consecutive_failures: 0, opened_at: None, unhealthy_since: None }
    }

    fn reopens_at(&self) -> Option<DateTime<Utc>> {
        let cooldown = TimeDelta::from_std(self.policy.cooldown).unwrap_or(TimeDelta::MAX);
        self.opened_at.map(|t| t + cooldown)
    }

    pub fn state(&self, now: DateTime<Utc>) -> CircuitState {
        match self.reopens_at() {
            None => CircuitState::Closed,
            Some(at) if now < at => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Whether a call may be made now; `Err` carries when the next probe is allowed.
    pub fn allow(&self, now: DateTime<Utc>) -> Result<(), DateTime<Utc>> {
        match (self.state(now), self.reopens_at()) {
            (CircuitState::Open, Some(at)) => Err(at),
            _ => Ok(()),
        }
    }

    /// When the circuit (re)opened; `None` while it is closed.
    pub fn opened_at(&self) -> Option<DateTime<Utc>> {
        self.opened_at
    }

    /// When the circuit first opened in this run of failures; `None` while it is closed.
    pub fn unhealthy_since(&self) -> Option<DateTime<Utc>> {
        self.unhealthy_since
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.opened_at = None;
        self.unhealthy_since = None;
    }

    /// Takes the circuit as the cluster recorded it (replicas sharing a store).
    pub fn adopt(&mut self, consecutive_failures: u32, opened_at: Option<DateTime<Utc>>) {
        self.consecutive_failures = consecutive_failures;
        self.opened_at = opened_at;
        self.unhealthy_since = opened_at.and(self.unhealthy_since.or(opened_at));
    }

    pub fn on_failure(&mut self, now: DateTime<Utc>) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        // A failed probe re-opens at once; a closed circuit opens at the threshold.
        if self.opened_at.is_some() || self.consecutive_failures >= self.policy.failure_threshold {
            self.opened_at = Some(now);
            self.unhealthy_since.get_or_insert(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn circuit() -> Circuit {
        Circuit::new(CircuitPolicy { failure_threshold: 3, cooldown: Duration::from_secs(30) })
    }

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut c = circuit();
        c.on_failure(t0);
        c.on_failure(t0);
        assert_eq!(c.state(t0), CircuitState::Closed);
        c.on_failure(t0);
        assert_eq!(c.state(t0), CircuitState::Open);
        assert!(c.allow(t0 + TimeDelta::seconds(29)).is_err());
        let later = t0 + TimeDelta::seconds(30);
        assert_eq!(c.state(later), CircuitState::HalfOpen);
        assert!(c.allow(later).is_ok());
        c.on_failure(later);
        assert_eq!(c.state(later), CircuitState::Open, "a failed probe re-opens the circuit");
        assert_eq!(c.unhealthy_since(), Some(t0), "unhealthy since the first opening");
        c.on_success();
        assert_eq!(c.unhealthy_since(), None);
        assert_eq!(c.state(later), CircuitState::Closed);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut c = circuit();
        c.on_failure(t0);
        c.on_failure(t0);
        c.on_success();
        c.on_failure(t0);
        c.on_failure(t0);
        assert_eq!(c.state(t0), CircuitState::Closed);
    }
}
