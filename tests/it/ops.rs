//! Caller auth, load shedding and metrics.

use std::time::Duration;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{self, TestApp, TestDb};

/// The digest of the key "s3cret-key" (`echo -n s3cret-key | tally hash-key`).
const KEY: &str = "s3cret-key";

fn keyed(extra: &str) -> String {
    format!("[auth]\napi_keys = [{{ name = \"grafana\", sha256 = \"{}\" }}]\n{extra}", tally::http::digest_hex(KEY))
}

#[tokio::test]
async fn api_routes_need_a_configured_key_and_probes_do_not() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &keyed("")).await;
    let r = app.get("/balances").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "unauthorized");

    let wrong = app.http.get(format!("{}/balances", app.base)).bearer_auth("s3cret-kez").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app.http.get(format!("{}/balances", app.base)).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(right.status(), 200);
    let accounts = app.http.get(format!("{}/accounts", app.base)).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(accounts.status(), 200);

    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.get(open).await.status(), 200, "{open} is open");
    }
}

#[tokio::test]
async fn metrics_can_require_a_key() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &keyed("[metrics]\nrequire_auth = true")).await;
    assert_eq!(app.get("/metrics").await.status(), 401);
    let r = app.http.get(format!("{}/metrics", app.base)).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn without_keys_tally_refuses_a_non_loopback_address_unless_told() {
    let db = TestDb::sqlite();
    let toml = format!("[server]\nlisten = \"0.0.0.0:0\"\n[store]\nurl = \"{}\"\n", db.url());
    let settings = tally::config::from_toml(&toml).unwrap();
    let err = tally::app::Application::build(settings).await.err().expect("refused");
    assert!(err.to_string().contains("refusing to listen on 0.0.0.0:0 without API keys"), "{err}");

    let settings = tally::config::from_toml(&format!("{toml}[auth]\nallow_anonymous = true\n")).unwrap();
    assert!(tally::app::Application::build(settings).await.is_ok());
    let settings = tally::config::from_toml(&format!("{toml}{}", keyed(""))).unwrap();
    assert!(tally::app::Application::build(settings).await.is_ok());
}

#[tokio::test]
async fn load_beyond_the_limit_is_shed_with_503_and_retry_after() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/merchant/overall-balance"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&upstream)
        .await;
    let db = TestDb::sqlite();
    let extra = format!(
        "[[accounts]]\nid = \"slow\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"t\"\nmax_retries = 0\n",
        upstream.uri()
    );
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_concurrent_requests = 1\nrequest_timeout = \"2s\"\n[store]\nurl = \"{}\"\n{extra}",
        db.url()
    );
    let app = TestApp::spawn_settings(tally::config::from_toml(&toml).unwrap()).await;
    let http = app.http.clone();
    let url = format!("{}/balances", app.base);
    let in_flight = tokio::spawn(async move { http.get(url).send().await.unwrap().status() });
    // Wait until the first request holds the only slot: the upstream has seen its call.
    let reached = tokio::time::timeout(Duration::from_secs(5), async {
        while upstream.received_requests().await.unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    });
    reached.await.expect("the first request reaches the upstream");
    let shed = app.get("/accounts").await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&shed.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "overloaded");
    assert_eq!(app.get("/healthz").await.status(), 200, "probes are never shed");
    assert_eq!(in_flight.await.unwrap(), 503, "the slow request itself ends at its deadline with nothing to serve");
}

#[tokio::test]
async fn metrics_show_upstream_calls_http_requests_and_cache_use() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/merchant/overall-balance"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&upstream)
        .await;
    let db = TestDb::sqlite();
    let extra = format!(
        "[[accounts]]\nid = \"metrics-probe\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"t\"\nmax_retries = 0\n",
        upstream.uri()
    );
    let app = TestApp::spawn(db.url(), &extra).await;
    app.get("/balances").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for series in [
        r#"tally_upstream_calls_total{provider="leanx",account="metrics-probe",operation="balances",outcome="upstream_unavailable"} 1"#,
        r#"tally_cache_misses_total{account="metrics-probe"} 1"#,
        r#"tally_http_requests_total{route="/balances",status="503"}"#,
        r#"tally_circuit_state{account="metrics-probe"} 0"#,
        "tally_http_request_duration_seconds_count",
        "tally_upstream_latency_seconds_bucket",
        "tally_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
}

/// A LeanX account on `upstream`, with the token of [`helpers::leanx`]'s fake.
fn leanx(id: &str, upstream: &MockServer) -> String {
    format!(
        "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\nmax_retries = 0\n",
        upstream.uri()
    )
}

