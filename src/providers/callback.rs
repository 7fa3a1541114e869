//! Provider callbacks (SPEC §9.2), the pure part: each provider verifies and reads its own
//! callbacks in its room (`providers/<name>/callback.rs`), through
//! [`ProviderSettings::verify_callback`](super::ProviderSettings::verify_callback); the route
//! reaches them through [`ProviderConfig::verify_callback`](super::ProviderConfig::verify_callback)
//! and answers with [`ProviderConfig::callback_ack`](super::ProviderConfig::callback_ack).
//!
//! Nothing here stores, looks up or answers HTTP: a verification is a function of the request
//! and the account's settings, so it is tested without a server.

use chrono::{DateTime, FixedOffset, Utc};
use reqwest::header::HeaderMap;

use crate::domain::Payout;

/// The largest callback body a provider room is asked to read (SPEC §9.2: 64 KiB); the route
/// answers `413` above it before verifying.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024;

/// One callback request as received, and what its verification needs of the account beyond
/// the provider's own settings.
#[derive(Clone, Copy)]
pub struct CallbackRequest<'a> {
    /// The raw body bytes, exactly as received (signatures are over them or their params).
    pub body: &'a [u8],
    pub headers: &'a HeaderMap,
    /// Now, from the service's clock: a token's `exp`/`nbf` are judged against it.
    pub now: DateTime<Utc>,
    /// The account's `utc_offset`, for naive timestamps in a callback.
    pub utc_offset: FixedOffset,
}

/// What a callback that passed its provider's checks tells tally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Callback {
    /// Verified as the provider documents: the payout as the provider reports it, to be applied
    /// like a lookup's answer (then confirmed by a lookup).
    Payout(Box<Payout>),
    /// Nothing in the body is trusted: the callback only says "look again".
    Trigger(Trigger),
}

/// What an unverified callback asks tally to look at again, through the provider's API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Look this payout up (an id read from an unverified body: a hint, never a fact).
    Payout { id: String },
    /// Refresh the account's balances.
    Balances,
}

/// How the route answers a callback it accepted (verified, trigger or duplicate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackAck {
    /// `200` `application/json` `{"received": true}`.
    Json,
    /// `200` `text/plain` with this body (Luxtak retries until it reads `success`).
    Text(&'static str),
}

/// Why a callback was refused. `message` is for the API's `detail` and the receipt: it names
/// what is wrong, never a secret or an expected signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallbackRefusal {
    pub kind: CallbackRefusalKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackRefusalKind {
    /// The signature, algorithm or validity period does not check out: `401 callback_unverified`.
    Unverified,
    /// The body or token is not the documented shape: `400`.
    Malformed,
    /// The provider sends no callbacks tally can use: `404 callbacks_unsupported`.
    Unsupported,
}

impl CallbackRefusal {
    pub fn unverified(message: impl Into<String>) -> Self {
        Self { kind: CallbackRefusalKind::Unverified, message: message.into() }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self { kind: CallbackRefusalKind::Malformed, message: message.into() }
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self { kind: CallbackRefusalKind::Unsupported, message: message.into() }
    }
}
