//! `GET /payouts/{id}` over HTTP, with providers faked by wiremock.

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::both_stores;
use crate::helpers::{Gate, TestApp, TestDb, eventually};

const LEANX_PAYOUT: &str = "/api/v1/merchant/get-payout-transaction-by-id";

fn leanx_payout(id: &str, status: &str, extra: &str) -> ResponseTemplate {
    let body = format!(
        r#"{{"response_code":2000,"description":"SUCCESS","data":{{"payout_invoice_no":"{id}","transaction_status":"{status}","value":13.00,"transaction_fee":0.00,"created_at":"2023-12-05T17:43:07","updated_at":"2023-12-05T17:44:05"{extra}}},"breakdown_errors":null,"token":""}}"#
    );
    ResponseTemplate::new(200).set_body_raw(body, "application/json")
}

fn not_found() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_raw(r#"{"response_code":4004,"description":"PAYOUT_NOT_FOUND","data":null}"#, "application/json")
}

fn leanx_account(id: &str, server: &MockServer) -> String {
    format!(
        "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"t\"\ntimeout = \"1s\"\n",
        server.uri()
    )
}

async fn leanx_knowing(id: &str, response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(LEANX_PAYOUT))
        .and(query_param("_id", id))
        .respond_with(response)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(LEANX_PAYOUT)).respond_with(not_found()).mount(&server).await;
    server
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

fn encoded(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

async fn a_final_payout_is_served_from_the_store_without_an_upstream_call(db: &TestDb) {
    let id = "PAYOUT-A9D5:174307-LEANX";
    let server = leanx_knowing(id, leanx_payout(id, "SUCCESS", "")).await;
    let app = TestApp::spawn(db.url(), &leanx_account("leanx-main", &server)).await;
    let (status, body) = app.get_json(&format!("/payouts/{}", encoded(id))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id);
    assert_eq!(body["account"], "leanx-main");
    assert_eq!(body["provider"], "leanx");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["provider_status"], "SUCCESS");
    assert_eq!(body["final"], true);
    assert_eq!(body["amount"], "13.00");
    assert_eq!(body["fee"], "0.00");
    assert_eq!(body["currency"], "MYR");
    assert_eq!(body["created_at"], "2023-12-05T09:43:07Z");
    assert_eq!(body["stale"], false);
    assert_eq!(calls(&server).await, 1);

    app.advance(Duration::from_secs(3600));
    let (status, again) = app.get_json(&format!("/payouts/{}", encoded(id))).await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "succeeded");
    assert_eq!(calls(&server).await, 1, "a final payout needs no upstream call");
    app.get_json(&format!("/payouts/{}?max_age=0", encoded(id))).await;
    assert_eq!(calls(&server).await, 2, "max_age=0 forces a lookup");
}

async fn a_pending_payout_is_looked_up_again_after_max_age_and_served_stale_on_failure(db: &TestDb) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(LEANX_PAYOUT))
        .respond_with(leanx_payout("P1", "PENDING", ""))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(LEANX_PAYOUT))
        .respond_with(leanx_payout("P1", "STATUS_PENDING_APPROVAL", ""))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(LEANX_PAYOUT)).respond_with(ResponseTemplate::new(503)).mount(&server).await;
    let app = TestApp::spawn(db.url(), &leanx_account("leanx-main", &server)).await;
    let (_, first) = app.get_json("/payouts/P1").await;
    assert_eq!(first["status"], "pending");
    app.advance(Duration::from_secs(5));
    let (_, cached) = app.get_json("/payouts/P1").await;
    assert_eq!(
        (cached["status"].as_str(), calls(&server).await),
        (Some("pending"), 1),
        "younger than the default 10 s"
    );
    app.advance(Duration::from_secs(6));
    let (_, refreshed) = app.get_json("/payouts/P1").await;
    assert_eq!(refreshed["status"], "awaiting_approval");
    assert_eq!(calls(&server).await, 2);
    let (status, stale) = app.get_json("/payouts/P1?max_age=0").await;
    assert_eq!(status, 200, "an upstream failure serves the stored state");
    assert_eq!(stale["status"], "awaiting_approval");
    assert_eq!(stale["stale"], true);
}

