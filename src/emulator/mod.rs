//! Emulators of the four providers, speaking their documented protocols (PROVIDERS.md),
//! auth checks included, with realistic demo data and fault injection. They back
//! `tally demo`, `tally emulate`, tally's own tests and its benchmark.
//!
//! One server serves all four under path prefixes, so each provider's base URL is
//! `http://ADDR/leanx`, `/luxtak`, `/ibanera` or `/yedpay`, followed by the documented paths.
//! Control routes: `PUT /_control/faults/{provider}` (JSON [`Faults`]), `GET /_control/calls`,
//! `POST /_control/ibanera/expire-tokens`, and `PUT`/`DELETE /_control/leanx/prefund` (a LeanX
//! prefund pool held at a figure, `{"value": "120.00", "account": "main"}`, or back to the demo's
//! drift), so a monitor can be seen to fire and clear. `POST /_control/leanx/callback` and
//! `POST /_control/luxtak/callback` (`{"url": "…", "payout": "<id>", "status": "…"}`) send a
//! demo payout's callback to `url`, signed as the provider signs it, and answer what the
//! receiver said.

pub mod data;
mod faults;
mod ibanera;
mod leanx;
mod luxtak;
#[cfg(test)]
mod tests;
mod yedpay;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::domain::Provider;
use crate::sync::MutexExt;

pub use data::credentials;
pub use faults::Faults;

#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    pub faults: HashMap<Provider, Faults>,
    /// How long an Ibanera access token lives.
    pub ibanera_token_lifetime: Duration,
    /// How far a Luxtak request timestamp may be from now.
    pub luxtak_timestamp_window: Duration,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            faults: HashMap::new(),
            ibanera_token_lifetime: Duration::from_secs(3600),
            luxtak_timestamp_window: Duration::from_secs(300),
        }
    }
}

/// State shared by the emulator's handlers.
pub struct Shared {
    options: EmulatorOptions,
    started: std::time::Instant,
    faults: Mutex<HashMap<Provider, Faults>>,
    calls: HashMap<Provider, AtomicU64>,
    ibanera: Mutex<IbaneraAuth>,
    /// LeanX prefund pools held at a figure, by token (the rest drift as the demo data says).
    leanx_prefund: Mutex<HashMap<&'static str, rust_decimal::Decimal>>,
    /// Demo payouts moved to another status (`PUT /_control/{leanx,luxtak}/payouts/{id}`), by
    /// the provider's id.
    settled: Mutex<HashMap<&'static str, String>>,
    /// Where LeanX sends each merchant's (token's) payout callbacks, once told.
    leanx_callback_urls: Mutex<HashMap<&'static str, url::Url>>,
    /// Where Luxtak sends the demo merchant's payout notifications (its `notify_url`), once told.
    luxtak_notify_url: Mutex<Option<url::Url>>,
    /// Sends the callbacks the control routes ask for.
    callback_http: reqwest::Client,
}

#[derive(Default)]
struct IbaneraAuth {
    tokens: HashMap<String, Instant>,
    failures: u32,
    locked_until: Option<Instant>,
}

impl Shared {
    /// Minutes since start: the clock of the demo balances' drift.
    fn minute(&self) -> u64 {
        self.started.elapsed().as_secs() / 60
    }

    /// Now as a naive local time at `hours` east of UTC, as LeanX and Yedpay write times.
    fn local_now(&self, hours: i64) -> String {
        (chrono::Utc::now() + chrono::TimeDelta::hours(hours)).format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    }
}

