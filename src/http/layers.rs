//! The middleware around every route: the envelope (request id, the request's span and log
//! line, the body limit, load shedding, panic catching, the deadline backstop, HTTP metrics,
//! problem+json for bare errors), then gzip for callers that accept it (chosen inside the
//! envelope; the body is compressed as it is sent, after the envelope has timed the answer).
//!
//! The envelope is one middleware doing what tower-http's request-id, trace, timeout, body-limit
//! and catch-panic layers and two `from_fn` layers did: each layer cloned, boxed or allocated on
//! every request, and together they cost more than the cached `/balances` answer itself
//! (BENCHMARKS.md).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tracing::Instrument;

use super::error::{ApiError, ErrorCode, PROBLEM_JSON};
use crate::config::ServerSettings;
use crate::service::events::MAX_WAIT;
use crate::sync::RwLockExt;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `routes`: the matched routes whose HTTP metrics are exported from the start (at 0).
pub fn wrap(router: Router, server: &ServerSettings, routes: impl IntoIterator<Item = String>) -> Router {
    let metrics = HttpMetrics::default();
    for route in routes {
        let _ = metrics.register(&route, StatusCode::OK.as_u16());
    }
    let state = Arc::new(Envelope {
        permits: Semaphore::new(server.max_concurrent_requests),
        // The service answers within request_timeout on its own; this is the backstop.
        backstop: server.request_timeout + Duration::from_secs(2),
        metrics,
        ids: RequestIds::new(),
        body_limit: server.body_limit_bytes,
    });
    // Inside the envelope: a shed request does not reach it.
    router.layer(ServiceBuilder::new().layer(EnvelopeLayer(state)).layer(GzipWhenAcceptedLayer))
}

/// gzip for callers that accept it, and nothing in the way of those that do not: tower-http's
/// compression wraps every answer's body, which then has to be boxed again, whether or not it
/// compresses (the benchmark measured that on identity answers). Requests that take gzip go
/// through it, and it decides on content types and sizes.
#[derive(Clone, Copy)]
struct GzipWhenAcceptedLayer;

impl<S: Clone> tower::Layer<S> for GzipWhenAcceptedLayer {
    type Service = GzipWhenAccepted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GzipWhenAccepted { gzip: CompressionLayer::new().gzip(true).layer(inner.clone()), plain: inner }
    }
}

#[derive(Clone)]
struct GzipWhenAccepted<S> {
    plain: S,
    gzip: tower_http::compression::Compression<S>,
}

type Compressed = Response<tower_http::compression::CompressionBody<axum::body::Body>>;

impl<S> tower::Service<Request> for GzipWhenAccepted<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        S::Future,
        futures_util::future::MapOk<
            tower_http::compression::ResponseFuture<S::Future, tower_http::compression::DefaultPredicate>,
            fn(Compressed) -> Response,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        match self.plain.poll_ready(cx) {
            std::task::Poll::Ready(Ok(())) => self.gzip.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        use futures_util::TryFutureExt;
        if accepts_compression(&request) {
            // The decision is made: tower-http reads the header again with a parser of its own
            // and, where the two disagree, would turn a finished answer into a 406.
            request.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
            let boxed: fn(Compressed) -> Response = |response| response.map(axum::body::Body::new);
            futures_util::future::Either::Right(self.gzip.call(request).map_ok(boxed))
        } else {
            futures_util::future::Either::Left(self.plain.call(request))
        }
    }
}

/// Whether `Accept-Encoding` takes gzip (RFC 9110 §12.5.3: `gzip` or `x-gzip` in any case,
/// else `*`, with a `q` above 0). Any other request is answered as it is: a caller that refuses
/// identity as well gets it anyway (which §12.5.3 allows) rather than a 406 made after the
/// work is done.
fn accepts_compression(request: &Request) -> bool {
    let (mut gzip, mut any) = (None, None);
    for value in request.headers().get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok());
            let accepted = q.is_some_and(|q| q > 0.0);
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(gzip.unwrap_or(false) || accepted);
            } else if coding == "*" {
                any = Some(accepted);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// The envelope as a tower layer: a hand-written service rather than `from_fn`, which boxes
/// the service beneath it and its call on every request.
#[derive(Clone)]
struct EnvelopeLayer(Arc<Envelope>);

impl<S> tower::Layer<S> for EnvelopeLayer {
    type Service = EnvelopeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EnvelopeService { inner, envelope: Arc::clone(&self.0) }
    }
}

#[derive(Clone)]
struct EnvelopeService<S> {
    inner: S,
    envelope: Arc<Envelope>,
}

impl<S> tower::Service<Request> for EnvelopeService<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The service that was polled ready is the one called; a clone takes its place.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let envelope = Arc::clone(&self.envelope);
        Box::pin(async move {
            let next = |request| async move {
                let mut ready = ready;
                match tower::Service::call(&mut ready, request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            };
            Ok(envelope.answer(request, next).await)
        })
    }
}

