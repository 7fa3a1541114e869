//! The demo's webhook receiver: a small HTTP server on loopback that takes tally's deliveries
//! as any receiver would, checks each one as the Standard Webhooks specification says (the
//! timestamp within five minutes, one of the `v1,` signatures matching HMAC-SHA256 over
//! `{id}.{timestamp}.{body}` with the secret), and prints it, so a new user sees an alert
//! arrive signed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::domain::webhook::signature;
use crate::sync::MutexExt;

/// How far a delivery's `webhook-timestamp` may be from the receiver's clock (the
/// specification's suggested tolerance), against replays.
const TOLERANCE_SECONDS: i64 = 300;

/// One delivery the receiver accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub id: String,
    pub kind: String,
    pub data: serde_json::Value,
}

/// The receiver's record, shared with the server task.
#[derive(Default)]
pub struct Inbox {
    received: Mutex<Vec<Received>>,
    rejected: Mutex<u64>,
    arrived: Notify,
}

impl Inbox {
    /// Every delivery accepted so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.locked().clone()
    }

    /// Deliveries refused (a signature or timestamp that did not verify).
    pub fn rejected(&self) -> u64 {
        *self.rejected.locked()
    }

    /// Waits until a delivery `accepts` has arrived (or already had), and returns it.
    pub async fn wait_for(&self, accepts: impl Fn(&Received) -> bool) -> Received {
        loop {
            let arrived = self.arrived.notified();
            if let Some(found) = self.received.locked().iter().find(|r| accepts(r)) {
                return found.clone();
            }
            arrived.await;
        }
    }
}

/// A running receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    pub inbox: Arc<Inbox>,
    /// `whsec_…`: what the demo's `[[webhooks]]` entry signs with.
    pub secret: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    key: Vec<u8>,
    inbox: Arc<Inbox>,
    /// Prints each delivery (on for `tally demo`; off in tests, which read the inbox).
    print: bool,
}

impl Receiver {
    /// Starts a receiver with a fresh random secret on `listener`.
    pub fn start(listener: TcpListener, print: bool) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let key: [u8; 32] = rand::random();
        let secret = format!("whsec_{}", BASE64.encode(key));
        let inbox = Arc::new(Inbox::default());
        let shared = Arc::new(Shared { key: key.to_vec(), inbox: Arc::clone(&inbox), print });
        let app = Router::new().route("/webhook", post(receive)).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inbox, secret, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    match verify(&shared.key, &headers, &body, chrono::Utc::now().timestamp()) {
        Ok(received) => {
            if shared.print {
                println!("demo receiver: {} {} (signature verified) {}", received.id, received.kind, received.data);
            }
            shared.inbox.received.locked().push(received);
            shared.inbox.arrived.notify_waiters();
            StatusCode::NO_CONTENT
        }
        Err(why) => {
            if shared.print {
                println!("demo receiver: refused a delivery: {why}");
            }
            *shared.inbox.rejected.locked() += 1;
            StatusCode::UNAUTHORIZED
        }
    }
}

/// A delivery checked as the Standard Webhooks specification says, at `now` (Unix seconds).
fn verify(key: &[u8], headers: &HeaderMap, body: &[u8], now: i64) -> Result<Received, &'static str> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).ok_or("a webhook header is missing");
    let id = header("webhook-id")?;
    let timestamp: i64 = header("webhook-timestamp")?.parse().map_err(|_| "webhook-timestamp is not a number")?;
    if now.abs_diff(timestamp) > TOLERANCE_SECONDS as u64 {
        return Err("webhook-timestamp is too far from now");
    }
    let expected = signature(key, id, timestamp, body);
    let signed = header("webhook-signature")?
        .split(' ')
        .any(|presented| bool::from(presented.as_bytes().ct_eq(expected.as_bytes())));
    if !signed {
        return Err("no signature matches the secret");
    }
    let event: serde_json::Value = serde_json::from_slice(body).map_err(|_| "the body is not JSON")?;
    Ok(Received {
        id: id.to_owned(),
        kind: event["type"].as_str().unwrap_or_default().to_owned(),
        data: event["data"].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        h.insert("webhook-signature", signature.parse().unwrap());
        h
    }

    #[test]
    fn verifies_the_specification_s_published_example() {
        // The Standard Webhooks Rust library's own test vector (standardwebhooks 1.0.1, `test_sign`).
        let key = BASE64.decode("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let sig = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        let got = verify(&key, &headers("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, sig), body, 1649367553);
        assert_eq!(got.map(|r| r.id), Ok("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk".to_owned()));
        let rotated = format!("v1,c3RhbGU= {sig}");
        assert!(
            verify(&key, &headers("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, &rotated), body, 1649367553).is_ok()
        );
        assert_eq!(
            verify(&key, &headers("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, sig), body, 1649367553 + 301),
            Err("webhook-timestamp is too far from now")
        );
        assert_eq!(
            verify(&key, &headers("msg_other", 1649367553, sig), body, 1649367553),
            Err("no signature matches the secret")
        );
    }
}
