//! The HTTP skeleton: health, readiness, problem+json, request ids.

use crate::helpers::{TestApp, TestDb};

#[tokio::test]
async fn healthz_and_readyz_answer_on_a_fresh_sqlite_store() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), "").await;
    let (status, body) = app.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    app.stop().await;
}

#[tokio::test]
async fn readyz_is_ready_on_postgres() {
    let Some(db) = TestDb::postgres().await else { return };
    let app = TestApp::spawn(db.url(), "").await;
    let (status, _) = app.get_json("/readyz").await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn readyz_is_503_problem_json_when_the_store_is_down() {
    // Nothing listens on port 1: the store is unreachable, yet tally starts and stays alive.
    let app = TestApp::spawn("postgres://tally@127.0.0.1:1/tally", "").await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "not_ready");
    assert_eq!(body["status"], 503);
    assert!(!body.to_string().contains("127.0.0.1:1"), "the store URL is not exposed");
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "liveness does not depend on the store");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problem_json_with_stable_codes() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), "").await;
    let r = app.get("/no/such/route").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "route_not_found");
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["title"], "Not Found");

    let r = app.http.delete(format!("{}/balances", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_request_id_comes_back_generated_or_propagated() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), "").await;
    let first = app.get("/healthz").await.headers()["x-request-id"].to_str().unwrap().to_owned();
    let second = app.get("/healthz").await.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!first.is_empty() && first != second, "generated ids are unique: {first} {second}");
    let r = app.http.get(format!("{}/healthz", app.base)).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn the_openapi_document_and_docs_page_are_served() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), "").await;
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/balances"]["get"].is_object());
    let r = app.get("/docs/").await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("swagger"), "an interactive page");
}

#[tokio::test]
async fn the_docs_page_calls_no_external_host() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), "").await;
    let page = app.get("/docs/").await.text().await.unwrap();
    let config = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(config.contains("/openapi.json"), "the page's config is served: {config}");
    // Swagger UI's default validator badge makes the page fetch validator.swagger.io.
    let config: String = config.split_whitespace().collect();
    assert!(config.contains(r#""validatorUrl":"none""#), "the validator is off: {config}");
    for (what, text) in [("the page", &page), ("its config", &config)] {
        assert!(!text.contains("://"), "{what} names no host: {text}");
    }
}

#[tokio::test]
async fn a_request_id_is_adopted_only_if_short_and_visible_ascii() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), "").await;
    let id_for = |given: Vec<u8>| {
        let request = app.http.get(format!("{}/healthz", app.base));
        let value = reqwest::header::HeaderValue::from_bytes(&given).expect("a header value");
        async move {
            let r = request.header("x-request-id", value).send().await.unwrap();
            assert_eq!(r.status(), 200, "the request is answered whatever its id");
            r.headers()["x-request-id"].as_bytes().to_vec()
        }
    };
    let longest = "a".repeat(127) + "~";
    assert_eq!(id_for(longest.clone().into_bytes()).await, longest.as_bytes(), "128 visible characters are kept");
    for refused in [
        "x".repeat(380 * 1024).into_bytes(),
        "b".repeat(129).into_bytes(),
        b"two words".to_vec(),
        "caf\u{e9}".as_bytes().to_vec(),
        b"tab\there".to_vec(),
    ] {
        let id = id_for(refused.clone()).await;
        let shown = String::from_utf8_lossy(&refused[..refused.len().min(40)]).into_owned();
        assert!(id != refused, "{shown}… ({} bytes) is not echoed", refused.len());
        assert!((1..=128).contains(&id.len()) && id.iter().all(u8::is_ascii_graphic), "a fresh id instead");
    }
}