async fn a_final_status_never_goes_back_to_pending(db: &TestDb) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(LEANX_PAYOUT))
        .respond_with(leanx_payout("P2", "FAILED", ""))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(LEANX_PAYOUT))
        .respond_with(leanx_payout("P2", "PENDING", ""))
        .mount(&server)
        .await;
    let app = TestApp::spawn(db.url(), &leanx_account("leanx-main", &server)).await;
    assert_eq!(app.get_json("/payouts/P2").await.1["status"], "failed");
    let (status, body) = app.get_json("/payouts/P2?max_age=0").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "failed", "the regression is refused");
    assert_eq!(body["provider_status"], "FAILED");
    assert_eq!(calls(&server).await, 2);
}

async fn concurrent_lookups_of_one_id_make_one_call_per_account(db: &TestDb) {
    const CALLERS: u64 = 40;
    let gate = Gate::default();
    let mut servers = Vec::new();
    for status in ["PENDING", "NOT_FOUND"] {
        let server = MockServer::start().await;
        let response = if status == "PENDING" { leanx_payout("P-CO", status, "") } else { not_found() };
        Mock::given(method("POST")).and(path(LEANX_PAYOUT)).respond_with(gate.hold(response)).mount(&server).await;
        servers.push(server);
    }
    // Metric labels are process-wide: these account names are this test's own.
    let ids = [format!("co-{}-knows", db.kind()), format!("co-{}-empty", db.kind())];
    // Long bounds: the lookups wait for the gate, not for a timer.
    let config = format!("{}{}", leanx_account(&ids[0], &servers[0]), leanx_account(&ids[1], &servers[1]))
        .replace("timeout = \"1s\"", "timeout = \"30s\"");
    let app = TestApp::spawn_with(db.url(), "request_timeout = \"30s\"", &config).await;
    let requests: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (http, url) = (app.http.clone(), format!("{}/payouts/P-CO", app.base));
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    // Every caller but the first joins the lookup in flight before any upstream answers.
    for id in &ids {
        let series = format!("tally_coalesced_payout_waiters_total{{account=\"{id}\"}}");
        eventually("every caller joins the lookup in flight", Duration::from_secs(20), || async {
            app.counter(&series).await == CALLERS - 1
        })
        .await;
    }
    gate.open();
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert_eq!((calls(&servers[0]).await, calls(&servers[1]).await), (1, 1), "one upstream call per asked account");
}

both_stores!(
    concurrent_lookups_of_one_id_make_one_call_per_account,
    a_final_payout_is_served_from_the_store_without_an_upstream_call,
    a_pending_payout_is_looked_up_again_after_max_age_and_served_stale_on_failure,
    a_final_status_never_goes_back_to_pending,
);

#[tokio::test]
async fn the_documented_failed_payout_carries_its_error_code() {
    let error = r#","error_message":{"response_code":5223,"error_code":"77","error_message":"Account Verification Failed. Please Try Again","description":"PAYOUT_FAILED","data":null}"#;
    let server = leanx_knowing("INVOICE-77", leanx_payout("PAYOUT-F:1-LEANX", "FAILED", error)).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &leanx_account("leanx-main", &server)).await;
    let (status, body) = app.get_json("/payouts/INVOICE-77").await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "PAYOUT-F:1-LEANX");
    assert_eq!(body["reference"], "INVOICE-77");
    assert_eq!(
        body["failure"],
        serde_json::json!({"code": "77", "message": "Account Verification Failed. Please Try Again"})
    );
}

