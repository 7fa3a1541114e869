use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::Currency;

/// The normalized payout status of SPEC §3. Provider statuses map into it in each provider's
/// `transformers.rs`; a status nobody mapped becomes `Unknown` (and is logged there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayoutStatus {
    Pending,
    Processing,
    AwaitingApproval,
    Succeeded,
    Failed,
    Cancelled,
    Reversed,
    Unknown,
}

impl PayoutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Reversed => "reversed",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Processing,
            Self::AwaitingApproval,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
            Self::Reversed,
            Self::Unknown,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// Why a payout failed, in the provider's own words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PayoutFailure {
    /// The provider's failure code (LeanX `error_message.error_code`), if it gives one.
    pub code: Option<String>,
    /// The provider's description of the failure.
    pub message: String,
}

/// One payout as a provider reports it, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payout {
    /// The provider's id for the payout.
    pub id: String,
    /// The merchant's own reference (LeanX `external_invoice_ref`, Luxtak `custom_code`).
    pub reference: Option<String>,
    pub status: PayoutStatus,
    /// The status text exactly as the provider sent it.
    pub provider_status: String,
    /// True when the provider documents `provider_status` as final.
    pub is_final: bool,
    pub amount: Option<Decimal>,
    pub currency: Option<Currency>,
    pub fee: Option<Decimal>,
    pub failure: Option<PayoutFailure>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The answer to "does this account know payout X?".
#[derive(Clone, Debug)]
pub enum PayoutLookup {
    Found(Box<Payout>),
    NotFound,
}
