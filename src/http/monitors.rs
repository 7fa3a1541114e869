//! `GET /monitors` (SPEC §8.2): each configured monitor with the stored states of its entries.

use axum::extract::{RawQuery, State};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorCode, Problem};
use super::query::Params;
use super::report::Amount;
use crate::domain::monitor::{Condition, Field, Monitor, State as EntryState};
use crate::domain::{AccountId, Currency, Provider};
use crate::service::monitors::EntryView;

#[derive(Serialize, ToSchema)]
pub struct MonitorsResponse {
    /// Every configured monitor, in config order.
    pub monitors: Vec<MonitorLine>,
}

/// One monitor: its rule and the states of the entries it matched.
#[derive(Serialize, ToSchema)]
pub struct MonitorLine {
    #[schema(example = "leanx-prefund-low")]
    pub id: String,
    pub filter: MonitorFilter,
    pub field: Field,
    pub condition: Condition,
    #[schema(value_type = String, example = "500.00", pattern = r"^-?\d+(\.\d+)?$")]
    pub threshold: Decimal,
    /// Where a firing entry clears (the threshold when the config gives no `clear`).
    #[schema(value_type = String, example = "750.00", pattern = r"^-?\d+(\.\d+)?$")]
    pub clear: Decimal,
    /// One per matched `(account, wallet, currency)` ever observed, by account, wallet and
    /// currency.
    pub entries: Vec<MonitorEntryLine>,
}

/// What a monitor matches: null filters match every value; `currency` is always given.
#[derive(Serialize, ToSchema)]
pub struct MonitorFilter {
    #[schema(value_type = Option<String>, example = "leanx-main")]
    pub account: Option<AccountId>,
    pub provider: Option<Provider>,
    #[schema(example = "prefund")]
    pub wallet: Option<String>,
    #[schema(value_type = String, example = "MYR")]
    pub currency: Currency,
}

/// One matched entry's state.
#[derive(Serialize, ToSchema)]
pub struct MonitorEntryLine {
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    pub provider: Provider,
    #[schema(example = "prefund")]
    pub wallet: String,
    #[schema(value_type = String, example = "MYR")]
    pub currency: Currency,
    pub state: EntryState,
    /// The latest observed figure (null when the provider does not report that field).
    #[schema(value_type = Option<String>, example = "412.50", pattern = r"^-?\d+(\.\d+)?$")]
    pub value: Amount,
    /// When the entry entered its state (for an entry that never fired, when it was first seen).
    pub since: DateTime<Utc>,
    /// When `value` was observed.
    pub observed_at: DateTime<Utc>,
    /// True when `observed_at` is older than the account's `ttl`: the state may be behind the
    /// provider (no fetch since, or the entry is no longer reported).
    pub stale: bool,
}

impl MonitorLine {
    fn new(m: &Monitor, entries: Vec<EntryView>) -> Self {
        Self {
            id: m.id.clone(),
            filter: MonitorFilter {
                account: m.account.clone(),
                provider: m.provider,
                wallet: m.wallet.clone(),
                currency: m.currency.clone(),
            },
            field: m.field,
            condition: m.condition,
            threshold: m.threshold,
            clear: m.clear,
            entries: entries
                .into_iter()
                .map(|v| MonitorEntryLine {
                    account: v.entry.account,
                    provider: v.entry.provider,
                    wallet: v.entry.wallet,
                    currency: v.entry.currency,
                    state: v.entry.state.state,
                    value: v.entry.state.value,
                    since: v.entry.state.since,
                    observed_at: v.entry.state.observed_at,
                    stale: v.stale,
                })
                .collect(),
        }
    }
}

/// The configured balance monitors, each with the state of every entry it matched.
#[utoipa::path(
    get,
    path = "/monitors",
    tag = "events",
    responses(
        (status = 200, description = "Every configured monitor with its entries' stored states (read from the store, so every replica's fetches count).", body = MonitorsResponse),
        (status = 400, description = "A query parameter was given: `unknown_parameter`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn get_monitors(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<MonitorsResponse>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let states = state.service.monitor_states().await.map_err(|e| {
        tracing::error!(error = %e, "monitor states query failed");
        ApiError::new(ErrorCode::NotReady, "the store is unreachable").retry_after(5)
    })?;
    let monitors = state.service.monitor_book().monitors().iter();
    Ok(axum::Json(MonitorsResponse { monitors: monitors.zip(states).map(|(m, e)| MonitorLine::new(m, e)).collect() }))
}