#[tokio::test]
async fn unknown_ids_are_404_and_ids_known_twice_are_409() {
    let one = leanx_knowing("DUP", leanx_payout("DUP", "SUCCESS", "")).await;
    let two = leanx_knowing("DUP", leanx_payout("DUP", "PENDING", "")).await;
    let db = TestDb::sqlite();
    let app =
        TestApp::spawn(db.url(), &format!("{}{}", leanx_account("a-one", &one), leanx_account("a-two", &two))).await;
    let (status, body) = app.get_json("/payouts/NOPE").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("payout_not_found")));
    let (status, body) = app.get_json("/payouts/DUP").await;
    assert_eq!((status, body["code"].as_str()), (409, Some("payout_ambiguous")));
    assert_eq!(
        body["accounts"],
        serde_json::json!([{"account": "a-one", "provider": "leanx"}, {"account": "a-two", "provider": "leanx"}])
    );
    let (status, body) = app.get_json("/payouts/DUP?account=a-two").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("pending")));
}

#[tokio::test]
async fn an_id_with_colons_slashes_and_spaces_round_trips_safely() {
    let id = "PAY:17/43 07&x";
    let server = leanx_knowing(id, leanx_payout(id, "SUCCESS", "")).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &leanx_account("leanx-main", &server)).await;
    let (status, body) = app.get_json(&format!("/payouts/{}", encoded(id))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id);
    let asked = &server.received_requests().await.unwrap()[0];
    assert_eq!(asked.url.query_pairs().find(|(k, _)| k == "_id").unwrap().1, id);
}

#[tokio::test]
async fn bad_requests_are_400_problems() {
    let server = leanx_knowing("x", not_found()).await;
    let db = TestDb::sqlite();
    let extra = format!(
        "{}[[accounts]]\nid = \"iban\"\nprovider = \"ibanera\"\nbase_url = \"{}\"\nusername = \"u\"\npassword = \"p\"\ntotp_secret = \"JBSWY3DPEHPK3PXP\"\n",
        leanx_account("leanx-main", &server),
        server.uri()
    );
    let app = TestApp::spawn(db.url(), &extra).await;
    for (uri, code) in [
        (format!("/payouts/{}", "x".repeat(129)), "invalid_payout_id"),
        ("/payouts/a%0Ab".to_owned(), "invalid_payout_id"),
        ("/payouts/x?account=nope".to_owned(), "unknown_account"),
        ("/payouts/x?account=iban".to_owned(), "payout_lookup_unsupported"),
        ("/payouts/x?max_age=later".to_owned(), "invalid_max_age"),
        ("/payouts/x?acount=leanx-main".to_owned(), "unknown_parameter"),
    ] {
        let (status, body) = app.get_json(&uri).await;
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{uri}");
    }
    assert_eq!(calls(&server).await, 0);
}

#[tokio::test]
async fn every_lookup_failing_with_nothing_stored_is_502_or_504() {
    let down = MockServer::start().await;
    Mock::given(method("POST")).and(path(LEANX_PAYOUT)).respond_with(ResponseTemplate::new(503)).mount(&down).await;
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(LEANX_PAYOUT))
        .respond_with(not_found().set_delay(Duration::from_secs(5)))
        .mount(&slow)
        .await;
    let db = TestDb::sqlite();
    let app =
        TestApp::spawn(db.url(), &format!("{}{}", leanx_account("down", &down), leanx_account("slow", &slow))).await;
    let (status, body) = app.get_json("/payouts/X1").await;
    assert_eq!((status, body["code"].as_str()), (502, Some("upstream_failed")));
    let codes: Vec<&str> =
        body["accounts"].as_array().unwrap().iter().map(|a| a["error"]["code"].as_str().unwrap()).collect();
    assert_eq!(body["accounts"][0]["error"]["upstream_status"], 503, "{body}");
    assert_eq!(codes, ["upstream_unavailable", "upstream_timeout"]);
    let (status, body) = app.get_json("/payouts/X1?account=slow").await;
    assert_eq!((status, body["code"].as_str()), (504, Some("upstream_timeout")));
}

