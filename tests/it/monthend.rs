//! Month-end reporting (SPEC §10, issue 20): `as_of` answers from the stored history.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use wiremock::MockServer;

use crate::both_stores;
use crate::helpers::{TestApp, TestDb, leanx, ok};

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
}

fn account(id: &str, server: &MockServer, extra: &str) -> String {
    format!(
        "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\nmax_retries = 0\n{extra}\n",
        server.uri()
    )
}

fn entry(wallet: &str, currency: &str, amount: &str) -> tally::domain::BalanceEntry {
    let amount = tally::domain::parse_decimal(amount).unwrap();
    tally::domain::BalanceEntry {
        wallet: wallet.into(),
        currency: currency.parse().unwrap(),
        available: Some(amount),
        pending: None,
        reserved: None,
        total: Some(amount),
        blocked: false,
    }
}

/// Records fetches of `account` straight into the store, as the service would have.
async fn record(
    store: &dyn tally::store::Store,
    account: &str,
    fetched_at: DateTime<Utc>,
    entries: Vec<tally::domain::BalanceEntry>,
) {
    let snapshot = tally::store::AccountSnapshot {
        account: account.parse().unwrap(),
        provider: tally::domain::Provider::Leanx,
        fetched_at,
        entries,
        raw: None,
    };
    store.record_balances(&snapshot, &[]).await.unwrap();
}

fn lines_of<'a>(body: &'a Value, account: &str) -> Vec<&'a Value> {
    body["balances"].as_array().unwrap().iter().filter(|l| l["account"] == account).collect()
}

fn line<'a>(body: &'a Value, account: &str, wallet: &str) -> &'a Value {
    lines_of(body, account).into_iter().find(|l| l["wallet"] == wallet).unwrap_or_else(|| panic!("{wallet}: {body}"))
}

fn account_line<'a>(body: &'a Value, account: &str) -> &'a Value {
    body["accounts"].as_array().unwrap().iter().find(|a| a["account"] == account).unwrap()
}

/// The history of the as_of tests: `asof-a` (ttl 60 s) polled at 10:00:00, 10:00:30 (no
/// change) and 10:01:00 (prefund changes, transaction confirmed), then nothing; `asof-b`
/// never fetched.
async fn seed_history(db: &TestDb) {
    let store = db.store();
    store.migrate().await.unwrap();
    let t = at("2026-11-20T10:00:00Z");
    record(&*store, "asof-a", t, vec![entry("prefund", "MYR", "100.00"), entry("transaction", "MYR", "5.00")]).await;
    record(
        &*store,
        "asof-a",
        t + TimeDelta::seconds(30),
        vec![entry("prefund", "MYR", "100.00"), entry("transaction", "MYR", "5.00")],
    )
    .await;
    record(
        &*store,
        "asof-a",
        t + TimeDelta::seconds(60),
        vec![entry("prefund", "MYR", "150.50"), entry("transaction", "MYR", "5.00")],
    )
    .await;
    store.close().await;
}

async fn as_of_app(db: &TestDb) -> (TestApp, MockServer) {
    seed_history(db).await;
    let server = leanx(ok("999.00", "999.00")).await;
    let config =
        format!("{}{}", account("asof-a", &server, "ttl = \"60s\""), account("asof-b", &server, "ttl = \"60s\""));
    (TestApp::spawn(db.url(), &config).await, server)
}