#[tokio::test]
async fn the_api_description_and_its_page_are_open_but_only_callers_see_the_account_ids() {
    let upstream = MockServer::start().await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &keyed(&leanx("leanx-secretive", &upstream))).await;
    assert_eq!(app.get("/docs/").await.status(), 200, "the page loads without a key");
    let (status, public) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200, "the page loads the description without a key");
    let text = public.to_string();
    assert!(!text.contains("leanx-secretive"), "an anonymous caller does not learn the account ids");
    assert_eq!(public["paths"]["/balances"]["get"]["security"], serde_json::json!([{"bearer": []}]), "required");
    assert_eq!(
        public["paths"]["/metrics"]["get"]["security"],
        serde_json::json!([{"bearer": []}, {}]),
        "/metrics stays open unless metrics.require_auth"
    );

    let r = app.http.get(format!("{}/openapi.json", app.base)).bearer_auth(KEY).send().await.unwrap();
    let keyed: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let account =
        keyed["paths"]["/balances"]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "account");
    assert_eq!(account.unwrap()["schema"]["items"]["enum"], serde_json::json!(["leanx-secretive"]));
}

#[tokio::test]
async fn answers_are_gzipped_on_request_and_big_bodies_are_refused() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), "").await;
    let r = app.http.get(format!("{}/openapi.json", app.base)).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let plain = app.get("/openapi.json").await;
    assert!(plain.headers().get("content-encoding").is_none(), "identity unless asked");

    let r = app.http.get(format!("{}/balances", app.base)).body(vec![b'x'; 70 * 1024]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "payload_too_large");
}

#[tokio::test]
async fn a_store_that_was_missing_at_start_is_migrated_once_it_exists() {
    let Some(db) = TestDb::postgres().await else { return };
    let TestDb::Postgres { admin_url, name, .. } = &db else { unreachable!("a PostgreSQL test database") };
    // A database that does not exist yet: tally starts (serving live figures only) and is not
    // ready until the database is there and migrated.
    let later = name.replace("tally_test_", "tally_later_");
    let app = TestApp::spawn(&db.url().replace(name.as_str(), &later), "").await;
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, body["code"].as_str()), (503, Some("not_ready")));

    let admin = |sql: String| async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
    };
    admin(format!("CREATE DATABASE {later}")).await;
    let (status, body) = app.get_json("/readyz").await;
    app.stop().await;
    admin(format!("DROP DATABASE {later} WITH (FORCE)")).await;
    assert_eq!(status, 200, "ready without a restart: {body}");
}

