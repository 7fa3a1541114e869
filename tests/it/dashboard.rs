//! `/dashboard` in a real headless Chromium (Debian's `chromium`, which `.ci/run` installs):
//! no WebDriver, the browser loads the page with a virtual-time budget, runs its script (which
//! refreshes against tally's API) and dumps the DOM, which the test reads. Every host but
//! 127.0.0.1 is unresolvable for the browser, and the page records into the DOM any resource
//! from another origin, any Content-Security-Policy violation and any failed request.
//!
//! Without chromium the browser tests are skipped with a message, except under `CI=true`, where
//! a missing chromium fails them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use tally::demo::Demo;

use crate::helpers::{TestApp, TestDb, leanx, ok};

/// How long one browser run may take (it takes about a second here).
const BROWSER_BOUND: Duration = Duration::from_secs(90);

/// The browser to drive: `$TALLY_CHROMIUM`, else `chromium` or `chromium-browser` on `PATH`.
/// `None` (skip) when there is none and `CI` is not set; a panic under `CI=true`.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("TALLY_CHROMIUM").map(PathBuf::from).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed, and CI is set: install it (`apt-get install -y chromium`, as .ci/run does)"
        );
        eprintln!("SKIPPED: the dashboard browser test needs chromium (`apt-get install -y chromium`)");
    }
    found
}

/// One headless run of `url`; `output` is `--dump-dom` (the DOM on stdout) or a
/// `--screenshot=<path>`. Returns stdout.
async fn browse(chromium: &Path, url: &str, window: &str, output: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            // Nothing but 127.0.0.1 resolves: a request meant elsewhere fails (and is recorded).
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            // Virtual time: the page's 5-second refresh runs twice more, without waiting for it.
            "--virtual-time-budget=12000",
            &format!("--window-size={window}"),
            &format!("--user-data-dir={}", profile.path().display()),
            output,
            url,
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER_BOUND, run).await.expect("chromium finishes").expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8(out.stdout).expect("a UTF-8 DOM")
}

/// The text of an HTML fragment: tags dropped, the entities Chromium writes decoded, spaces
/// collapsed.
fn text(html: &str) -> String {
    let tags = regex::Regex::new(r"<[^>]*>").unwrap();
    let plain = tags.replace_all(html, " ");
    let decoded = plain.replace("&nbsp;", " ").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"");
    decoded.replace("&amp;", "&").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The row `<tr {attribute}="{value}">…</tr>` of the dumped DOM.
fn row<'a>(dom: &'a str, attribute: &str, value: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<tr {attribute}=\"{value}\""))?;
    let end = dom[start..].find("</tr>")? + start;
    Some(&dom[start..end])
}