async fn as_of_serves_the_change_point_in_force_from_the_store(db: &TestDb) {
    let (app, server) = as_of_app(db).await;

    // The first second of a change point: the new figure, confirmed at that very time.
    let (status, body) = app.get_json("/balances?as_of=2026-11-20T10:01:00Z").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["as_of"], "2026-11-20T10:01:00Z");
    let prefund = line(&body, "asof-a", "prefund");
    assert_eq!(prefund["available"], "150.50");
    assert_eq!(prefund["fetched_at"], "2026-11-20T10:01:00Z");
    assert_eq!((prefund["age_seconds"].as_u64(), prefund["stale"].as_bool()), (Some(0), Some(false)));
    let a = account_line(&body, "asof-a");
    assert_eq!((a["status"].as_str(), a["source"].as_str()), (Some("fresh"), Some("store")), "{body}");
    assert_eq!(a["error"], Value::Null);
    let b = account_line(&body, "asof-b");
    assert_eq!((b["status"].as_str(), b["source"].as_str()), (Some("failed"), Some("store")), "{body}");
    assert_eq!(b["error"]["code"], "no_data");
    assert_eq!(body["complete"], false, "asof-b has nothing");
    assert_eq!(body["totals"][0]["total"], "155.50", "{body}");
    assert_eq!(body["totals"][0]["entries"], 2);

    // One second before: the previous point, last confirmed 29 s earlier.
    let (_, body) = app.get_json("/balances?as_of=2026-11-20T10:00:59Z").await;
    let prefund = line(&body, "asof-a", "prefund");
    assert_eq!(prefund["available"], "100.00");
    assert_eq!(prefund["fetched_at"], "2026-11-20T10:00:30Z");
    assert_eq!((prefund["age_seconds"].as_u64(), prefund["stale"].as_bool()), (Some(29), Some(false)));
    // The unchanged transaction figure was confirmed after that time: fetched_at is as_of.
    assert_eq!(line(&body, "asof-a", "transaction")["fetched_at"], "2026-11-20T10:00:59Z");

    // Inside a confirmed range, written in another offset (the same instant as 10:00:15Z).
    let (_, body) = app.get_json("/balances?as_of=2026-11-20T18:00:15%2B08:00").await;
    assert_eq!(body["as_of"], "2026-11-20T10:00:15Z");
    let prefund = line(&body, "asof-a", "prefund");
    assert_eq!(
        (prefund["available"].as_str(), prefund["fetched_at"].as_str()),
        (Some("100.00"), Some("2026-11-20T10:00:15Z"))
    );
    assert_eq!(prefund["age_seconds"], 0);

    // In the gap after the last confirmation: the last figure, stale past the ttl.
    let (_, body) = app.get_json("/balances?as_of=2026-11-20T10:05:00Z&account=asof-a").await;
    let prefund = line(&body, "asof-a", "prefund");
    assert_eq!(prefund["available"], "150.50");
    assert_eq!(prefund["fetched_at"], "2026-11-20T10:01:00Z");
    assert_eq!((prefund["age_seconds"].as_u64(), prefund["stale"].as_bool()), (Some(240), Some(true)));
    assert_eq!(account_line(&body, "asof-a")["status"], "stale");
    assert_eq!(body["totals"][0]["stale_entries"], 2);
    assert_eq!(body["accounts"].as_array().unwrap().len(), 1, "the account filter holds");

    // Before any figure: no_data, still a 200.
    let (status, body) = app.get_json("/balances?as_of=2026-11-20T09:00:00Z").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balances"], serde_json::json!([]));
    assert_eq!(body["totals"], serde_json::json!([]));
    assert!(
        body["accounts"].as_array().unwrap().iter().all(|a| a["error"]["code"] == "no_data" && a["status"] == "failed")
    );

    // A currency filter keeps the accounts and drops other currencies' entries.
    let (_, body) = app.get_json("/balances?as_of=2026-11-20T10:01:00Z&currency=USD").await;
    assert_eq!(body["balances"], serde_json::json!([]));
    assert_eq!(account_line(&body, "asof-a")["status"], "fresh");

    assert!(server.received_requests().await.unwrap().is_empty(), "as_of never calls upstream");
}