#[tokio::test]
async fn metrics_count_cache_hits_coalesced_waiters_and_figure_ages() {
    let upstream = helpers::leanx(helpers::ok("2.25", "1.50").set_delay(Duration::from_millis(500))).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &leanx("metrics-cache", &upstream)).await;
    // Two forced requests: the second arrives while the first one's fetch is in flight.
    let http = app.http.clone();
    let url = format!("{}/balances?max_age=0", app.base);
    let first = tokio::spawn(async move { http.get(url).send().await.unwrap().status() });
    tokio::time::timeout(Duration::from_secs(5), async {
        while upstream.received_requests().await.unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first fetch reaches the upstream");
    assert_eq!(app.get("/balances?max_age=0").await.status(), 200);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(app.get("/balances").await.status(), 200, "a cache hit");
    app.advance(Duration::from_secs(7));
    let text = app.get("/metrics").await.text().await.unwrap();
    for series in [
        r#"tally_coalesced_waiters_total{account="metrics-cache"} 1"#,
        r#"tally_cache_hits_total{account="metrics-cache"} 1"#,
        r#"tally_figure_age_seconds{account="metrics-cache"} 7"#,
        r#"tally_upstream_calls_total{provider="leanx",account="metrics-cache",operation="balances",outcome="success"} 1"#,
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
}

/// What the README's metrics table says of a series whose labels (wallet, currency) cannot be
/// known before the account's first figure.
const FROM_FIRST_FIGURE: &str = "from the account's first figure";

/// The series of the README's metrics table, each with whether it is labelled by account, less
/// those documented as there [from the first figure](FROM_FIRST_FIGURE) (checked by
/// `metrics_show_each_balance_as_a_gauge_with_its_observed_time_and_whether_the_account_is_up`).
fn documented_series() -> Vec<(String, bool)> {
    let readme = include_str!("../../README.md");
    let table = readme.split("### Metrics").nth(1).expect("a Metrics section");
    let rows = table.lines().skip_while(|l| !l.starts_with("| series")).skip(2).take_while(|l| l.starts_with('|'));
    rows.filter(|row| !row.contains(FROM_FIRST_FIGURE))
        .flat_map(|row| {
            let cells: Vec<&str> = row.split('|').collect();
            let by_account = cells[2].contains("account");
            let names: Vec<String> = cells[1].split('`').skip(1).step_by(2).map(str::to_owned).collect();
            names.into_iter().map(move |name| (name, by_account))
        })
        .collect()
}

#[tokio::test]
async fn a_fresh_scrape_lists_every_series_the_readme_documents() {
    let db = TestDb::sqlite();
    // A name no other test uses: metrics are process-wide. The upstream is never called.
    // With a monitor and a webhook too, whose series are labelled by them (the webhook is never
    // sent to: no figure is stored, so no event is raised).
    let extra = "[[accounts]]\nid = \"fresh-scrape\"\nprovider = \"leanx\"\nbase_url = \"http://127.0.0.1:9\"\nauth_token = \"t\"\n\
                 [[monitors]]\nid = \"fresh-scrape-low\"\naccount = \"fresh-scrape\"\nwallet = \"prefund\"\ncurrency = \"MYR\"\nbelow = \"1\"\n\
                 [[webhooks]]\nid = \"fresh-scrape\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
    let app = TestApp::spawn(db.url(), extra).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    let series = documented_series();
    assert!(series.len() >= 12, "the table is read: {series:?}");
    let missing: Vec<&str> = series
        .iter()
        .filter(|(name, by_account)| {
            !text.lines().any(|line| {
                let Some(rest) = line.strip_prefix(name.as_str()) else { return false };
                let ours = !by_account || rest.contains(r#"account="fresh-scrape""#);
                (rest.starts_with('{') || rest.starts_with(' ') || rest.starts_with("_bucket")) && ours
            })
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(missing.is_empty(), "absent from a fresh scrape: {missing:?}\n{text}");
}

/// The POSTs a `read` key may make (SPEC §5), and the routes open without a key (a provider's
/// callback). Every other operation of the served document that is not a `GET` is an action.
const READ_ACTIONS: [&str; 1] = ["/payouts/{id}/watch"];
const OPEN_ACTIONS: [&str; 1] = ["/callbacks/{account}"];

/// Roles from the served document, so a new action cannot be added open to `read` keys: every
/// operation other than `GET` (and the reads and open routes listed above) answers a `read` key
/// `403 forbidden` before it looks at its arguments, and an `operate` key gets past that check.
#[tokio::test]
async fn every_action_in_the_document_refuses_a_read_key() {
    let db = TestDb::sqlite();
    let (read, operate) = (tally::http::digest_hex("read-key"), tally::http::digest_hex("operate-key"));
    let toml = format!(
        "[auth]\napi_keys = [{{ name = \"reader\", sha256 = \"{read}\" }}, {{ name = \"operator\", sha256 = \"{operate}\", role = \"operate\" }}]\n"
    );
    let app = TestApp::spawn(db.url(), &toml).await;
    let doc: serde_json::Value =
        serde_json::from_slice(&app.get("/openapi.json").await.bytes().await.unwrap()).unwrap();
    let mut actions = Vec::new();
    let parameter = regex::Regex::new(r"\{[^}]+\}").unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys().filter(|m| *m != "get" && *m != "parameters") {
            if READ_ACTIONS.contains(&path.as_str()) || OPEN_ACTIONS.contains(&path.as_str()) {
                continue;
            }
            let responses = &item[method]["responses"];
            assert!(responses.get("403").is_some(), "{method} {path} documents its 403");
            // Path parameters filled with a value no route knows: the role is checked first.
            let concrete = parameter.replace_all(path, "nothing-here").into_owned();
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let send = |key: &'static str| {
                app.http.request(method.clone(), format!("{}{}", app.base, concrete)).bearer_auth(key).send()
            };
            let refused = send("read-key").await.unwrap();
            assert_eq!(refused.status(), 403, "{method} {path}");
            let body: serde_json::Value = serde_json::from_slice(&refused.bytes().await.unwrap()).unwrap();
            assert_eq!(body["code"], "forbidden", "{method} {path}");
            assert_ne!(send("operate-key").await.unwrap().status(), 403, "{method} {path}");
            actions.push(format!("{method} {path}"));
        }
    }
    actions.sort();
    assert_eq!(
        actions,
        ["POST /events/{id}/redeliver", "POST /webhooks/{id}/recover", "POST /webhooks/{id}/test"],
        "the actions of SPEC §8.4; a new one belongs here once it refuses read keys"
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_show_each_balance_as_a_gauge_with_its_observed_time_and_whether_the_account_is_up() {
    let ok = helpers::leanx(helpers::ok("1234567.89", "0.10")).await;
    let down = helpers::leanx(ResponseTemplate::new(503)).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &format!("{}{}", leanx("gauges-ok", &ok), leanx("gauges-down", &down))).await;
    let before = app.get("/metrics").await.text().await.unwrap();
    for series in [r#"tally_account_up{account="gauges-ok"} NaN"#, r#"tally_account_up{account="gauges-down"} NaN"#] {
        assert!(before.contains(series), "before any fetch, up is unknown: missing {series} in:\n{before}");
    }
    assert!(!before.contains(r#"tally_balance{account="gauges-ok""#), "no figure yet, no gauge");

    assert_eq!(app.get("/balances?max_age=0").await.status(), 200);
    app.advance(Duration::from_secs(30));
    let text = app.get("/metrics").await.text().await.unwrap();
    for series in [
        r#"tally_balance{account="gauges-ok",provider="leanx",wallet="prefund",currency="MYR",field="available"} 1234567.89"#,
        r#"tally_balance{account="gauges-ok",provider="leanx",wallet="prefund",currency="MYR",field="total"} 1234567.89"#,
        r#"tally_balance{account="gauges-ok",provider="leanx",wallet="transaction",currency="MYR",field="available"} 0.1"#,
        // The time the figure was fetched (the test clock's start), not the time of the scrape.
        r#"tally_balance_observed_timestamp_seconds{account="gauges-ok",wallet="prefund",currency="MYR"} 1795334400"#,
        r#"tally_balance_observed_timestamp_seconds{account="gauges-ok",wallet="transaction",currency="MYR"} 1795334400"#,
        r#"tally_account_up{account="gauges-ok"} 1"#,
        r#"tally_account_up{account="gauges-down"} 0"#,
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    assert!(!text.contains(r#"tally_balance{account="gauges-down""#), "a failed account has no figure to chart");
    assert!(
        !text.contains(
            r#"tally_balance{account="gauges-ok",provider="leanx",wallet="prefund",currency="MYR",field="pending"}"#
        ),
        "a field the provider does not report (LeanX: pending) is not exported"
    );
}

#[tokio::test]
async fn an_entry_the_provider_stops_listing_reads_nan_not_its_last_figure() {
    let luxtak = MockServer::start().await;
    let answer = |data: &str| {
        ResponseTemplate::new(200)
            .set_body_raw(format!(r#"{{"code":200,"msg":"success","data":{data}}}"#), "application/json")
    };
    Mock::given(method("POST"))
        .and(path("/api/balance"))
        .respond_with(answer(r#"[{"currency":"MXN","amount":"150.25"},{"currency":"USD","amount":"80.00"}]"#))
        .up_to_n_times(1)
        .mount(&luxtak)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/balance"))
        .respond_with(answer(r#"[{"currency":"MXN","amount":"151.00"}]"#))
        .mount(&luxtak)
        .await;
    let db = TestDb::sqlite();
    let config = format!(
        "[[accounts]]\nid = \"gauges-gone\"\nprovider = \"luxtak\"\nbase_url = \"{}\"\napp_id = \"A\"\napp_key = \"K\"\nmax_retries = 0\n",
        luxtak.uri()
    );
    let app = TestApp::spawn(db.url(), &config).await;
    assert_eq!(app.get("/balances?max_age=0").await.status(), 200);
    let first = app.get("/metrics").await.text().await.unwrap();
    let usd =
        r#"tally_balance{account="gauges-gone",provider="luxtak",wallet="main",currency="USD",field="available"}"#;
    assert!(first.contains(&format!("{usd} 80")), "missing {usd} in:\n{first}");

    app.advance(Duration::from_secs(60));
    let (status, body) = app.get_json("/balances?max_age=0").await;
    assert_eq!(status, 200);
    assert_eq!(body["totals"].as_array().unwrap().len(), 1, "only MXN is listed now: {body}");
    let text = app.get("/metrics").await.text().await.unwrap();
    for series in [
        format!("{usd} NaN"),
        r#"tally_balance_observed_timestamp_seconds{account="gauges-gone",wallet="main",currency="USD"} NaN"#
            .to_owned(),
        r#"tally_balance{account="gauges-gone",provider="luxtak",wallet="main",currency="MXN",field="available"} 151"#
            .to_owned(),
        r#"tally_balance_observed_timestamp_seconds{account="gauges-gone",wallet="main",currency="MXN"} 1795334460"#
            .to_owned(),
    ] {
        assert!(text.contains(&series), "missing {series} in:\n{text}");
    }
}
