//! One call in flight per key, shared by every caller that needs it: balance fetches (keyed by
//! account), payout lookups (keyed by account and id), and the store's migrations (one key).
//! This is tally's one way to join work in flight; it lives on the ground floor, beside
//! [`crate::sync`], because the store uses it as well as the service.
//!
//! What every user relies on:
//! - the caller that starts a call runs it in a task of its own and [`finish`](Coalescer::finish)es
//!   it there, so callers that give up waiting (a request past its deadline, `/readyz` after
//!   3 s) drop only their receiver and never cancel the shared work;
//! - waiting ([`outcome`]) is a watch channel's notification: it parks no runtime thread;
//! - a call whose task vanished (panicked, or was cancelled with the runtime) is never joined:
//!   its waiters get `None`, and the next caller starts a new call.
//!
//! The `/balances` body cache (`http::body_cache`) is the one exception, and says why there.
//!
//! A call's slot is cleared when it finishes, but only if the slot still holds that call: a
//! caller arriving between the publication of an outcome and the clearing sees a finished call
//! and starts the next one, and that newer call's slot must survive the older call's clean-up
//! (else a third caller would start a third call while the second still runs).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::sync::MutexExt;

/// Receives the outcome of a shared call; `None` until it finishes.
pub type Shared<T> = watch::Receiver<Option<T>>;

pub struct Coalescer<K, T> {
    inflight: Mutex<HashMap<K, Shared<T>>>,
}

/// What a caller got: a call in flight to wait for, or the duty to make the call.
pub enum Joined<K, T> {
    Waiting(Shared<T>),
    Started(Publisher<K, T>, Shared<T>),
}

/// The caller that started a call publishes its outcome through this.
pub struct Publisher<K, T> {
    key: K,
    tx: watch::Sender<Option<T>>,
    /// The receiver stored in the slot, to recognise this call's slot at clean-up.
    mine: Shared<T>,
}

/// Waits for the outcome of a shared call: `None` if its task vanished without publishing one.
/// Dropping this future cancels nothing.
pub async fn outcome<T: Clone>(mut rx: Shared<T>) -> Option<T> {
    // The current value is checked before the channel's closing: an outcome published just
    // before the task ended is still received.
    rx.wait_for(Option::is_some).await.ok().and_then(|outcome| outcome.clone())
}

impl<K: Eq + Hash + Clone, T> Default for Coalescer<K, T> {
    fn default() -> Self {
        Self { inflight: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone, T> Coalescer<K, T> {
    /// Joins the call in flight for `key`, or registers a new one for the caller to make.
    pub fn join_or_start(&self, key: &K) -> Joined<K, T> {
        let mut inflight = self.inflight.locked();
        // A call whose task vanished (its sender dropped) is over too: never join it.
        if let Some(rx) = inflight.get(key)
            && rx.borrow().is_none()
            && rx.has_changed().is_ok()
        {
            return Joined::Waiting(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(key.clone(), rx.clone());
        Joined::Started(Publisher { key: key.clone(), tx, mine: rx.clone() }, rx)
    }

    /// Publishes the outcome to every waiter, then frees the slot if it is still this call's.
    pub fn finish(&self, publisher: Publisher<K, T>, outcome: T) {
        // Publish before clearing: a caller arriving in between sees a finished call and
        // starts a new one rather than waiting on a channel nobody will send to.
        let _ = publisher.tx.send(Some(outcome));
        self.clear(&publisher);
    }

    fn clear(&self, publisher: &Publisher<K, T>) {
        let mut inflight = self.inflight.locked();
        if inflight.get(&publisher.key).is_some_and(|rx| rx.same_channel(&publisher.mine)) {
            inflight.remove(&publisher.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(joined: Joined<&'static str, u32>) -> Publisher<&'static str, u32> {
        match joined {
            Joined::Started(publisher, _) => publisher,
            Joined::Waiting(_) => panic!("expected to start a new call"),
        }
    }

    #[test]
    fn callers_join_the_call_in_flight() {
        let c = Coalescer::default();
        let first = started(c.join_or_start(&"a"));
        let Joined::Waiting(mut rx) = c.join_or_start(&"a") else { panic!("the second caller must join") };
        assert!(matches!(c.join_or_start(&"b"), Joined::Started(..)), "another key is another call");
        c.finish(first, 7);
        assert_eq!(*rx.borrow_and_update(), Some(7));
        assert!(matches!(c.join_or_start(&"a"), Joined::Started(..)), "a finished call is not joined");
    }

    #[test]
    fn an_old_call_s_clean_up_keeps_the_slot_of_a_newer_call() {
        let c = Coalescer::default();
        let first = started(c.join_or_start(&"a"));
        // The race: the first call has published, and a caller arrives before its clean-up.
        let _ = first.tx.send(Some(1));
        let second = started(c.join_or_start(&"a"));
        c.clear(&first);
        let Joined::Waiting(mut rx) = c.join_or_start(&"a") else {
            panic!("a caller arriving now must join the second call, not start a third")
        };
        c.finish(second, 2);
        assert_eq!(*rx.borrow_and_update(), Some(2));
    }

    #[tokio::test]
    async fn a_published_outcome_is_received_and_a_vanished_call_gives_none() {
        let c = Coalescer::default();
        let Joined::Started(publisher, rx) = c.join_or_start(&"a") else { panic!("the first caller starts") };
        c.finish(publisher, 3);
        assert_eq!(outcome(rx).await, Some(3), "received after the publisher is gone");

        let Joined::Started(publisher, rx) = c.join_or_start(&"b") else { panic!("the first caller starts") };
        drop(publisher);
        assert_eq!(outcome(rx).await, None);
        assert!(matches!(c.join_or_start(&"b"), Joined::Started(..)), "a vanished call is not joined");
    }
}
