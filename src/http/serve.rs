//! Serving connections: what `axum::serve` does (HTTP/1 and HTTP/2 on one port, graceful
//! shutdown), with the bounds it does not expose. hyper reads each HTTP/1 request head within
//! `server.header_read_timeout` (its own timer, which axum::serve leaves unset); a connection
//! with no request in flight and no bytes moving for `server.idle_timeout` is closed here
//! (hyper has no idle timeout: this covers HTTP/2, and a connection that never gets past
//! hyper's protocol detection). At shutdown, a connection receiving a request head is closed
//! at once (a half-sent head does not hold the exit); the others are shut down gracefully by
//! hyper: idle ones close at once, the rest finish their requests and the answers still being
//! written, then close.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ServerSettings;

/// Serves `router` on `listener` until `signal` resolves, then stops accepting and returns once
/// every connection has closed (the caller bounds that wait by `server.shutdown_timeout`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    server: &ServerSettings,
    signal: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(server.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let idle = server.idle_timeout;
    let (stopping, stop) = watch::channel(false);
    // Every connection task holds a receiver; the sender sees them all gone.
    let (connections, alive) = watch::channel(());
    let mut signal = pin!(signal);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    refused(e).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let connection = Connection { router: router.clone(), builder: builder.clone(), idle };
        tokio::spawn(connection.run(stream, stop.clone(), alive.clone()));
    }
    drop(listener);
    stopping.send_replace(true);
    drop(alive);
    connections.closed().await;
    Ok(())
}

/// An accept error. Errors of one connection (reset before it was accepted) are skipped; others
/// (out of file descriptors) are logged and accepting pauses a second, as axum::serve does,
/// rather than spinning on an error that persists.
async fn refused(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; trying again in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

struct Connection {
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    idle: Duration,
}

impl Connection {
    async fn run(self, stream: TcpStream, mut stop: watch::Receiver<bool>, _alive: watch::Receiver<()>) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched { inner: stream, activity: Arc::clone(&activity) });
        let service = TowerToHyperService::new(Counted { inner: self.router, activity: Arc::clone(&activity) });
        let mut conn = pin!(self.builder.serve_connection_with_upgrades(io, service));
        let mut stopping = false;
        loop {
            let check = tokio::time::sleep_until(activity.idle_deadline(self.idle));
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                changed = stop.wait_for(|stop| *stop), if !stopping => {
                    // A request head arriving (perhaps half sent, perhaps never finished) is
                    // owed nothing: close now. Otherwise hyper finishes what it owes (a
                    // request in flight, or an answer still being written after its handler
                    // returned) and closes, at once when the connection is idle.
                    if changed.is_err() || (activity.in_flight() == 0 && activity.reading.load(Ordering::Relaxed)) {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    stopping = true;
                }
                () = check => {
                    if activity.idle_for(self.idle) {
                        tracing::debug!("closing an idle connection");
                        return;
                    }
                }
            }
        }
    }
}

/// What one connection is doing: its requests in flight, and when bytes last moved or a
/// request last finished.
struct Activity {
    born: Instant,
    /// Milliseconds after `born`.
    last: AtomicU64,
    in_flight: AtomicUsize,
    /// Bytes arrived since the last request was answered: the head of the next one, perhaps
    /// only half sent. Nothing is owed to it at shutdown.
    reading: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            reading: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the connection will have been idle for `idle`, if nothing happens meanwhile.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.in_flight() > 0 {
            return Instant::now() + idle;
        }
        self.born + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle
    }

    fn idle_for(&self, idle: Duration) -> bool {
        self.in_flight() == 0 && self.idle_deadline(idle) <= Instant::now()
    }
}

/// The connection's socket, noting when bytes move.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn moved<T>(&self, poll: Poll<std::io::Result<T>>, bytes: bool) -> Poll<std::io::Result<T>> {
        if bytes && matches!(poll, Poll::Ready(Ok(_))) {
            self.activity.touch();
        }
        poll
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() > before;
        if read {
            self.activity.reading.store(true, Ordering::Relaxed);
        }
        self.moved(poll, read)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        let wrote = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.moved(poll, wrote)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let wrote = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.moved(poll, wrote)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router, counting the connection's requests in flight (a long answer is not idleness).
#[derive(Clone)]
struct Counted {
    inner: Router,
    activity: Arc<Activity>,
}

impl tower::Service<hyper::Request<hyper::body::Incoming>> for Counted {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = InFlight<<Router as tower::Service<axum::extract::Request>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<axum::extract::Request>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        self.activity.reading.store(false, Ordering::Relaxed);
        let answer = tower::Service::call(&mut self.inner, request.map(axum::body::Body::new));
        InFlight { answer, activity: Arc::clone(&self.activity) }
    }
}

/// One request's answer; the request stops counting when it is answered or dropped.
struct InFlight<F> {
    answer: F,
    activity: Arc<Activity>,
}

impl<F: Future + Unpin> Future for InFlight<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.answer).poll(cx)
    }
}

impl<F> Drop for InFlight<F> {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.reading.store(false, Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