async fn as_of_refuses_bad_times_and_max_age(db: &TestDb) {
    let (app, _server) = as_of_app(db).await;
    for (query, code) in [
        ("as_of=2026-11-22T08:00:01Z", "invalid_as_of"),
        ("as_of=yesterday", "invalid_as_of"),
        ("as_of=2026-11-20", "invalid_as_of"),
        ("as_of=2026-11-20T10:00:00Z&max_age=10", "invalid_query"),
        ("as_of=2026-11-20T10:00:00Z&include=raw", "invalid_include"),
        ("as_of=2026-11-20T10:00:00Z&as_of=2026-11-20T10:00:01Z", "invalid_query"),
    ] {
        let (status, body) = app.get_json(&format!("/balances?{query}")).await;
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    // Now itself is not the future.
    let (status, _) = app.get_json("/balances?as_of=2026-11-22T08:00:00Z").await;
    assert_eq!(status, 200);
}

async fn as_of_answers_tag_and_304_without_touching_the_live_cache(db: &TestDb) {
    let (app, server) = as_of_app(db).await;
    let path = "/balances?as_of=2026-11-20T10:05:00Z&account=asof-a";
    let first = app.get(path).await;
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    app.advance(std::time::Duration::from_secs(5));
    let again = app.get(path).await;
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag, "generated_at is not content");
    let not_modified = app.http.get(format!("{}{path}", app.base)).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(not_modified.status(), 304);
    let other = app.get("/balances?as_of=2026-11-20T10:01:00Z&account=asof-a").await;
    assert_ne!(other.headers()["etag"].to_str().unwrap(), etag, "another time, other figures");

    // The live answer of the same selection is live, with its own tag.
    let (status, live) = app.get_json("/balances?account=asof-a").await;
    assert_eq!(status, 200);
    assert!(live.get("as_of").is_none(), "{live}");
    assert_eq!(line(&live, "asof-a", "prefund")["available"], "999.00");
    assert_eq!(account_line(&live, "asof-a")["source"], "live");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    let live_again = app.get("/balances?account=asof-a").await;
    assert_ne!(live_again.headers()["etag"].to_str().unwrap(), etag);
    // And as_of still answers from the store after the live fetch.
    let (_, body) = app.get_json(path).await;
    assert_eq!(line(&body, "asof-a", "prefund")["available"], "150.50");
}

const EVIL: &str = "=HYPERLINK(\"http://evil.example\",\"x\")";

/// A CSV answer parsed back by the csv crate: header and rows, after checking the framing.
async fn csv_of(response: reqwest::Response, route: &str) -> (Vec<String>, Vec<Vec<String>>) {
    assert_eq!(response.status(), 200);
    let h = response.headers().clone();
    assert_eq!(h["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        h["content-disposition"].to_str().unwrap(),
        format!("attachment; filename=\"tally-{route}-2026-11-22.csv\""),
        "named after the route and the UTC date"
    );
    let body = response.bytes().await.unwrap();
    assert!(!body.starts_with(b"\xEF\xBB\xBF"), "no BOM");
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.ends_with("\r\n"), "CRLF line ends");
    assert_eq!(text.matches('\n').count(), text.matches("\r\n").count(), "every line ends in CRLF: {text:?}");
    let mut reader = csv::Reader::from_reader(&body[..]);
    let header = reader.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = reader.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect();
    (header, rows)
}

fn column(header: &[String], name: &str) -> usize {
    header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"))
}