/// A running emulator.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Emulator {
    /// Serves the emulators on `listener` until [`shutdown`](Self::shutdown).
    pub async fn start(listener: TcpListener, options: EmulatorOptions) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(options.faults.clone()),
            calls: EMULATORS.iter().map(|e| (e.provider, AtomicU64::new(0))).collect(),
            ibanera: Mutex::new(IbaneraAuth::default()),
            leanx_prefund: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            leanx_callback_urls: Mutex::new(HashMap::new()),
            luxtak_notify_url: Mutex::new(None),
            callback_http: callback_client(),
            started: std::time::Instant::now(),
            options,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self { addr, shared, stop: Some(stop), task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self, provider: Provider) -> url::Url {
        url::Url::parse(&format!("http://{}/{}", self.addr, provider.as_str())).expect("an address makes a valid URL")
    }

    /// Makes the LeanX and Luxtak emulators send the demo accounts' payout callbacks, as the
    /// providers do to a merchant's callback URL, to tally at `tally` (`http://ADDR`):
    /// `{tally}/callbacks/leanx-main`, `/callbacks/leanx-ops` and `/callbacks/luxtak-latam`.
    pub fn send_callbacks_to(&self, tally: &str) {
        *self.shared.leanx_callback_urls.locked() = leanx::callback_urls(tally);
        *self.shared.luxtak_notify_url.locked() = url::Url::parse(&format!("{tally}/callbacks/luxtak-latam")).ok();
    }

    pub fn set_faults(&self, provider: Provider, faults: Faults) {
        self.shared.faults.locked().insert(provider, faults);
    }

    /// Reads the minutes since start (the demo balances are [`data`]'s figures at that minute)
    /// without borrowing the emulator (`tally demo` moves it into its server task), so a test
    /// can tell which minute's figures it was served.
    pub fn minute_reader(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.minute()
    }

    /// API calls received by one provider's emulator (control routes excluded).
    pub fn calls(&self, provider: Provider) -> u64 {
        self.shared.calls[&provider].load(Ordering::Relaxed)
    }

    pub fn expire_ibanera_tokens(&self) {
        self.shared.ibanera.locked().tokens.clear();
    }

    /// `[[accounts]]` entries for the demo set, pointed at this emulator: two LeanX, one
    /// Luxtak, one Ibanera, one Yedpay with two currencies.
    pub fn demo_accounts_toml(&self) -> String {
        EMULATORS.iter().map(|e| (e.demo_accounts)(&self.base_url(e.provider))).collect::<Vec<_>>().join("\n")
    }

    /// One line per emulated provider: its name, base URL and how to call it by hand.
    pub fn directory(&self) -> String {
        EMULATORS
            .iter()
            .map(|e| format!("{:<8} {}  {}\n", e.provider, self.base_url(e.provider), (e.how_to_call)()))
            .collect()
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A hanging fault holds its connection open; do not wait on it forever.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One provider's emulator: what the shared server, the demo and `tally emulate` need of it.
struct Emulated {
    provider: Provider,
    /// The provider's documented paths, served under `/{provider}`.
    routes: fn() -> Router<Arc<Shared>>,
    /// A rate-limit refusal in the provider's own shape, as a client would meet it.
    too_many_requests: fn() -> Response,
    /// The demo set's `[[accounts]]` entries of this provider, pointed at its base URL.
    demo_accounts: fn(&url::Url) -> String,
    /// The demo credentials, for a person calling the emulator by hand.
    how_to_call: fn() -> String,
}

/// The emulated providers, in the demo's order: a new provider's emulator is its file
/// (`emulator/<name>.rs`, beside the shared fault injection and demo data) and one line here.
const EMULATORS: [Emulated; 4] = [leanx::EMULATED, luxtak::EMULATED, ibanera::EMULATED, yedpay::EMULATED];

fn emulated(provider: Provider) -> &'static Emulated {
    EMULATORS.iter().find(|e| e.provider == provider).expect("every provider has an emulator (tested)")
}

fn router(shared: Arc<Shared>) -> Router {
    let routes = EMULATORS.iter().fold(Router::new(), |router, e| {
        let faults = middleware::from_fn_with_state((Arc::clone(&shared), e.provider), inject_faults);
        router.nest(&format!("/{}", e.provider), (e.routes)().layer(faults))
    });
    routes
        .route("/_control/faults/{provider}", put(put_faults))
        .route("/_control/calls", get(get_calls))
        .route("/_control/ibanera/expire-tokens", post(expire_tokens))
        .route("/_control/leanx/prefund", put(leanx::put_prefund).delete(leanx::reset_prefund))
        .route("/_control/leanx/callback", post(leanx::send_callback))
        .route("/_control/leanx/payouts/{id}", put(leanx::settle))
        .route("/_control/luxtak/payouts/{id}", put(luxtak::settle))
        .route("/_control/luxtak/callback", post(luxtak::send_callback))
        .with_state(shared)
}

