//! The normalized model every provider is translated into and every response is built from.
//!
//! Nothing here knows a provider's wire format or a database: these are the plain facts
//! tally reasons about (money, balances, payouts, account identity).

mod account;
mod balance;
pub mod event;
mod money;
pub mod monitor;
mod payout;
mod provider;
mod raw_json;
pub mod webhook;

pub use account::{AccountId, InvalidAccountId};
pub use balance::{BalanceEntry, BalanceFetch};
pub use money::{Currency, InvalidCurrency, de_decimal_number, de_opt_decimal_number, parse_decimal};
pub use payout::{Payout, PayoutFailure, PayoutLookup, PayoutStatus};
pub use provider::{Provider, UnknownProvider};
pub use raw_json::{InvalidRawJson, JsonNumber, MAX_DEPTH, RawJson, check_depth};
