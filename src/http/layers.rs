//! The middleware stack around every route, outermost first: request id, tracing, panic
//! catching, HTTP metrics, problem+json for bare errors, load shedding, the request deadline
//! backstop, the body limit and gzip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use super::error::{ApiError, ErrorCode, PROBLEM_JSON};
use crate::config::ServerSettings;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn wrap(router: Router, server: &ServerSettings) -> Router {
    // The service answers within request_timeout on its own; this is the backstop.
    let backstop = server.request_timeout + Duration::from_secs(2);
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, SequentialIds::new()))
            .layer(
                // One line per request, whatever its status (a failure is logged where handled).
                TraceLayer::new_for_http().make_span_with(span).on_request(()).on_response(on_response).on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(CatchPanicLayer::custom(|_| ApiError::new(ErrorCode::Internal, "internal error").into_response()))
            .layer(middleware::from_fn(metrics_and_problems))
            .layer(middleware::from_fn_with_state(Arc::new(Semaphore::new(server.max_concurrent_requests)), shed_load))
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, backstop))
            .layer(RequestBodyLimitLayer::new(server.body_limit_bytes))
            .layer(CompressionLayer::new().gzip(true)),
    )
}

fn span(request: &Request<Body>) -> tracing::Span {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let request_id = request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok());
    tracing::info_span!("request", method = %request.method(), route = route.as_deref().unwrap_or("unmatched"),
        request_id, caller = tracing::field::Empty)
}

fn on_response<B>(response: &axum::http::Response<B>, latency: Duration, _span: &tracing::Span) {
    tracing::info!(status = response.status().as_u16(), duration_ms = latency.as_millis() as u64, "answered");
}

/// Sheds load instead of queueing without bound: past `max_concurrent_requests` in flight, a
/// request gets 503 with `Retry-After` at once. Probes are never shed, so an orchestrator does
/// not restart a replica for being busy.
async fn shed_load(State(permits): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    if super::auth::PROBES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match permits.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            metrics::counter!("tally_http_shed_total").increment(1);
            ApiError::new(ErrorCode::Overloaded, "too many requests in flight; try again shortly")
                .retry_after(1)
                .into_response()
        }
    }
}

/// Request ids unique to this process run: a random prefix and a counter. Cheaper than a v4
/// UUID per request, and as useful for finding one request's log lines.
#[derive(Clone)]
struct SequentialIds {
    prefix: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl SequentialIds {
    fn new() -> Self {
        Self { prefix: format!("{:08x}", rand::random::<u32>()).into(), next: Arc::default() }
    }
}

impl MakeRequestId for SequentialIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n:012x}", self.prefix);
        Some(RequestId::new(axum::http::HeaderValue::from_str(&id).expect("hex is a valid header value")))
    }
}

/// HTTP metrics by matched route and status, and the problem+json shape for errors produced
/// by axum or tower (405, 408, 413, a bare 400 from an extractor). One middleware for both
/// keeps the per-request cost of the stack down.
async fn metrics_and_problems(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let started = Instant::now();
    let response = problem_for_bare_errors(next.run(request).await);
    let route = metrics::SharedString::from(route.unwrap_or_else(|| "unmatched".to_owned()));
    let status = metrics::SharedString::from(response.status().as_u16().to_string());
    metrics::counter!("tally_http_requests_total", "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("tally_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
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