/// The text of the cell `data-field="{field}"` in a row.
fn cell(row: &str, field: &str) -> Option<String> {
    let re = regex::Regex::new(&format!(r#"<td[^>]*data-field="{field}"[^>]*>(.*?)</td>"#)).unwrap();
    re.captures(row).map(|c| text(&c[1]))
}

/// The `data-*` attributes of the page's network record (`<span id="net" …>`).
fn net(dom: &str, attribute: &str) -> String {
    let re = regex::Regex::new(&format!(r#"<span id="net"[^>]*\bdata-{attribute}="([^"]*)""#)).unwrap();
    re.captures(dom).unwrap_or_else(|| panic!("no data-{attribute} on #net:\n{dom}"))[1].to_owned()
}

async fn json(http: &reqwest::Client, url: String) -> Value {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// The demo with one account failing (Yedpay answers 503), the demo monitor firing (the LeanX
/// prefund pool held at 120.00) and a pending payout looked up: the page shows exactly the
/// totals `/balances` gives, the failing account's error, the firing monitor and the payout,
/// refreshes with `If-None-Match` (some answers are 304), makes no request beyond tally, and
/// does not scroll sideways at 1280×800 or at phone width.
#[tokio::test]
async fn the_dashboard_in_chromium_shows_the_totals_the_failing_account_and_the_firing_monitor() {
    let Some(chromium) = chromium() else { return };
    let demo = Demo::build("127.0.0.1:0".parse().unwrap(), None).await.unwrap();
    let base = format!("http://{}", demo.local_addr());
    let emulator = format!("http://{}", demo.emulator().addr());
    assert!(demo.banner().starts_with(&format!("tally demo: the dashboard at {base}/dashboard")), "{}", demo.banner());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(demo.run_until(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let put = |path: &str, body: &'static str| http.put(format!("{emulator}{path}")).body(body).send();
    assert!(put("/_control/faults/yedpay", r#"{"fail_next":100000}"#).await.unwrap().status().is_success());
    assert!(put("/_control/leanx/prefund", r#"{"value":"120.00"}"#).await.unwrap().status().is_success());
    let payout = json(&http, format!("{base}/payouts/PAYOUT-B7E1%3A091512-LEANX")).await;
    assert_eq!(payout["final"], false, "{payout}");
    json(&http, format!("{base}/balances?max_age=0")).await;

    // The demo figures drift each emulator minute, and the failing account's error changes when
    // its circuit opens: compare with a /balances answer that was the same before and after the
    // browser ran (a run across a change is done again).
    let error = |report: &Value| {
        let accounts = report["accounts"].as_array().unwrap();
        accounts.iter().find(|a| a["account"] == "yedpay-hk").map(|a| a["error"]["message"].clone())
    };
    let mut attempts = 0;
    let (dom, report) = loop {
        attempts += 1;
        let before = json(&http, format!("{base}/balances")).await;
        let dom = browse(&chromium, &format!("{base}/dashboard"), "1280,800", "--dump-dom").await;
        let after = json(&http, format!("{base}/balances")).await;
        if before["totals"] == after["totals"] && error(&before) == error(&after) {
            break (dom, after);
        }
        assert!(attempts < 5, "the figures changed during five browser runs in a row");
    };

    let totals = report["totals"].as_array().unwrap();
    assert!(totals.len() >= 5, "{report}");
    for total in totals {
        let currency = total["currency"].as_str().unwrap();
        let tr = row(&dom, "data-currency", currency).unwrap_or_else(|| panic!("no {currency} row:\n{dom}"));
        for field in ["total", "available", "pending", "reserved"] {
            let expected = total[field].as_str().unwrap_or("—");
            assert_eq!(cell(tr, field).as_deref(), Some(expected), "{currency} {field}: {tr}");
        }
    }

    let failing = report["accounts"].as_array().unwrap().iter().find(|a| a["account"] == "yedpay-hk").unwrap();
    assert_eq!(failing["status"], "failed", "{failing}");
    let tr = row(&dom, "data-account", "yedpay-hk").expect("the failing account's row");
    assert_eq!(cell(tr, "status").as_deref(), Some("failed"), "status as text: {tr}");
    let error =
        format!("{}: {}", failing["error"]["code"].as_str().unwrap(), failing["error"]["message"].as_str().unwrap());
    assert_eq!(cell(tr, "error"), Some(error), "{tr}");
    let fresh = row(&dom, "data-account", "leanx-main").expect("a fresh account's row");
    assert_eq!(cell(fresh, "status").as_deref(), Some("fresh"));
    assert_eq!(cell(fresh, "error").as_deref(), Some(""));

    let alert = row(&dom, "data-monitor", "leanx-prefund-low").expect("the firing monitor's row");
    assert_eq!(cell(alert, "value").as_deref(), Some("120.00"), "{alert}");
    assert!(text(alert).contains("leanx-main / prefund MYR"), "{alert}");
    assert!(row(&dom, "data-payout", "PAYOUT-B7E1:091512-LEANX").is_some(), "the pending payout:\n{dom}");
    assert!(dom.contains("<figure data-currency=\"MYR\">"), "a chart per currency:\n{dom}");
    assert!(dom.contains("role=\"img\" aria-label=\"MYR closing total per day"), "{dom}");

    assert_eq!(net(&dom, "external"), "0", "no request left tally:\n{dom}");
    assert_eq!(net(&dom, "violations"), "0", "no Content-Security-Policy violation");
    assert_eq!(net(&dom, "failed"), "0", "no request failed");
    assert!(net(&dom, "refreshes").parse::<u32>().unwrap() >= 2, "it refreshed");
    assert!(net(&dom, "not-modified").parse::<u32>().unwrap() >= 1, "a refresh was answered 304 (If-None-Match)");
    assert_eq!(net(&dom, "overflow"), "false", "no sideways scrolling at 1280×800");

    let phone = browse(&chromium, &format!("{base}/dashboard"), "390,844", "--dump-dom").await;
    assert_eq!(net(&phone, "overflow"), "false", "no sideways scrolling at phone width");

    // `UPDATE_SCREENSHOT=1` writes the README's screenshot from this run's demo data.
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        browse(&chromium, &format!("{base}/dashboard"), "1280,800", &format!("--screenshot={}", png.display())).await;
        assert!(std::fs::metadata(&png).unwrap().len() > 10_000, "a screenshot");
    }

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// With keys configured the page and its assets are open, with a policy that lets them reach
/// nothing but tally, while the data stays behind the key; in the browser the page asks for a
/// key instead of showing figures.
#[tokio::test]
async fn with_keys_the_page_is_open_asks_for_a_key_and_the_data_is_not() {
    let db = TestDb::sqlite();
    let keys =
        format!("[auth]\napi_keys = [{{ name = \"finance\", sha256 = \"{}\" }}]\n", tally::http::digest_hex("k"));
    let app = TestApp::spawn(db.url(), &keys).await;
    for (path, content_type) in [
        ("/dashboard", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/app.css", "text/css; charset=utf-8"),
        ("/dashboard/icon.svg", "image/svg+xml"),
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path} is open");
        assert_eq!(r.headers()["content-type"], content_type, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'; script-src 'self'; style-src 'self';"), "{csp}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let page = app.get("/dashboard").await.text().await.unwrap();
    assert!(!page.contains("<script>") && !page.contains("style="), "no inline script or style");
    assert!(!page.contains("http://") && !page.contains("https://"), "nothing from elsewhere");
    assert_eq!(app.get("/balances").await.status(), 401, "the data needs the key");
    assert_eq!(app.get("/dashboard/nothing").await.status(), 404);

    if let Some(chromium) = chromium() {
        let dom = browse(&chromium, &format!("{}/dashboard", app.base), "1280,800", "--dump-dom").await;
        assert!(dom.contains("<form id=\"key-form\">"), "the key form is shown:\n{dom}");
        assert!(dom.contains("<main id=\"main\" hidden=\"\">"), "no figures without a key:\n{dom}");
        assert!(dom.contains("An API key is needed."), "{dom}");
        assert_eq!(net(&dom, "external"), "0");
    }
    app.stop().await;
}

/// Records fetches of `account` straight into the store, as the service would have.
async fn record(store: &dyn tally::store::Store, account: &str, fetched_at: DateTime<Utc>, figures: [(&str, &str); 2]) {
    let entries = figures.map(|(wallet, amount)| {
        let amount = tally::domain::parse_decimal(amount).unwrap();
        tally::domain::BalanceEntry {
            wallet: wallet.into(),
            currency: "MYR".parse().unwrap(),
            available: Some(amount),
            pending: None,
            reserved: None,
            total: Some(amount),
            blocked: false,
        }
    });
    let snapshot = tally::store::AccountSnapshot {
        account: account.parse().unwrap(),
        provider: tally::domain::Provider::Leanx,
        fetched_at,
        entries: entries.to_vec(),
        raw: None,
    };
    store.record_balances(&snapshot, &[]).await.unwrap();
}

/// Three days of stored figures of two MYR accounts and `[reporting]` in USD: the page draws
/// the MYR line through each day's closing total summed exactly over the accounts (its text
/// alternative names the first, last, lowest and highest sums `/balances/daily` implies), and
/// shows the converted total `/balances` gives.
#[tokio::test]
async fn the_dashboard_in_chromium_charts_the_daily_sums_and_shows_the_converted_total() {
    let Some(chromium) = chromium() else { return };
    let db = TestDb::sqlite();
    let store = db.store();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let day = |n: i64| now - TimeDelta::days(n);
    record(&*store, "dash-a", day(3), [("prefund", "100.10"), ("transaction", "0.00")]).await;
    record(&*store, "dash-a", day(2), [("prefund", "250.25"), ("transaction", "0.00")]).await;
    record(&*store, "dash-b", day(3), [("prefund", "0.05"), ("transaction", "1.000")]).await;
    record(&*store, "dash-b", day(1), [("prefund", "0.10"), ("transaction", "7.5")]).await;
    store.close().await;
    let server = leanx(ok("1.01", "2.02")).await;
    let account = |id: &str| {
        format!(
            "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\n",
            server.uri()
        )
    };
    let rate_day = day(1).format("%Y-%m-%d");
    let reporting = format!(
        "[reporting]\ncurrency = \"USD\"\nscale = 2\nmax_rate_age = \"7d\"\nrates = [{{ currency = \"MYR\", rate = \"0.2241\", as_of = \"{rate_day}\" }}]\n"
    );
    let config = format!("{}{}{reporting}", account("dash-a"), account("dash-b"));
    let settings = tally::config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\nurl = \"{}\"\n\n{config}",
        db.url()
    ))
    .unwrap();
    let app = TestApp::spawn_at(settings, now).await;

    let (status, balances) = app.get_json("/balances").await;
    assert_eq!(status, 200, "{balances}");
    let (from, to) = ((now - TimeDelta::days(29)).format("%Y-%m-%d"), now.format("%Y-%m-%d"));
    let (status, daily) = app.get_json(&format!("/balances/daily?from={from}&to={to}")).await;
    assert_eq!(status, 200, "{daily}");
    // What the chart must say: per date, the closing totals summed exactly.
    let mut sums = std::collections::BTreeMap::<String, rust_decimal::Decimal>::new();
    for row in daily["days"].as_array().unwrap() {
        let total = tally::domain::parse_decimal(row["closing"]["total"].as_str().unwrap()).unwrap();
        *sums.entry(row["date"].as_str().unwrap().to_owned()).or_default() += total;
    }
    assert!(sums.len() >= 3, "{daily}");
    let (first, last) = (sums.iter().next().unwrap(), sums.iter().next_back().unwrap());
    let low = sums.values().min().unwrap();
    let high = sums.values().max().unwrap();
    let label = format!(
        "MYR closing total per day from {from} to {to}: {} days with figures; first {} on {}, last {} on {}, lowest {low}, highest {high}.",
        sums.len(),
        first.1,
        first.0,
        last.1,
        last.0
    );

    let dom = browse(&chromium, &format!("{}/dashboard", app.base), "1280,800", "--dump-dom").await;
    assert!(dom.contains(&format!("aria-label=\"{label}\"")), "{label}\n{dom}");
    let points = regex::Regex::new(r#"<polyline class="line" points="([^"]*)""#).unwrap();
    let drawn = points.captures(&dom).unwrap_or_else(|| panic!("a line:\n{dom}"));
    assert_eq!(drawn[1].split(' ').count(), sums.len(), "a point per day: {}", &drawn[1]);

    let converted = &balances["converted"];
    let shown = regex::Regex::new(r#"<p id="converted">([^<]*)</p>"#).unwrap();
    let shown = shown.captures(&dom).unwrap_or_else(|| panic!("the converted total:\n{dom}"))[1].to_owned();
    let expected = format!(
        "In USD: total {}, available {}. Rates: MYR 0.2241 ({rate_day}).",
        converted["total"].as_str().unwrap(),
        converted["available"].as_str().unwrap()
    );
    assert_eq!(shown, expected, "{converted}");
    assert_eq!(net(&dom, "external"), "0");
    assert_eq!(net(&dom, "failed"), "0");
    app.stop().await;
}