/// What every request passes through once routed.
struct Envelope {
    permits: Semaphore,
    backstop: Duration,
    metrics: HttpMetrics,
    ids: RequestIds,
    body_limit: usize,
}

impl Envelope {
    /// Gives the request an id (the caller's `x-request-id` if [usable](usable_request_id), else
    /// a new one) and returns it on the answer; runs it in a span with one log line when answered; refuses a declared body over
    /// `body_limit_bytes` (no route reads a body, so a body without a length is never buffered);
    /// sheds load instead of queueing without bound (past `max_concurrent_requests` in flight a
    /// request gets 503 with `Retry-After` at once; probes are never shed, so an orchestrator does
    /// not restart a replica for being busy); turns a panic into a 500 problem; bounds the request
    /// by the backstop; records the HTTP metrics; and gives errors produced by axum (405, a bare
    /// 400 from an extractor) the problem+json shape.
    async fn answer<F: Future<Output = Response>>(
        &self,
        request: Request,
        next: impl FnOnce(Request) -> F,
    ) -> Response {
        let started = Instant::now();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let id = match request.headers().get(&REQUEST_ID) {
            Some(given) if usable_request_id(given) => given.clone(),
            _ => self.ids.next(),
        };
        let span = tracing::info_span!("request", method = %request.method(), route,
        request_id = id.to_str().unwrap_or("(not text)"), caller = tracing::field::Empty);
        let response = async {
            if declared_length(&request).is_some_and(|len| len > self.body_limit as u64) {
                return ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large").into_response();
            }
            let _permit = if super::auth::PROBES.contains(&request.uri().path()) {
                None
            } else {
                let Ok(permit) = self.permits.try_acquire() else {
                    metrics::counter!("tally_http_shed_total").increment(1);
                    return ApiError::new(ErrorCode::Overloaded, "too many requests in flight; try again shortly")
                        .retry_after(1)
                        .into_response();
                };
                Some(permit)
            };
            // The feed's long-poll may hold a request open for its `wait` on top.
            let backstop = if route == "/events" { self.backstop + MAX_WAIT } else { self.backstop };
            within(started + backstop, unwinding_to_500(next(request))).await
        }
        .instrument(span.clone())
        .await;
        let mut response = problem_for_bare_errors(response);
        response.headers_mut().insert(REQUEST_ID, id);
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        // One line per request, whatever its status (a failure is logged where handled).
        span.in_scope(|| tracing::info!(status, duration_ms = elapsed.as_millis() as u64, "answered"));
        self.metrics.record(route, status, elapsed);
        response
    }
}

/// The longest caller's `x-request-id` tally adopts.
const MAX_REQUEST_ID: usize = 128;

/// A caller's request id is echoed and logged only if it is 1 to 128 visible ASCII characters
/// (no spaces, no control or non-ASCII bytes): one of 380 KB was once echoed and logged whole.
/// Any other gets a fresh id, as a request without one does.
fn usable_request_id(given: &HeaderValue) -> bool {
    let bytes = given.as_bytes();
    (1..=MAX_REQUEST_ID).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic)
}

fn declared_length(request: &Request) -> Option<u64> {
    request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A panic while answering becomes a 500 problem (its message stays in the log, written by the
/// panic hook), and the process keeps serving.
async fn unwinding_to_500(answer: impl Future<Output = Response>) -> Response {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(answer).catch_unwind().await.unwrap_or_else(|_| {
        tracing::error!("a request handler panicked");
        ApiError::new(ErrorCode::Internal, "internal error").into_response()
    })
}

/// Runs `answer` until `deadline`, then answers 408. The timer is armed only when the answer
/// is not ready at once: a cached answer never touches the runtime's timer wheel.
async fn within(deadline: Instant, answer: impl Future<Output = Response>) -> Response {
    let mut answer = std::pin::pin!(answer);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(answer.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(response) => response,
        std::task::Poll::Pending => tokio::time::timeout_at(deadline.into(), answer)
            .await
            .unwrap_or_else(|_| ApiError::new(ErrorCode::RequestTimeout, "the request took too long").into_response()),
    }
}

/// Request ids unique to this process run: a random prefix and a counter. Cheaper than a v4
/// UUID per request, and as useful for finding one request's log lines.
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        Self { prefix: rand::random(), next: AtomicU64::new(0) }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = bytes::Bytes::from(format!("{:08x}-{n:012x}", self.prefix));
        HeaderValue::from_maybe_shared(id).expect("hex is a valid header value")
    }
}

/// HTTP metrics by matched route and status. The handles are registered once per route and
/// status: looking a metric up by its labels on every request costs more than the rest of a
/// cached answer's bookkeeping.
#[derive(Default)]
struct HttpMetrics(std::sync::RwLock<std::collections::HashMap<Box<str>, RouteMetrics>>);

