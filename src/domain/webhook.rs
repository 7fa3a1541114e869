//! Webhooks (SPEC §8.3), the decisions only: which webhooks an event is for, how an attempt is
//! signed (Standard Webhooks), and what an attempt's answer makes of its delivery. The store
//! keeps the deliveries; the service sends them.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};

use super::AccountId;
use super::event::NewEvent;

/// The event `POST /webhooks/{id}/test` raises, for that webhook only.
pub use super::event::WEBHOOK_TEST as TEST_EVENT;

/// Attempts of one webhook in flight at once, across replicas (SPEC §8.3).
pub const MAX_IN_FLIGHT: u32 = 4;

/// What the store needs to know of a webhook to write its deliveries in the transaction of an
/// event: its id and its filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub id: String,
    /// The event types it wants; every type when empty.
    pub events: Vec<String>,
    /// The accounts it wants; every account when empty.
    pub accounts: Vec<AccountId>,
}

impl Route {
    /// Whether `event` is for this webhook: a test event for the webhook it names only; any
    /// other event when its type and account pass the filters.
    pub fn wants(&self, event: &NewEvent) -> bool {
        if event.kind == TEST_EVENT {
            return event.data["webhook"].as_str() == Some(self.id.as_str());
        }
        (self.events.is_empty() || self.events.iter().any(|t| t == event.kind))
            && (self.accounts.is_empty() || self.accounts.contains(&event.account))
    }
}

/// The webhooks of `routes` an event is for, in configuration order.
pub fn recipients<'a>(routes: &'a [Route], event: &'a NewEvent) -> impl Iterator<Item = &'a str> + 'a {
    routes.iter().filter(|r| r.wants(event)).map(|r| r.id.as_str())
}

/// A webhook secret's bytes from its written form: `whsec_` and the base64 of 24 to 64 bytes.
/// The error never quotes the value.
pub fn parse_secret(text: &str) -> Result<Vec<u8>, &'static str> {
    let encoded = text.trim().strip_prefix("whsec_").ok_or("must start with `whsec_`")?;
    let bytes = BASE64.decode(encoded).map_err(|_| "must be `whsec_` followed by base64")?;
    if !(24..=64).contains(&bytes.len()) {
        return Err("must hold 24 to 64 bytes (base64 after `whsec_`)");
    }
    Ok(bytes)
}

/// One signature: `v1,` and the base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}").
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per key, separated by a space (the current
/// secret's first, then the previous one's during a rotation).
pub fn signature_header<'k>(keys: impl IntoIterator<Item = &'k [u8]>, id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.into_iter().map(|key| signature(key, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// What one attempt's answer makes of its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A `2xx` within the timeout.
    Succeeded,
    /// A failure worth retrying: no answer (connect error, timeout), `3xx`, `5xx`, `408`,
    /// `425`, `429`.
    Retry,
    /// Any other `4xx`: the delivery fails at once.
    Fail,
    /// `410 Gone`: the delivery fails and the webhook is disabled until recovered.
    Gone,
}

/// The verdict on an attempt answered with `status` (`None`: no answer).
pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        None => Verdict::Retry,
        Some(200..=299) => Verdict::Succeeded,
        Some(410) => Verdict::Gone,
        Some(408 | 425 | 429) => Verdict::Retry,
        Some(400..=499) => Verdict::Fail,
        Some(_) => Verdict::Retry,
    }
}

/// The wait before the next attempt after `made` failed attempts (this one included) of a
/// delivery, or `None` when the schedule is spent (the delivery has failed): the schedule's
/// `made`-th delay scaled by `jitter` (0.9 to 1.1), or the receiver's `retry_after` if longer.
pub fn retry_delay(schedule: &[Duration], made: u32, retry_after: Option<Duration>, jitter: f64) -> Option<Duration> {
    let delay = *schedule.get(usize::try_from(made).ok()?.checked_sub(1)?)?;
    let jittered = delay.mul_f64(jitter.clamp(0.9, 1.1));
    Some(retry_after.map_or(jittered, |asked| asked.max(jittered)))
}

/// A delivery's state, as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed].into_iter().find(|s| s.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn signs_the_standard_webhooks_published_vector() {
        // The Standard Webhooks Rust library's own test (standardwebhooks 1.0.1, `test_sign`).
        let key = parse_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            signature(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        let both = signature_header([key.as_slice(), b"another key of 24 bytes!"], "m", 1, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
    }

    #[test]
    fn a_secret_is_whsec_and_base64_of_24_to_64_bytes() {
        assert_eq!(parse_secret(&format!("whsec_{}", BASE64.encode([7u8; 24]))).unwrap().len(), 24);
        assert!(parse_secret(&format!("whsec_{}", BASE64.encode([7u8; 64]))).is_ok());
        assert!(parse_secret(&format!("whsec_{}", BASE64.encode([7u8; 23]))).is_err());
        assert!(parse_secret(&format!("whsec_{}", BASE64.encode([7u8; 65]))).is_err());
        assert!(parse_secret(&BASE64.encode([7u8; 32])).is_err(), "the prefix is required");
        assert!(parse_secret("whsec_not base64!").is_err());
    }

    #[test]
    fn answers_are_judged_as_the_spec_says() {
        assert_eq!(verdict(Some(204)), Verdict::Succeeded);
        for retried in [None, Some(301), Some(500), Some(503), Some(408), Some(425), Some(429)] {
            assert_eq!(verdict(retried), Verdict::Retry, "{retried:?}");
        }
        assert_eq!(verdict(Some(400)), Verdict::Fail);
        assert_eq!(verdict(Some(404)), Verdict::Fail);
        assert_eq!(verdict(Some(410)), Verdict::Gone);
    }

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        assert_eq!(retry_delay(&schedule, 1, None, 1.0), Some(Duration::from_secs(5)));
        assert_eq!(retry_delay(&schedule, 2, None, 1.1), Some(Duration::from_secs(330)));
        assert_eq!(retry_delay(&schedule, 1, None, 5.0), Some(Duration::from_secs_f64(5.5)), "jitter is bounded");
        assert_eq!(retry_delay(&schedule, 1, Some(Duration::from_secs(60)), 1.0), Some(Duration::from_secs(60)));
        assert_eq!(retry_delay(&schedule, 2, Some(Duration::from_secs(1)), 1.0), Some(Duration::from_secs(300)));
        assert_eq!(retry_delay(&schedule, 3, None, 1.0), None, "the schedule is spent");
    }

    #[test]
    fn events_go_to_the_webhooks_whose_filters_they_pass() {
        let leanx: AccountId = "leanx-main".parse().unwrap();
        let event = |kind: &'static str, data| NewEvent {
            kind,
            account: leanx.clone(),
            timestamp: chrono::DateTime::UNIX_EPOCH,
            data,
        };
        let all = Route { id: "all".into(), events: vec![], accounts: vec![] };
        let payouts = Route { id: "payouts".into(), events: vec!["payout.finalized".into()], accounts: vec![] };
        let other = Route { id: "other".into(), events: vec![], accounts: vec!["yedpay-hk".parse().unwrap()] };
        let routes = [all, payouts, other];
        let to = |e: &NewEvent| recipients(&routes, e).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(to(&event("payout.finalized", json!({}))), ["all", "payouts"]);
        assert_eq!(to(&event("balance.changed", json!({}))), ["all"]);
        assert_eq!(to(&event(TEST_EVENT, json!({"webhook": "other"}))), ["other"], "a test is for its webhook only");
    }
}
