//! Recent `/balances` bodies, so that dashboards polling the same figures are answered from
//! bytes rather than by rebuilding and re-serializing the report.
//!
//! One entry per selection (the accounts, currencies and `include` a request resolved to): a
//! new body for a selection replaces its old one, so entries never pile up as ages tick. A
//! body is a function of its key (content, source, ages, errors) but for `generated_at`,
//! which leads it with a fixed width and is spliced in fresh; one spliced body is shared by
//! every answer within one millisecond. A body is serialized once per key, outside the map's
//! lock: concurrent requests for a new body wait (without holding a thread) for the one
//! serializing it. Past
//! [`ENTRIES`] selections or [`BYTES`] (each entry's body and latest splice), the least
//! recently used make room; an entry over a quarter of the budget is not kept.
//!
//! A body is joined through a `tokio::sync::OnceCell`, not through `crate::coalesce` (tally's
//! way to join work in flight, used by fetches, payout lookups and migrations), and must be:
//! - the build borrows the request's outcome (the report is built from it), so it runs inline
//!   in the request that needs it and cannot be a task of its own, which a coalesced call is;
//!   if that request panics while building, the cell hands the build to one waiting request,
//!   where a coalesced call's waiters would each be left to build their own;
//! - the built body is a memo the entry keeps and serves for every later request of its key,
//!   where a coalesced call's slot is freed as soon as it finishes.
//!
//! What the two share is tested here as there: waiting parks no runtime thread, and a late
//! build records its splice only into an entry that still holds its cell (`Lru::spliced`
//! compares the cell), never into one that has moved on to a newer key.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::sync::MutexExt;
use axum::http::HeaderValue;
use bytes::Bytes;
use chrono::{DateTime, Utc};

pub const ENTRIES: usize = 64;
pub const BYTES: usize = 16 << 20;

/// `{"generated_at":"` and the width of a timestamp with milliseconds.
const HEAD: &[u8] = br#"{"generated_at":""#;
const STAMP: usize = "2026-11-22T08:00:00.123Z".len();

pub struct Bodies<S, K>(Mutex<Lru<S, K>>);

struct Lru<S, K> {
    by_selection: HashMap<S, Entry<K>>,
    /// Bytes held by every entry's body and its latest splice.
    bytes: usize,
    /// A counter of uses: the entry with the smallest `used` was used least recently.
    uses: u64,
}

struct Entry<K> {
    key: K,
    built: Arc<tokio::sync::OnceCell<Built>>,
    /// The latest whole body and the `generated_at` it carries.
    spliced: Option<(DateTime<Utc>, Bytes)>,
    used: u64,
    bytes: usize,
}

struct Built {
    etag: HeaderValue,
    /// The body after the timestamp.
    tail: Bytes,
}

impl<S, K> Default for Bodies<S, K> {
    fn default() -> Self {
        Self(Mutex::new(Lru { by_selection: HashMap::new(), bytes: 0, uses: 0 }))
    }
}

impl<S: Hash + Eq + Copy, K: Eq + Copy> Bodies<S, K> {
    /// The `ETag` and the body for `selection` and `key` as of `now`; `build` makes them
    /// (the body with `now` as its `generated_at`) when no entry has them.
    pub async fn answer(
        &self,
        selection: S,
        key: K,
        now: DateTime<Utc>,
        build: impl FnOnce() -> (HeaderValue, Vec<u8>),
    ) -> (HeaderValue, Bytes) {
        let built = {
            let mut lru = self.lock();
            lru.uses += 1;
            let uses = lru.uses;
            match lru.by_selection.get_mut(&selection) {
                Some(entry) if entry.key == key => {
                    entry.used = uses;
                    if let (Some(built), Some((at, body))) = (entry.built.get(), &entry.spliced)
                        && *at == now
                    {
                        return (built.etag.clone(), body.clone());
                    }
                    Arc::clone(&entry.built)
                }
                _ => {
                    let built = Arc::new(tokio::sync::OnceCell::new());
                    let entry = Entry { key, built: Arc::clone(&built), spliced: None, used: uses, bytes: 0 };
                    lru.put(selection, entry);
                    built
                }
            }
        };
        let mut first = None;
        let done = built
            .get_or_init(|| async {
                let (etag, mut body) = build();
                // serde_json grows its buffer by doubling: what is kept is what is used.
                body.shrink_to_fit();
                let body = Bytes::from(body);
                debug_assert!(body.starts_with(HEAD));
                let tail = body.slice(HEAD.len() + STAMP..);
                first = Some(body);
                Built { etag, tail }
            })
            .await;
        let body = first.unwrap_or_else(|| splice(now, &done.tail));
        self.lock().spliced(selection, &built, now, &body, done.tail.len());
        (done.etag.clone(), body)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<S, K>> {
        self.0.locked()
    }
}

impl<S: Hash + Eq + Copy, K: Eq + Copy> Lru<S, K> {
    /// A new entry for `selection`, replacing its old one.
    fn put(&mut self, selection: S, entry: Entry<K>) {
        if let Some(old) = self.by_selection.insert(selection, entry) {
            self.bytes -= old.bytes;
        }
        self.evict_for(selection);
    }

