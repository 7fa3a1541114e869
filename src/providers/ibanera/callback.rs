//! Ibanera callbacks (PROVIDERS.md §3.5): `TRANSACTION_STATUS_UPDATED` posts whose signing, if
//! any, is not documented for the customer API. Nothing in one is trusted: it only triggers a
//! refresh of the account's balances through the authenticated API.

use crate::providers::{Callback, CallbackRequest, Trigger};

pub fn verify(request: &CallbackRequest<'_>) -> Callback {
    // The body is not read: an unsigned body could say anything.
    let _ = request.body;
    Callback::Trigger(Trigger::Balances)
}