struct RouteMetrics {
    duration: metrics::Histogram,
    requests: Vec<(u16, metrics::Counter)>,
}

impl HttpMetrics {
    fn record(&self, route: &str, status: u16, elapsed: Duration) {
        {
            let known = self.0.read_locked();
            if let Some(m) = known.get(route)
                && let Some((_, requests)) = m.requests.iter().find(|(s, _)| *s == status)
            {
                requests.increment(1);
                m.duration.record(elapsed.as_secs_f64());
                return;
            }
        }
        let (requests, duration) = self.register(route, status);
        requests.increment(1);
        duration.record(elapsed.as_secs_f64());
    }

    /// The handles of a route and status, registered (at 0) if they were not.
    fn register(&self, route: &str, status: u16) -> (metrics::Counter, metrics::Histogram) {
        let mut known = self.0.write_locked();
        let m = known.entry(route.into()).or_insert_with(|| RouteMetrics {
            duration: metrics::histogram!("tally_http_request_duration_seconds", "route" => route.to_owned()),
            requests: Vec::new(),
        });
        if !m.requests.iter().any(|(s, _)| *s == status) {
            let counter = metrics::counter!("tally_http_requests_total",
                "route" => route.to_owned(), "status" => status.to_string());
            counter.increment(0);
            m.requests.push((status, counter));
        }
        let (_, requests) = m.requests.iter().find(|(s, _)| *s == status).expect("registered just above");
        (requests.clone(), m.duration.clone())
    }
}

fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Overloaded,
        s if s.is_client_error() => ErrorCode::InvalidQuery,
        _ => ErrorCode::Internal,
    };
    let detail = match code {
        ErrorCode::MethodNotAllowed => "this route does not accept that method",
        ErrorCode::RequestTimeout => "the request took too long",
        ErrorCode::PayloadTooLarge => "the request body is too large",
        ErrorCode::RouteNotFound => "no such route",
        ErrorCode::InvalidQuery => "the request is malformed",
        _ => "internal error",
    };
    let mut problem = ApiError::new(code, detail).into_response();
    if let Some(allow) = response.headers().get(header::ALLOW) {
        problem.headers_mut().insert(header::ALLOW, allow.clone());
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_backstop_answers_408_at_its_deadline_and_leaves_ready_answers_alone() {
        let deadline = Instant::now() + Duration::from_secs(12);
        // Paused time moves tokio's clock, not std's.
        let started = tokio::time::Instant::now();
        let ready = within(deadline, async { StatusCode::OK.into_response() }).await;
        assert_eq!(ready.status(), StatusCode::OK);

        let hung = within(deadline, std::future::pending::<Response>()).await;
        assert_eq!(hung.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(hung.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert!(started.elapsed() >= Duration::from_secs(12), "answered at the deadline, not before");
    }

    #[tokio::test]
    async fn gzip_is_negotiated_as_http_says_and_skipped_when_not_asked() {
        let answer = || async { ([(header::CONTENT_TYPE, "application/json")], vec![b'a'; 4096]) };
        let router = wrap(
            Router::new().route("/", axum::routing::get(answer)),
            &crate::config::from_toml("").unwrap().server,
            [],
        );
        let encoding = |accept: Option<&'static str>| {
            let router = router.clone();
            async move {
                let mut request = Request::get("/").body(axum::body::Body::empty()).unwrap();
                if let Some(v) = accept {
                    request.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
                }
                let response = tower::ServiceExt::oneshot(router, request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK, "{accept:?} is answered, never refused");
                response.headers().get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap().to_owned())
            }
        };
        for gzip in [
            "gzip",
            "GZIP",
            "x-gzip",
            "br, gzip;q=0.5",
            "*",
            "deflate, * ;q=0.1",
            "gzip;Q=1, identity;q=0",
            "gzip;q=1.5, identity;q=0",
            "gzip;level=1, identity;q=0",
            "*;q=2, identity;q=0",
        ] {
            assert_eq!(encoding(Some(gzip)).await.as_deref(), Some("gzip"), "{gzip}");
        }
        for plain in [
            None,
            Some("identity"),
            Some("br, deflate"),
            Some("gzip;q=0"),
            Some("x-gzip-like"),
            Some("identity;q=0"),
            Some("br, identity;q=0"),
            Some("*;q=0"),
            Some("gzip;q=0, *"),
            Some("gzip;q=nonsense"),
        ] {
            assert_eq!(encoding(plain).await, None, "{plain:?}");
        }
    }

    #[tokio::test]
    async fn a_panic_while_answering_is_a_500_problem() {
        let answer = unwinding_to_500(async { panic!("a bug") }).await;
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