#[tokio::test]
async fn not_found_elsewhere_while_one_account_fails_is_not_a_404() {
    let down = MockServer::start().await;
    Mock::given(method("POST")).and(path(LEANX_PAYOUT)).respond_with(ResponseTemplate::new(503)).mount(&down).await;
    let knows_nothing = leanx_knowing("other", not_found()).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(
        db.url(),
        &format!("{}{}", leanx_account("down", &down), leanx_account("empty", &knows_nothing)),
    )
    .await;
    let (status, body) = app.get_json("/payouts/MAYBE-THERE").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (502, Some("upstream_failed")),
        "the failing account may know it: {body}"
    );
    assert_eq!(body["accounts"].as_array().unwrap().len(), 1);
    assert_eq!(body["accounts"][0]["account"], "down");
}

#[tokio::test]
async fn luxtak_and_yedpay_payouts_read_back_normalized() {
    let luxtak = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/payout/status"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"code":200,"msg":"success","data":{"payout_id":"TS1","custom_code":"order-1","status":"REFUNDED","description":"refunded by bank"}}"#,
            "application/json",
        ))
        .mount(&luxtak)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/payout/detail"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"code":200,"data":{"amount":"25.50","fee":"0.50","source_currency":"MXN","create_time":1628492701,"update_time":1628496301,"remark":"Refunded by recipient bank"}}"#,
            "application/json",
        ))
        .mount(&luxtak)
        .await;
    let yedpay = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/settlements"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"success":true,"data":[{"id":"SET9","status":"in_progress_settlement","transaction_id":"TX9","currency":"HKD","amount":"300.00","settle_fee":"3.00","created_at":"2024-03-01 10:00:00","updated_at":"2024-03-01 10:05:00"}],"meta":{"pagination":{"total":1,"count":1,"per_page":100,"current_page":1,"total_pages":1}}}"#,
            "application/json",
        ))
        .mount(&yedpay)
        .await;
    let config = format!(
        "[[accounts]]\nid = \"lux\"\nprovider = \"luxtak\"\nbase_url = \"{}\"\napp_id = \"A\"\napp_key = \"K\"\n\
         [[accounts]]\nid = \"yed\"\nprovider = \"yedpay\"\nbase_url = \"{}\"\naccess_token = \"T\"\ncompany_id = \"JwoMPpKy\"\n",
        luxtak.uri(),
        yedpay.uri()
    );
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &config).await;
    let (status, lux) = app.get_json("/payouts/order-1?account=lux").await;
    assert_eq!(status, 200, "{lux}");
    assert_eq!(
        (lux["id"].as_str(), lux["reference"].as_str(), lux["status"].as_str()),
        (Some("TS1"), Some("order-1"), Some("reversed"))
    );
    assert_eq!((lux["amount"].as_str(), lux["currency"].as_str()), (Some("25.50"), Some("MXN")));
    assert_eq!(lux["failure"]["message"], "Refunded by recipient bank");
    let (status, yed): (u16, Value) = app.get_json("/payouts/TX9?account=yed").await;
    assert_eq!(status, 200);
    assert_eq!(
        (yed["id"].as_str(), yed["status"].as_str(), yed["final"].as_bool()),
        (Some("SET9"), Some("processing"), Some(false))
    );
    assert_eq!(yed["created_at"], "2024-03-01T02:00:00Z");
}

