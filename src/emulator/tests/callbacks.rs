//! The emulators send callbacks signed as LeanX and Luxtak sign them, over real HTTP, to a
//! small receiver that verifies them with tally's own verification (the function the
//! `/callbacks/{account}` route calls).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use chrono::TimeZone;
use tokio::sync::mpsc;

use super::*;
use crate::providers::{Callback, CallbackAck, CallbackRefusal, CallbackRefusalKind, CallbackRequest};

type Outcome = Result<Callback, CallbackRefusal>;

struct Receiver {
    accounts: HashMap<String, AccountConfig>,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(account) = receiver.accounts.get(&account) else { return StatusCode::NOT_FOUND.into_response() };
    let request =
        CallbackRequest { body: &body, headers: &headers, now: chrono::Utc::now(), utc_offset: account.utc_offset };
    let outcome = account.provider.verify_callback(&request);
    let answer = match &outcome {
        Ok(_) => match account.provider.callback_ack() {
            CallbackAck::Json => super::super::json(StatusCode::OK, r#"{"received":true}"#.to_owned()),
            CallbackAck::Text(text) => (StatusCode::OK, text).into_response(),
        },
        Err(refusal) if refusal.kind == CallbackRefusalKind::Unverified => StatusCode::UNAUTHORIZED.into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    };
    receiver.outcomes.send(outcome).expect("the test is listening");
    answer
}

/// A receiver for the demo accounts, plus `leanx-wrong` and `luxtak-wrong` whose keys are not
/// the emulator's. Returns its base URL and the verification outcomes, in order.
async fn receiver(emu: &Emulator) -> (String, mpsc::UnboundedReceiver<Outcome>) {
    let mut accounts: HashMap<String, AccountConfig> =
        demo_accounts(emu).into_iter().map(|a| (a.id.to_string(), a)).collect();
    let mut wrong_leanx = accounts["leanx-main"].clone();
    let ProviderConfig::Leanx(settings) = &wrong_leanx.provider else { panic!("leanx-main is LeanX") };
    wrong_leanx.provider = ProviderConfig::Leanx(LeanxSettings {
        hash_key: Some(secrecy::SecretString::from("not-the-hash-key")),
        ..settings.clone()
    });
    accounts.insert("leanx-wrong".to_owned(), wrong_leanx);
    accounts.insert("luxtak-wrong".to_owned(), with(&accounts["luxtak-latam"], "app_key", "not-the-app-key"));
    let (outcomes, received) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/callbacks/{account}", axum::routing::post(receive))
        .with_state(Arc::new(Receiver { accounts, outcomes }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

async fn send(emu: &Emulator, provider: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/_control/{provider}/callback", emu.addr()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    answer(response).await
}

fn payout(outcome: Option<Outcome>) -> crate::domain::Payout {
    match outcome.expect("the receiver was called") {
        Ok(Callback::Payout(payout)) => *payout,
        other => panic!("not a verified payout: {other:?}"),
    }
}

#[tokio::test]
async fn the_leanx_emulator_sends_a_callback_that_verifies_with_the_demo_hash_key() {
    let emu = emulator().await;
    let (url, mut outcomes) = receiver(&emu).await;
    let (status, report) =
        send(&emu, "leanx", json!({"url": format!("{url}/callbacks/leanx-main"), "payout": "INVOICE1234"})).await;
    assert_eq!((status, &report["status"], &report["body"]), (200, &json!(200), &json!(r#"{"received":true}"#)));
    let payout = payout(outcomes.recv().await);
    assert_eq!(payout.id, "PAYOUT-A9D5:174307-LEANX");
    assert_eq!(payout.reference.as_deref(), Some("INVOICE1234"));
    assert_eq!((payout.status, payout.is_final), (PayoutStatus::Succeeded, true));
    assert_eq!(payout.amount.map(|a| a.to_string()).as_deref(), Some("13.00"));
    // The status API's naive 17:43:07 (+08:00) is the callback's 09:43:07Z.
    assert_eq!(payout.created_at, Some(chrono::Utc.with_ymd_and_hms(2023, 12, 5, 9, 43, 7).unwrap()));

    // Asked for another status, the emulator signs that one.
    let (status, _) = send(
        &emu,
        "leanx",
        json!({"url": format!("{url}/callbacks/leanx-main"), "payout": "PAYOUT-A9D5:174307-LEANX", "status": "FAILED"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(payout_status(outcomes.recv().await), PayoutStatus::Failed);

    // An account with another hash key refuses the same callback.
    let (_, report) =
        send(&emu, "leanx", json!({"url": format!("{url}/callbacks/leanx-wrong"), "payout": "INVOICE1234"})).await;
    assert_eq!(report["status"], json!(401));
    let refusal = outcomes.recv().await.unwrap().unwrap_err();
    assert_eq!(refusal.kind, CallbackRefusalKind::Unverified);
}

fn payout_status(outcome: Option<Outcome>) -> PayoutStatus {
    payout(outcome).status
}

#[tokio::test]
async fn the_luxtak_emulator_sends_a_notification_that_verifies_with_the_demo_app_key() {
    let emu = emulator().await;
    let (url, mut outcomes) = receiver(&emu).await;
    let (status, report) = send(
        &emu,
        "luxtak",
        json!({"url": format!("{url}/callbacks/luxtak-latam"), "payout": "LUX-ORDER-1001", "status": "PAID"}),
    )
    .await;
    assert_eq!((status, &report["status"], &report["body"]), (200, &json!(200), &json!("success")));
    let payout = payout(outcomes.recv().await);
    assert_eq!(payout.id, "TS2026112009000110001");
    assert_eq!(payout.reference.as_deref(), Some("LUX-ORDER-1001"));
    assert_eq!((payout.status, payout.is_final), (PayoutStatus::Succeeded, true));

    let (_, report) = send(
        &emu,
        "luxtak",
        json!({"url": format!("{url}/callbacks/luxtak-wrong"), "payout": "TS2026112009000110001", "status": "REJECTED"}),
    )
    .await;
    assert_eq!(report["status"], json!(401));
    assert_eq!(outcomes.recv().await.unwrap().unwrap_err().kind, CallbackRefusalKind::Unverified);
}

#[tokio::test]
async fn the_callback_control_routes_refuse_unknown_payouts_and_bad_urls() {
    let emu = emulator().await;
    for provider in ["leanx", "luxtak"] {
        let (status, _) = send(&emu, provider, json!({"url": "http://127.0.0.1:9/cb", "payout": "NO-SUCH"})).await;
        assert_eq!(status, 404, "{provider}");
        let (status, _) = send(&emu, provider, json!({"url": "ftp://x/cb", "payout": "INVOICE1234"})).await;
        assert_eq!(status, 400, "{provider}");
        let (status, _) = send(&emu, provider, json!({"payout": "INVOICE1234"})).await;
        assert_eq!(status, 400, "{provider}");
    }
    // Nobody listening: reported as undelivered.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (status, report) =
        send(&emu, "leanx", json!({"url": format!("http://{closed}/cb"), "payout": "INVOICE1234"})).await;
    assert_eq!(status, 502, "{report}");
}