    /// Records the latest splice of `selection`'s entry, if it still holds `built`.
    fn spliced(
        &mut self,
        selection: S,
        built: &Arc<tokio::sync::OnceCell<Built>>,
        now: DateTime<Utc>,
        body: &Bytes,
        tail: usize,
    ) {
        let Some(entry) = self.by_selection.get_mut(&selection).filter(|e| Arc::ptr_eq(&e.built, built)) else {
            return;
        };
        // The first body and its tail share one buffer; later splices have their own.
        let size = body.len() + tail;
        self.bytes = self.bytes - entry.bytes + size;
        entry.bytes = size;
        entry.spliced = Some((now, body.clone()));
        if size > BYTES / 4 {
            self.bytes -= size;
            self.by_selection.remove(&selection);
            return;
        }
        self.evict_for(selection);
    }

    /// Removes the least recently used entries but `keep` while over a bound.
    fn evict_for(&mut self, keep: S) {
        while self.by_selection.len() > ENTRIES || self.bytes > BYTES {
            let oldest = self.by_selection.iter().filter(|(s, _)| **s != keep).min_by_key(|(_, e)| e.used);
            let Some(oldest) = oldest.map(|(s, _)| *s) else { return };
            let evicted = self.by_selection.remove(&oldest).expect("a selection just listed");
            self.bytes -= evicted.bytes;
        }
    }
}

fn splice(now: DateTime<Utc>, tail: &[u8]) -> Bytes {
    let mut stamp = [0u8; STAMP];
    write_stamp(&mut stamp, now);
    let mut body = Vec::with_capacity(HEAD.len() + STAMP + tail.len());
    body.extend_from_slice(HEAD);
    body.extend_from_slice(&stamp);
    body.extend_from_slice(tail);
    Bytes::from(body)
}

/// `generated_at` as the report serializes it (RFC 3339, milliseconds, `Z`), without
/// allocating.
fn write_stamp(out: &mut [u8; STAMP], at: DateTime<Utc>) {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut out[..]);
    write!(cursor, "{}", at.format("%Y-%m-%dT%H:%M:%S%.3fZ")).expect("a timestamp has a fixed width");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_764_000_000_000 + ms).unwrap()
    }

    /// A body as the report serializes it, `size` bytes after the stamp.
    fn body(now: DateTime<Utc>, size: usize) -> Vec<u8> {
        let mut stamp = [0u8; STAMP];
        write_stamp(&mut stamp, now);
        [HEAD, &stamp[..], "x".repeat(size).as_bytes()].concat()
    }

    /// Answers through `bodies`, counting the builds in `builds`.
    async fn ask(
        bodies: &Bodies<u32, u32>,
        builds: &AtomicU32,
        (selection, key): (u32, u32),
        now: DateTime<Utc>,
        size: usize,
    ) -> Bytes {
        let (_, answer) = bodies
            .answer(selection, key, now, || {
                builds.fetch_add(1, Ordering::Relaxed);
                (HeaderValue::from_static("\"t\""), body(now, size))
            })
            .await;
        assert_eq!(answer, body(now, size), "the answer is the body as of now");
        answer
    }

    #[tokio::test]
    async fn a_body_is_built_once_per_key_and_spliced_for_each_new_time() {
        let (bodies, builds) = (Bodies::default(), AtomicU32::new(0));
        let first = ask(&bodies, &builds, (1, 10), at(0), 100).await;
        let again = ask(&bodies, &builds, (1, 10), at(0), 100).await;
        assert!(first.as_ptr() == again.as_ptr(), "one millisecond shares one body");
        ask(&bodies, &builds, (1, 10), at(1), 100).await;
        assert_eq!(builds.load(Ordering::Relaxed), 1, "a new time is spliced, not rebuilt");
        ask(&bodies, &builds, (1, 11), at(2), 100).await;
        assert_eq!(builds.load(Ordering::Relaxed), 2, "a new key is built");
        assert_eq!(bodies.lock().by_selection.len(), 1, "and replaces its selection's old body");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_arriving_while_a_body_is_built_wait_for_it_without_holding_a_thread() {
        let bodies = Arc::new(Bodies::<u32, u32>::default());
        let builds = Arc::new(AtomicU32::new(0));
        let (started, building) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = {
            let (bodies, builds) = (Arc::clone(&bodies), Arc::clone(&builds));
            tokio::spawn(async move {
                bodies
                    .answer(1, 10, at(0), move || {
                        builds.fetch_add(1, Ordering::Relaxed);
                        started.send(()).unwrap();
                        released.recv().unwrap();
                        (HeaderValue::from_static("\"t\""), body(at(0), 100))
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || building.recv().unwrap()).await.unwrap();
        // A second request for the same body while the first builds it: it waits, pending.
        let mut second = std::pin::pin!(bodies.answer(1, 10, at(1), || {
            builds.fetch_add(1, Ordering::Relaxed);
            (HeaderValue::from_static("\"t\""), body(at(1), 100))
        }));
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(second.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "the second request waits for the build in progress");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().1, body(at(0), 100));
        assert_eq!(second.await.1, body(at(1), 100), "spliced from the one build");
        assert_eq!(builds.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn dashboards_with_different_selections_each_keep_theirs() {
        let (bodies, builds) = (Bodies::default(), AtomicU32::new(0));
        for ms in 0..10 {
            ask(&bodies, &builds, (1, 10), at(ms), 100).await;
            ask(&bodies, &builds, (2, 20), at(ms), 100).await;
        }
        assert_eq!(builds.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn entries_and_bytes_are_bounded_and_the_least_recently_used_go_first() {
        let (bodies, builds) = (Bodies::default(), AtomicU32::new(0));
        for selection in 0..ENTRIES as u32 {
            ask(&bodies, &builds, (selection, 0), at(0), 10).await;
        }
        // Selection 0 is asked again: the next new selection evicts selection 1 instead.
        ask(&bodies, &builds, (0, 0), at(1), 10).await;
        ask(&bodies, &builds, (1000, 0), at(1), 10).await;
        {
            let lru = bodies.lock();
            assert_eq!(lru.by_selection.len(), ENTRIES);
            assert!(lru.by_selection.contains_key(&0) && !lru.by_selection.contains_key(&1));
        }
        ask(&bodies, &builds, (0, 0), at(2), 10).await;
        assert_eq!(builds.load(Ordering::Relaxed), ENTRIES as u32 + 1, "selection 0 is still answered from its entry");

        // Each entry counts its body and its splice, and the budget holds.
        for selection in 2000..2010 {
            ask(&bodies, &builds, (selection, 0), at(0), BYTES / 16).await;
            ask(&bodies, &builds, (selection, 0), at(1), BYTES / 16).await;
        }
        {
            let lru = bodies.lock();
            let kept: usize =
                lru.by_selection.values().map(|e| e.spliced.as_ref().map_or(0, |(_, b)| b.len()) + BYTES / 16).sum();
            assert!(lru.bytes <= BYTES && lru.bytes >= kept, "{} bytes counted, {kept} kept", lru.bytes);
            assert!(lru.by_selection.contains_key(&2009), "the newest stays");
        }

        ask(&bodies, &builds, (3000, 0), at(0), BYTES / 4).await;
        assert!(!bodies.lock().by_selection.contains_key(&3000), "an entry over a quarter of the budget is not kept");
    }

    #[test]
    fn the_spliced_stamp_is_what_the_report_serializes() {
        for ms in [0, 1, 999, 1_764_000_000_000, 1_764_000_000_123, 4_102_444_799_999] {
            let at = DateTime::from_timestamp_millis(ms).unwrap();
            let mut stamp = [0u8; STAMP];
            write_stamp(&mut stamp, at);
            assert_eq!(std::str::from_utf8(&stamp).unwrap(), at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
    }
}