/// The JSON text of a figure, `""` for null, as the CSV should hold it.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn csv_answers_match_the_json_and_never_run_formulas(db: &TestDb) {
    let store = db.store();
    store.migrate().await.unwrap();
    let t = at("2026-11-21T10:00:00Z");
    let mut odd = entry(EVIL, "MYR", "-5.00");
    odd.pending = Some(tally::domain::parse_decimal("0.12345678").unwrap());
    record(&*store, "csv-a", t, vec![entry("prefund", "MYR", "393.63"), odd, entry("+cmd", "USD", "17.4781")]).await;
    store.close().await;
    let server = leanx(ok("393.63", "26.05")).await;
    let config = format!("{}{}", account("csv-a", &server, "ttl = \"60s\""), account("csv-live", &server, ""));
    let app = TestApp::spawn(db.url(), &config).await;

    // as_of: every JSON figure is the CSV's cell, text cells guarded, amounts untouched.
    let path = "/balances?as_of=2026-11-21T10:00:30Z&account=csv-a";
    let (_, json) = app.get_json(path).await;
    let (header, rows) = csv_of(app.get(&format!("{path}&format=csv")).await, "balances").await;
    assert_eq!(
        header.join(","),
        "account,provider,wallet,currency,available,pending,reserved,total,blocked,fetched_at,age_seconds,stale"
    );
    let lines = json["balances"].as_array().unwrap();
    assert_eq!(rows.len(), lines.len());
    for (row, line) in rows.iter().zip(lines) {
        for name in [
            "account",
            "provider",
            "currency",
            "available",
            "pending",
            "reserved",
            "total",
            "blocked",
            "fetched_at",
            "age_seconds",
            "stale",
        ] {
            assert_eq!(row[column(&header, name)], cell(&line[name]), "{name} of {line}");
        }
        let wallet = line["wallet"].as_str().unwrap();
        let expected = if wallet.starts_with(['=', '+', '-', '@']) { format!("'{wallet}") } else { wallet.to_owned() };
        assert_eq!(row[column(&header, "wallet")], expected);
    }
    let evil = rows.iter().find(|r| r[column(&header, "wallet")].contains("HYPERLINK")).unwrap();
    assert_eq!(evil[column(&header, "wallet")], format!("'{EVIL}"), "the formula is neutralized");
    assert_eq!(evil[column(&header, "available")], "-5.00", "a negative amount stays a number");
    assert_eq!(evil[column(&header, "pending")], "0.12345678");
    assert_eq!(evil[column(&header, "reserved")], "", "null is an empty cell");
    assert!(rows.iter().any(|r| r[column(&header, "wallet")] == "'+cmd"));

    // Accept: text/csv asks for the same; its tag is not the JSON's, and it answers 304.
    let by_accept = app.http.get(format!("{}{path}", app.base)).header("accept", "text/csv").send().await.unwrap();
    let csv_tag = by_accept.headers()["etag"].to_str().unwrap().to_owned();
    let (_, again) = csv_of(by_accept, "balances").await;
    assert_eq!(again, rows);
    let json_tag = app.get(path).await.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(csv_tag, json_tag);
    let not_modified =
        app.http.get(format!("{}{path}&format=csv", app.base)).header("if-none-match", &csv_tag).send().await.unwrap();
    assert_eq!(not_modified.status(), 304);

    // History: the stored points, the same guard.
    let (_, history) = app.get_json("/balances/history?account=csv-a").await;
    let r = app.get("/balances/history?account=csv-a&format=csv").await;
    let history_tag = r.headers()["etag"].to_str().unwrap().to_owned();
    let (header, rows) = csv_of(r, "balances-history").await;
    assert_eq!(
        header.join(","),
        "account,provider,wallet,currency,available,pending,reserved,total,blocked,first_seen_at,last_confirmed_at"
    );
    let points = history["points"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for (row, point) in rows.iter().zip(points) {
        for name in ["available", "pending", "reserved", "total", "blocked", "first_seen_at", "last_confirmed_at"] {
            assert_eq!(row[column(&header, name)], cell(&point[name]), "{name} of {point}");
        }
    }
    assert!(rows.iter().any(|r| r[column(&header, "wallet")] == format!("'{EVIL}")));
    let not_modified = app
        .http
        .get(format!("{}/balances/history?account=csv-a&format=csv", app.base))
        .header("if-none-match", &history_tag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);

    // Live: the JSON and the CSV of one fetch agree; the CSV answers 304 to its own tag.
    let (_, live) = app.get_json("/balances?account=csv-live").await;
    let r = app.get("/balances?account=csv-live&format=csv").await;
    let live_tag = r.headers()["etag"].to_str().unwrap().to_owned();
    let (header, rows) = csv_of(r, "balances").await;
    for (row, line) in rows.iter().zip(live["balances"].as_array().unwrap()) {
        for name in ["wallet", "available", "pending", "total", "fetched_at", "stale"] {
            assert_eq!(row[column(&header, name)], cell(&line[name]), "{name} of {line}");
        }
    }
    let not_modified = app
        .http
        .get(format!("{}/balances?account=csv-live&format=csv", app.base))
        .header("if-none-match", &live_tag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "one live fetch served both");

    let (status, body) = app.get_json("/balances?format=xml").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_format")));
    let (status, body) = app.get_json("/balances/history?format=").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_format")));
}

