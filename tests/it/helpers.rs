//! Test support: databases, the app on port 0, and upstream fakes.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Connection;
use tally::app::Application;
use tally::clock::ManualClock;
use tokio::sync::oneshot;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The environment variable naming an admin URL of a PostgreSQL server for tests; each test
/// creates (and drops) its own database there.
pub const PG_ENV: &str = "TALLY_TEST_DATABASE_URL";

/// A fresh database for one test.
pub enum TestDb {
    Sqlite { _dir: tempfile::TempDir, url: String },
    Postgres { admin_url: String, name: String, url: String },
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("tally.db").display());
        Self::Sqlite { _dir: dir, url }
    }

    /// A new database on the test server, or `None` (with a visible message) when no server
    /// is configured. Under `CI=true` a missing or unreachable server fails the test.
    pub async fn postgres() -> Option<Self> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let Ok(admin_url) = std::env::var(PG_ENV) else {
            assert!(!ci, "{PG_ENV} must be set when CI=true");
            eprintln!("SKIPPED: PostgreSQL test ({PG_ENV} is not set)");
            return None;
        };
        let name = format!("tally_test_{:016x}", rand::random::<u64>());
        let mut conn = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) if !ci => {
                eprintln!("SKIPPED: PostgreSQL test (cannot connect to {PG_ENV}: {e})");
                return None;
            }
            Err(e) => panic!("cannot connect to the test PostgreSQL ({PG_ENV}): {e}"),
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create db");
        let url = replace_database(&admin_url, &name);
        Some(Self::Postgres { admin_url, name, url })
    }

    /// `sqlite` or `postgres`: keeps names that are process-wide (metric labels) apart when
    /// one test runs on both stores at once.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Self::Sqlite { url, .. } | Self::Postgres { url, .. } => url,
        }
    }

    pub fn store(&self) -> Arc<dyn tally::store::Store> {
        let settings = tally::config::from_toml(&format!("[store]\nurl = \"{}\"\nmax_connections = 5\n", self.url()))
            .expect("test store settings");
        tally::store::open(&settings.store).expect("open the test store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Self::Postgres { admin_url, name, .. } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs outside any runtime guarantee; a short-lived thread with its own runtime
            // removes the database so test runs do not pile them up.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
                    }
                });
            })
            .join();
        }
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("a PostgreSQL URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// Runs one async test body against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let db = $crate::helpers::TestDb::sqlite();
                    super::$name(&db).await;
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(db) = $crate::helpers::TestDb::postgres().await {
                        super::$name(&db).await;
                    }
                }
            }
        )*
    };
}

/// A running app on 127.0.0.1:0 with an injected clock.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    /// The app's service, for what only it can tell (leases, background checks).
    pub service: Arc<tally::service::Service>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T08:00:00Z").unwrap().with_timezone(&Utc)
}

impl TestApp {
    /// Starts tally with `extra` TOML (accounts, defaults…) on the given store URL.
    pub async fn spawn(store_url: &str, extra: &str) -> Self {
        Self::spawn_with(store_url, "", extra).await
    }

    /// Like [`spawn`](Self::spawn), with more `[server]` settings.
    pub async fn spawn_with(store_url: &str, server: &str, extra: &str) -> Self {
        let toml = format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n[store]\nurl = \"{store_url}\"\n\n{extra}");
        let settings = tally::config::from_toml(&toml).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
        Self::spawn_settings(settings).await
    }

    pub async fn spawn_settings(settings: tally::config::Settings) -> Self {
        Self::spawn_at(settings, t0()).await
    }

    /// Like [`spawn_settings`](Self::spawn_settings), with the injected clock starting at `start`.
    pub async fn spawn_at(settings: tally::config::Settings, start: DateTime<Utc>) -> Self {
        let clock = Arc::new(ManualClock::new(start));
        let app = Application::build_with_clock(settings, clock.clone()).await.expect("the app starts");
        let base = format!("http://{}", app.local_addr());
        let service = Arc::clone(app.service());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self { base, http: reqwest::Client::new(), clock, service, stop: Some(stop), task: Some(task) }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{}", self.base, path)).send().await.expect("the app answers")
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        let body = r.bytes().await.expect("a body");
        (
            status,
            serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body))),
        )
    }

    /// The value of one counter series on `/metrics` (0 when it was never incremented).
    /// Metrics are process-wide: give the accounts of a test names no other test uses.
    pub async fn counter(&self, series: &str) -> u64 {
        let text = self.get("/metrics").await.text().await.expect("a metrics body");
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .map_or(0, |v| v as u64)
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Stops the app and waits for it to finish (graceful shutdown path).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the server task").expect("the server stops cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An upstream answer held back until the test opens the gate, so a test can line up
/// concurrent callers behind one call in flight without guessing how long that takes.
/// wiremock runs each mock server on its own thread, which is the one waiting here.
#[derive(Clone, Default)]
pub struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }

    /// A responder that waits for the gate (at most a minute, so a broken test ends).
    pub fn hold(&self, response: wiremock::ResponseTemplate) -> Gated {
        Gated { gate: self.clone(), response }
    }
}

