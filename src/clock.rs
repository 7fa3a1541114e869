//! Wall-clock time, injectable so tests can move it without sleeping.

use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

use crate::sync::MutexExt;

pub trait Clock: Send + Sync {
    /// Now, to the millisecond (what the store keeps and the API shows).
    fn now(&self) -> DateTime<Utc>;

    /// Moves on each time the clock is moved by hand: what a wait scheduled by this clock
    /// (a webhook's next retry) wakes on besides its timer. `None` for a clock that moves by
    /// itself.
    fn moved(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        truncate_millis(Utc::now())
    }
}

/// A clock that only moves when told to: for tests of ttl, cool-downs and ages.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>, tokio::sync::watch::Sender<u64>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(truncate_millis(start)), tokio::sync::watch::Sender::new(0))
    }

    pub fn advance(&self, by: std::time::Duration) {
        {
            let mut now = self.0.locked();
            *now += TimeDelta::from_std(by).expect("test durations are small");
        }
        self.1.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.locked()
    }

    fn moved(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.1.subscribe())
    }
}

/// What a background loop scheduled by a [`Clock`] waits on besides its timers: the clock
/// moved by hand (a test's [`ManualClock`]); never, for a clock that moves by itself.
pub struct Moved(Option<tokio::sync::watch::Receiver<u64>>);

impl Moved {
    pub fn of(clock: &dyn Clock) -> Self {
        Self(clock.moved())
    }

    /// Marks the clock's current position as seen: only a later move wakes [`Moved::changed`].
    pub fn seen(&mut self) {
        if let Some(moved) = self.0.as_mut() {
            moved.borrow_and_update();
        }
    }

    /// Waits until the clock is moved (forever for a clock that moves by itself).
    pub async fn changed(&mut self) {
        match self.0.as_mut() {
            Some(moved) => {
                if moved.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

fn truncate_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// How long ago `then` was, in whole non-negative seconds.
pub fn age_seconds(now: DateTime<Utc>, then: DateTime<Utc>) -> u64 {
    (now - then).num_seconds().max(0) as u64
}

/// Age as a std duration, zero when `then` is in the future (clock skew between replicas).
pub fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> std::time::Duration {
    (now - then).to_std().unwrap_or_default()
}