/// A JSON response with exactly this body text (amounts written as exact literals).
fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn inject_faults(
    State((shared, provider)): State<(Arc<Shared>, Provider)>,
    request: Request,
    next: Next,
) -> Response {
    shared.calls[&provider].fetch_add(1, Ordering::Relaxed);
    let faults = {
        let mut all = shared.faults.locked();
        let f = all.entry(provider).or_default();
        let snapshot = f.clone();
        f.fail_next = f.fail_next.saturating_sub(1);
        snapshot
    };
    let jitter = faults.jitter.mul_f64(rand::random::<f64>());
    if !(faults.latency + jitter).is_zero() {
        tokio::time::sleep(faults.latency + jitter).await;
    }
    if faults.hang {
        std::future::pending::<()>().await;
    }
    if faults.fail_next > 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "<html><body>503 Service Unavailable</body></html>").into_response();
    }
    if let Some(secs) = faults.rate_limit {
        let mut r = (emulated(provider).too_many_requests)();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        return (StatusCode::INTERNAL_SERVER_ERROR, "<html><body>500 Internal Server Error</body></html>")
            .into_response();
    }
    let response = next.run(request).await;
    if faults.malformed {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
        let cut = bytes.slice(..bytes.len() / 2);
        return Response::from_parts(parts, axum::body::Body::from(cut));
    }
    response
}

async fn put_faults(
    State(shared): State<Arc<Shared>>,
    Path(provider): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(provider) = provider.parse::<Provider>() else {
        return (StatusCode::NOT_FOUND, "unknown provider").into_response();
    };
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            shared.faults.locked().insert(provider, faults);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn get_calls(State(shared): State<Arc<Shared>>) -> Response {
    let calls: serde_json::Map<String, serde_json::Value> = EMULATORS
        .iter()
        .map(|e| (e.provider.to_string(), shared.calls[&e.provider].load(Ordering::Relaxed).into()))
        .collect();
    json(StatusCode::OK, serde_json::Value::Object(calls).to_string())
}

async fn expire_tokens(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.ibanera.locked().tokens.clear();
    StatusCode::NO_CONTENT
}

/// How long a receiver may take to answer an emulated callback.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

fn callback_client() -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(CALLBACK_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client with a timeout and no redirects builds")
}

/// `{"url": "…", "payout": "<id or reference>", "status": "…"}`: the body of the callback
/// control routes; `status` defaults to the demo payout's own.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SendCallbackBody {
    url: String,
    payout: String,
    #[serde(default)]
    status: Option<String>,
}

struct SendCallback {
    url: url::Url,
    payout: String,
    status: Option<String>,
}

impl SendCallback {
    fn read(body: &[u8]) -> Result<Self, Box<Response>> {
        let bad = |problem: String| {
            let example = r#"{"url": "http://127.0.0.1:8080/callbacks/ACCOUNT", "payout": "ID", "status": "STATUS"}"#;
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("expected {example}: {problem}") }).to_string(),
            )
        };
        let asked: SendCallbackBody = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        let url = url::Url::parse(&asked.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| bad("`url` is not an http(s) URL".to_owned()))?;
        Ok(Self { url, payout: asked.payout, status: asked.status })
    }
}

fn unknown_payout(id: &str) -> Response {
    json(StatusCode::NOT_FOUND, serde_json::json!({ "error": format!("no demo payout `{id}`") }).to_string())
}

/// The status of `PUT /_control/{provider}/payouts/{id}` (`{"status": "…"}`): a provider's
/// status word (upper case and `_`), or the `400` to answer.
fn settled_status(body: &[u8], examples: &str) -> Result<String, Box<Response>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settle {
        status: String,
    }
    let refuse =
        |message: String| Box::new(json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": message }).to_string()));
    let asked: Settle =
        serde_json::from_slice(body).map_err(|e| refuse(format!(r#"expected {{"status": "…"}}: {e}"#)))?;
    let status = asked.status;
    if status.is_empty() || status.len() > 64 || !status.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(refuse(format!("status must be a provider status such as {examples}")));
    }
    Ok(status)
}

/// What [`deliver`] answered, as the JSON value a settle answer embeds.
async fn delivered(answer: Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(answer.into_body(), 64 * 1024).await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

/// POSTs a callback and reports the receiver's answer (`{"status": 200, "body": "success"}`),
/// or `502` when it could not be delivered.
async fn deliver(shared: &Shared, url: url::Url, body: String, authorization: Option<String>) -> Response {
    let mut request = shared.callback_http.post(url).header(header::CONTENT_TYPE, "application/json").body(body);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let answer = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            response.text().await.map(|text| (status, text))
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok((status, text)) => {
            let text: String = text.chars().take(2048).collect();
            json(StatusCode::OK, serde_json::json!({ "status": status, "body": text }).to_string())
        }
        Err(e) => json(
            StatusCode::BAD_GATEWAY,
            serde_json::json!({ "error": format!("the callback was not delivered: {e}") }).to_string(),
        ),
    }
}