pub struct Gated {
    gate: Gate,
    response: wiremock::ResponseTemplate,
}

impl wiremock::Respond for Gated {
    fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
        let (open, changed) = &*self.gate.0;
        let guard = open.lock().unwrap();
        let _ = changed.wait_timeout_while(guard, Duration::from_secs(60), |open| !*open).unwrap();
        self.response.clone()
    }
}

/// Waits (bounded) until `check` holds, polling: for effects visible only from outside.
pub async fn eventually<F, Fut>(what: &str, bound: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = tokio::time::timeout(bound, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("not within {bound:?}: {what}"));
}

/// Upstream answers given in order (the last one repeated), recording when each call came.
#[derive(Clone)]
pub struct Script {
    answers: Arc<Vec<wiremock::ResponseTemplate>>,
    calls: Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

impl Script {
    pub fn new(answers: Vec<wiremock::ResponseTemplate>) -> Self {
        assert!(!answers.is_empty());
        Self { answers: Arc::new(answers), calls: Default::default() }
    }

    /// When each call arrived.
    pub fn calls(&self) -> Vec<std::time::Instant> {
        self.calls.lock().unwrap().clone()
    }
}

impl wiremock::Respond for Script {
    fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
        let mut calls = self.calls.lock().unwrap();
        calls.push(std::time::Instant::now());
        self.answers[(calls.len() - 1).min(self.answers.len() - 1)].clone()
    }
}

/// Waits (bounded) until `n` more background checks of the account have finished, so that at
/// least one check started after whatever the test just changed.
pub async fn more_checks(checks: &mut tokio::sync::watch::Receiver<u64>, n: u64) {
    let target = *checks.borrow_and_update() + n;
    tokio::time::timeout(Duration::from_secs(10), checks.wait_for(|done| *done >= target))
        .await
        .expect("background checks keep running")
        .expect("the app is running");
}

/// A TCP proxy in front of the test PostgreSQL that can be made to stall: from then on it
/// accepts connections and reads queries but forwards nothing, like a database that hangs
/// (not one that refuses connections, which fails fast).
pub struct StallingProxy {
    url: String,
    stalled: tokio::sync::watch::Sender<bool>,
}

impl StallingProxy {
    pub async fn start(db: &TestDb) -> Self {
        let mut url = url::Url::parse(db.url()).expect("a PostgreSQL URL");
        let target = format!("{}:{}", url.host_str().expect("a host"), url.port().unwrap_or(5432));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port for the proxy");
        url.set_host(Some("127.0.0.1")).expect("an IP host");
        url.set_port(Some(listener.local_addr().expect("an address").port())).expect("a port");
        let (stalled, _) = tokio::sync::watch::channel(false);
        let watching = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, watching.subscribe()));
                tokio::spawn(forward(server_read, client_write, watching.subscribe()));
            }
        });
        Self { url: url.to_string(), stalled }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// From now on nothing goes through, in either direction, on any connection.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets everything held go through, and what comes after.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Stalled: hold what was read, and the connection with it, for ever.
        if stalled.wait_for(|stalled| !*stalled).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The documented LeanX balance path.
pub const BALANCE_PATH: &str = "/api/v1/merchant/overall-balance";

/// A LeanX pool-balance answer, amounts written as exact JSON numbers.
pub fn leanx_body(prefund: &str, transaction: &str) -> String {
    format!(
        r#"{{"response_code":2000,"description":"SUCCESS","app_version":"/api/v1","talk_to_server_before":"2024-08-09T13:18:02.305450",
        "data":{{"transaction_balance":{{"value":{transaction},"pool_name":"TRANSACTION","api_key":"k","record_status":1,
        "updated_at":"2024-04-25T13:30:00","account_id":57,"id":337,"pool_type":1,"created_at":"2024-01-03T11:58:03"}},
        "prefund_balance":{prefund},"total_transaction_as_of_today":0}},"breakdown_errors":null,"token":""}}"#
    )
}

/// A LeanX balance answer: 200 with [`leanx_body`].
pub fn ok(prefund: &str, transaction: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(leanx_body(prefund, transaction), "application/json")
}

/// A fake LeanX answering `response` to a balance call with the token `tok`.
pub async fn leanx(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .and(header("auth-token", "tok"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}