const REPORTING: &str = r#"
[reporting]
currency = "USD"
scale = 2
max_rate_age = "7d"
rates = [
  { currency = "MYR", rate = "0.2", as_of = "2026-11-10" },
  { currency = "MYR", rate = "0.1", as_of = "2026-11-21" },
]
"#;

fn total<'a>(body: &'a Value, currency: &str) -> &'a Value {
    body["totals"].as_array().unwrap().iter().find(|t| t["currency"] == currency).unwrap_or_else(|| panic!("{body}"))
}

async fn totals_convert_exactly_at_the_rate_of_the_day(db: &TestDb) {
    let store = db.store();
    store.migrate().await.unwrap();
    let t = at("2026-11-01T00:00:00Z");
    record(&*store, "conv-myr", t, vec![entry("prefund", "MYR", "10.05"), entry("transaction", "MYR", "0.00")]).await;
    store.close().await;
    let myr = leanx(ok("10.05", "0.00")).await;
    let usd = leanx(ok("3", "0.5")).await;
    let brl = leanx(ok("7.00", "1.00")).await;
    let config = format!(
        "{}{}{}{REPORTING}",
        account("conv-myr", &myr, ""),
        account("conv-usd", &usd, "currency = \"USD\""),
        account("conv-brl", &brl, "currency = \"BRL\"")
    );
    let app = TestApp::spawn(db.url(), &config).await;

    // Live, on 2026-11-22: MYR at 0.1 (from the 21st). 10.05 × 0.1 is exactly 1.005, half to
    // even 1.00; the f64 product 1.0050000000000001 would give 1.01.
    let (status, live) = app.get_json("/balances").await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(total(&live, "MYR")["converted"], serde_json::json!({"available": "1.00", "total": "1.00"}), "{live}");
    assert_eq!(
        total(&live, "USD")["converted"],
        serde_json::json!({"available": "3.50", "total": "3.50"}),
        "rate 1, scale 2"
    );
    assert_eq!(total(&live, "BRL")["converted"], Value::Null, "no BRL rate");
    assert_eq!(
        live["converted"],
        serde_json::json!({
            "currency": "USD", "available": "4.50", "total": "4.50",
            "rates": [{"currency": "MYR", "rate": "0.1", "as_of": "2026-11-21", "stale": false}],
            "unconverted": ["BRL"], "complete": false,
        })
    );

    // As of the 20th: the rate of the 10th, ten days old (stale past 7d).
    let (_, then) = app.get_json("/balances?as_of=2026-11-20T12:00:00Z").await;
    assert_eq!(total(&then, "MYR")["converted"]["total"], "2.01", "10.05 × 0.2");
    assert_eq!(
        then["converted"],
        serde_json::json!({
            "currency": "USD", "available": "2.01", "total": "2.01",
            "rates": [{"currency": "MYR", "rate": "0.2", "as_of": "2026-11-10", "stale": true}],
            "unconverted": [], "complete": true,
        })
    );

    // As of the 1st: no MYR rate yet.
    let (_, first) = app.get_json("/balances?as_of=2026-11-01T12:00:00Z").await;
    assert_eq!(total(&first, "MYR")["converted"], Value::Null);
    assert_eq!(first["converted"]["total"], Value::Null);
    assert_eq!(first["converted"]["unconverted"], serde_json::json!(["MYR"]));
    assert_eq!(first["converted"]["complete"], false);

    // Without [reporting] nothing is added.
    let plain = TestApp::spawn(db.url(), &account("conv-myr", &myr, "")).await;
    let (_, body) = plain.get_json("/balances").await;
    assert!(body.get("converted").is_none() && total(&body, "MYR").get("converted").is_none(), "{body}");
}

fn one(amount: &str) -> Vec<tally::domain::BalanceEntry> {
    vec![entry("prefund", "MYR", amount)]
}