#[tokio::test]
async fn a_failed_lookup_is_reported_as_of_when_it_failed() {
    let refused = MockServer::start().await;
    Mock::given(method("POST")).and(path(LEANX_PAYOUT)).respond_with(ResponseTemplate::new(401)).mount(&refused).await;
    let gate = Gate::default();
    let held = MockServer::start().await;
    Mock::given(method("POST")).and(path(LEANX_PAYOUT)).respond_with(gate.hold(not_found())).mount(&held).await;
    let config = format!("{}{}", leanx_account("at-refused", &refused), leanx_account("at-held", &held))
        .replace("timeout = \"1s\"", "timeout = \"30s\"");
    let db = TestDb::sqlite();
    let app = TestApp::spawn_with(db.url(), "request_timeout = \"30s\"", &config).await;
    let request = {
        let (http, url) = (app.http.clone(), format!("{}/payouts/WHEN", app.base));
        tokio::spawn(async move {
            serde_json::from_slice::<Value>(&http.get(url).send().await.unwrap().bytes().await.unwrap()).unwrap()
        })
    };
    // One account refuses at once; the answer leaves 5 s later, when the other one answers.
    let series = r#"tally_upstream_calls_total{provider="leanx",account="at-refused",operation="payout",outcome="upstream_auth_failed"}"#;
    eventually("the refusal", Duration::from_secs(20), || async { app.counter(series).await == 1 }).await;
    app.advance(Duration::from_secs(5));
    gate.open();
    let body = request.await.unwrap();
    assert_eq!(body["code"], "upstream_failed", "{body}");
    assert_eq!(body["accounts"][0]["account"], "at-refused");
    assert_eq!(body["accounts"][0]["error"]["at"], "2026-11-22T08:00:00Z", "{body}");
}

/// A LeanX payout fake that holds every lookup until the test opens it, counting the lookups
/// in flight at once: axum, so that held requests do not serialize on one thread.
#[derive(Clone, Default)]
struct Held {
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

async fn held_upstream(held: Held) -> String {
    use std::sync::atomic::Ordering;
    let app = axum::Router::new().route(
        LEANX_PAYOUT,
        axum::routing::post(
            |axum::extract::State(held): axum::extract::State<Held>,
             axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                let now = held.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                held.most.fetch_max(now, Ordering::SeqCst);
                let _ = held.open.subscribe().wait_for(|open| *open).await;
                held.in_flight.fetch_sub(1, Ordering::SeqCst);
                let id = q.get("_id").cloned().unwrap_or_default();
                (
                    [("content-type", "application/json")],
                    format!(
                        r#"{{"response_code":2000,"description":"SUCCESS","data":{{"payout_invoice_no":"{id}","transaction_status":"SUCCESS","value":13.00,"transaction_fee":0.00,"created_at":"2023-12-05T17:43:07","updated_at":"2023-12-05T17:44:05"}},"breakdown_errors":null,"token":""}}"#
                    ),
                )
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app.with_state(held)).await });
    uri
}

/// Issue 17, point 7: payout lookups take the same permits as balance fetches.
#[tokio::test]
async fn payout_lookups_keep_within_max_concurrent_fetches() {
    use std::sync::atomic::Ordering;
    let db = TestDb::sqlite();
    let held = Held::default();
    let uri = held_upstream(held.clone()).await;
    let account = format!(
        "[[accounts]]\nid = \"capped-lookups\"\nprovider = \"leanx\"\nbase_url = \"{uri}\"\nauth_token = \"t\"\ntimeout = \"30s\"\n"
    );
    let app = TestApp::spawn_with(db.url(), "max_concurrent_fetches = 4\nrequest_timeout = \"60s\"", &account).await;
    let lookups: Vec<_> = (0..40)
        .map(|i| {
            let (http, url) = (app.http.clone(), format!("{}/payouts/P-{i}", app.base));
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    eventually("four lookups reach the upstream", Duration::from_secs(10), || async {
        held.in_flight.load(Ordering::SeqCst) >= 4
    })
    .await;
    held.open.send_replace(true);
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap(), 200);
    }
    let most = held.most.load(Ordering::SeqCst);
    assert_eq!(most, 4, "at most max_concurrent_fetches lookups at the upstream at once; saw {most}");
}