/// `dst-a` around London's change of 2026-10-25 (a 25-hour day); `kl-a` around midnight in
/// +08:00 on 2026-11-19/20.
async fn daily_app(db: &TestDb) -> (TestApp, MockServer) {
    let store = db.store();
    store.migrate().await.unwrap();
    record(&*store, "dst-a", at("2026-10-23T23:30:00Z"), one("100.00")).await; // the 24th, 00:30 BST
    record(&*store, "dst-a", at("2026-10-24T23:00:00Z"), one("90.00")).await; // the 25th, 00:00 BST
    record(&*store, "dst-a", at("2026-10-25T23:30:00Z"), one("120.00")).await; // the 25th, 23:30 GMT
    record(&*store, "dst-a", at("2026-10-26T00:30:00Z"), one("120.00")).await; // confirmed
    record(&*store, "kl-a", at("2026-11-19T15:30:00Z"), one("50.00")).await; // the 19th, 23:30 +08
    record(&*store, "kl-a", at("2026-11-19T16:30:00Z"), one("70.00")).await; // the 20th, 00:30 +08
    record(&*store, "kl-a", at("2026-11-20T15:00:00Z"), one("70.00")).await; // the 20th, 23:00 +08
    store.close().await;
    let server = leanx(ok("1.00", "1.00")).await;
    let config = format!("{}{}", account("dst-a", &server, "ttl = \"2h\""), account("kl-a", &server, "ttl = \"2h\""));
    (TestApp::spawn(db.url(), &config).await, server)
}

/// The rows of a daily answer as (date, opening total, closing total, low total, high total,
/// changes, stale).
fn daily_rows(body: &Value) -> Vec<(String, String, String, String, String, u64, bool)> {
    body["days"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|d| {
            (
                d["date"].as_str().unwrap().to_owned(),
                cell(&d["opening"]["total"]),
                cell(&d["closing"]["total"]),
                cell(&d["low"]["total"]),
                cell(&d["high"]["total"]),
                d["changes"].as_u64().unwrap(),
                d["stale"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn row(
    date: &str,
    opening: &str,
    closing: &str,
    low: &str,
    high: &str,
    changes: u64,
    stale: bool,
) -> (String, String, String, String, String, u64, bool) {
    (date.into(), opening.into(), closing.into(), low.into(), high.into(), changes, stale)
}

async fn daily_days_follow_the_time_zone(db: &TestDb) {
    let (app, server) = daily_app(db).await;

    // London: the 25th lasts 25 hours (23:00Z to 00:00Z), so 23:30Z is still the 25th.
    let (status, body) =
        app.get_json("/balances/daily?from=2026-10-24&to=2026-10-26&tz=Europe/London&account=dst-a").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["from"].as_str(), body["to"].as_str(), body["tz"].as_str()),
        (Some("2026-10-24"), Some("2026-10-26"), Some("Europe/London"))
    );
    assert_eq!(
        daily_rows(&body),
        vec![
            row("2026-10-24", "", "100.00", "100.00", "100.00", 1, true),
            row("2026-10-25", "90.00", "120.00", "90.00", "120.00", 2, false),
            row("2026-10-26", "120.00", "120.00", "120.00", "120.00", 0, true),
        ],
        "{body}"
    );
    let first = &body["days"][0];
    assert_eq!(
        (first["account"].as_str(), first["provider"].as_str(), first["wallet"].as_str(), first["currency"].as_str()),
        (Some("dst-a"), Some("leanx"), Some("prefund"), Some("MYR"))
    );
    assert_eq!(first["opening"], Value::Null, "no figure before the day");
    assert_eq!(
        first["closing"],
        serde_json::json!({"available": "100.00", "pending": null, "reserved": null, "total": "100.00"})
    );

    // +08:00 across midnight: 16:30Z on the 19th is the 20th there; in UTC both are the 19th.
    let (_, kl) = app.get_json("/balances/daily?from=2026-11-19&to=2026-11-21&tz=%2B08:00&account=kl-a").await;
    assert_eq!(kl["tz"], "+08:00");
    assert_eq!(
        daily_rows(&kl),
        vec![
            row("2026-11-19", "", "50.00", "50.00", "50.00", 1, false),
            row("2026-11-20", "50.00", "70.00", "50.00", "70.00", 1, false),
            row("2026-11-21", "70.00", "70.00", "70.00", "70.00", 0, true),
        ],
        "{kl}"
    );
    let (_, bare_plus) = app.get_json("/balances/daily?from=2026-11-19&to=2026-11-21&tz=+08:00&account=kl-a").await;
    assert_eq!(daily_rows(&bare_plus), daily_rows(&kl), "an unencoded + reads as a space, taken as +");
    let (_, utc) = app.get_json("/balances/daily?from=2026-11-19&to=2026-11-19&account=kl-a").await;
    assert_eq!(utc["tz"], "UTC");
    assert_eq!(daily_rows(&utc), vec![row("2026-11-19", "", "70.00", "50.00", "70.00", 2, false)]);

    // Today closes now; days not begun have no row (now is 2026-11-22T08:00Z, the 22nd's
    // 16:00 in +08:00, the 23rd not yet begun there).
    let (_, today) =
        app.get_json("/balances/daily?from=2026-11-22&to=2026-11-30&tz=Asia/Kuala_Lumpur&account=kl-a").await;
    assert_eq!(daily_rows(&today), vec![row("2026-11-22", "70.00", "70.00", "70.00", "70.00", 0, true)]);

    // Both accounts, ordered by date then account.
    let (_, both) = app.get_json("/balances/daily?from=2026-10-26&to=2026-11-19").await;
    let keys: Vec<(String, String)> = both["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["date"].as_str().unwrap().to_owned(), d["account"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(keys.len(), 25 + 1, "dst-a every day from the 26th to the 19th, kl-a on the 19th");
    assert_eq!(keys.last().unwrap(), &("2026-11-19".to_owned(), "kl-a".to_owned()));
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");

    // CSV: the same figures, parsed back; a null opening is empty cells.
    let r = app.get("/balances/daily?from=2026-10-24&to=2026-10-26&tz=Europe/London&account=dst-a&format=csv").await;
    let (header, rows) = csv_of(r, "balances-daily").await;
    assert_eq!(
        header.join(","),
        "date,account,provider,wallet,currency,opening_available,opening_total,closing_available,closing_pending,closing_reserved,closing_total,low_available,high_available,low_total,high_total,changes,stale"
    );
    assert_eq!(rows.len(), 3);
    for (row, day) in rows.iter().zip(body["days"].as_array().unwrap()) {
        let expect = [
            cell(&day["date"]),
            cell(&day["account"]),
            cell(&day["provider"]),
            cell(&day["wallet"]),
            cell(&day["currency"]),
            cell(&day["opening"]["available"]),
            cell(&day["opening"]["total"]),
            cell(&day["closing"]["available"]),
            cell(&day["closing"]["pending"]),
            cell(&day["closing"]["reserved"]),
            cell(&day["closing"]["total"]),
            cell(&day["low"]["available"]),
            cell(&day["high"]["available"]),
            cell(&day["low"]["total"]),
            cell(&day["high"]["total"]),
            cell(&day["changes"]),
            cell(&day["stale"]),
        ];
        assert_eq!(row, &expect.to_vec());
    }
    assert_eq!((rows[0][5].as_str(), rows[0][6].as_str()), ("", ""));

    // ETag and 304.
    let path = "/balances/daily?from=2026-10-24&to=2026-10-26&tz=Europe/London";
    let etag = app.get(path).await.headers()["etag"].to_str().unwrap().to_owned();
    let again = app.http.get(format!("{}{path}", app.base)).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    assert!(server.received_requests().await.unwrap().is_empty(), "daily never calls upstream");
}

async fn daily_refuses_bad_ranges_and_zones(db: &TestDb) {
    let (app, _server) = daily_app(db).await;
    for (query, code) in [
        ("to=2026-11-01", "invalid_date"),
        ("from=2026-11-01", "invalid_date"),
        ("from=2026-11-31&to=2026-12-01", "invalid_date"),
        ("from=2026-11-02&to=2026-11-01", "invalid_date"),
        ("from=2025-01-01&to=2026-01-02", "invalid_date"),
        ("from=2026-11-01&to=2026-11-02&tz=Mars/Olympus", "invalid_tz"),
        ("from=2026-11-01&to=2026-11-02&tz=%2B8", "invalid_tz"),
        ("from=2026-11-01&to=2026-11-02&format=xls", "invalid_format"),
        ("from=2026-11-01&to=2026-11-02&account=nobody", "unknown_account"),
        ("from=2026-11-01&to=2026-11-02&max_age=1", "unknown_parameter"),
    ] {
        let (status, body) = app.get_json(&format!("/balances/daily?{query}")).await;
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    let (status, body) = app.get_json("/balances/daily?from=2025-01-02&to=2026-01-02").await;
    assert_eq!(status, 200, "366 days: {body}");
}

/// `balance_points_between` (what `/balances/daily` reads): the points first seen in
/// `(after, until]`, ordered by account, wallet, currency and time whatever order they were
/// written in, and the first `limit` of that order when more match. PostgreSQL reads them
/// unordered and sorts them itself, and reads them again, ordered, when more than `limit` match.
async fn points_between_come_ordered_by_series_and_time_and_limited(db: &TestDb) {
    let store = db.store();
    store.migrate().await.unwrap();
    // Written interleaved: each fetch changes every series.
    for (i, minute) in [0, 10, 20, 30].into_iter().enumerate() {
        let amount = |base: u32| format!("{}.{i}0", base + u32::try_from(i).unwrap());
        let t = at("2026-11-20T10:00:00Z") + TimeDelta::minutes(minute);
        for account in ["pb-b", "pb-a"] {
            let entries = vec![entry("transaction", "MYR", &amount(10)), entry("prefund", "MYR", &amount(20))];
            record(store.as_ref(), account, t, entries).await;
        }
    }
    let accounts: Vec<tally::domain::AccountId> = ["pb-b", "pb-a"].iter().map(|a| a.parse().unwrap()).collect();
    let key = |p: &tally::store::HistoryPoint| {
        (p.account.to_string(), p.entry.wallet.clone(), p.first_seen_at, p.entry.total.unwrap().to_string())
    };
    let (after, until) = (at("2026-11-20T10:00:00Z"), at("2026-11-20T10:20:00Z"));
    let all = store.balance_points_between(&accounts, after, until, 100).await.unwrap();
    let series = |account: &'static str, wallet: &'static str, base: u32| {
        (1..=2).map(move |i| {
            let t = at("2026-11-20T10:00:00Z") + TimeDelta::minutes(10 * i64::from(i));
            (account.to_owned(), wallet.to_owned(), t, format!("{}.{i}0", base + i))
        })
    };
    let expected: Vec<_> = series("pb-a", "prefund", 20)
        .chain(series("pb-a", "transaction", 10))
        .chain(series("pb-b", "prefund", 20))
        .chain(series("pb-b", "transaction", 10))
        .collect();
    assert_eq!(all.iter().map(key).collect::<Vec<_>>(), expected, "after excluded, until included, in order");
    let limited = store.balance_points_between(&accounts, after, until, 3).await.unwrap();
    assert_eq!(limited.iter().map(key).collect::<Vec<_>>(), expected[..3], "the first 3 of the order");
    let exact = store.balance_points_between(&accounts, after, until, 8).await.unwrap();
    assert_eq!(exact.iter().map(key).collect::<Vec<_>>(), expected, "exactly `limit` match");
}

both_stores!(
    points_between_come_ordered_by_series_and_time_and_limited,
    daily_days_follow_the_time_zone,
    daily_refuses_bad_ranges_and_zones,
    totals_convert_exactly_at_the_rate_of_the_day,
    csv_answers_match_the_json_and_never_run_formulas,
    as_of_serves_the_change_point_in_force_from_the_store,
    as_of_refuses_bad_times_and_max_age,
    as_of_answers_tag_and_304_without_touching_the_live_cache,
);
