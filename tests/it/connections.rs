//! Connections over real TCP: a caller that sends half a request head, or keeps an idle
//! connection open, is closed after its (configured, tiny) timeout, and does not hold shutdown.
//! Nothing here measures time: each test waits for the server to close the socket, with an
//! outer bound that fails only a server that never does.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, TestDb};

/// Fails only if the server never closes: far beyond every timeout these tests configure.
const NEVER: Duration = Duration::from_secs(10);

const HALF_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: tally\r\n";

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (EOF or a reset), returning what it sent.
async fn until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(NEVER, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.unwrap_or_else(|_| panic!("the server never closed {what}"));
    got
}

#[tokio::test]
async fn a_half_sent_request_head_is_closed_after_the_header_read_timeout() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn_with(db.url(), "header_read_timeout = \"200ms\"\nidle_timeout = \"1h\"", "").await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream.write_all(HALF_HEAD).await.unwrap();
    until_closed(&mut stream, "a connection that sent half a request head").await;
    assert_eq!(app.get("/healthz").await.status(), 200, "other callers are served");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn_with(db.url(), "header_read_timeout = \"1h\"\nidle_timeout = \"200ms\"", "").await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n").await.unwrap();
    let answered = until_closed(&mut stream, "an idle kept-alive connection").await;
    let answered = String::from_utf8_lossy(&answered);
    assert!(answered.starts_with("HTTP/1.1 200"), "the request was answered first: {answered}");
    assert!(!answered.to_ascii_lowercase().contains("connection: close"), "kept alive, then closed as idle");

    // A connection that never sends a byte is idle too.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(until_closed(&mut silent, "a silent connection").await.is_empty());
}

#[tokio::test]
async fn a_half_sent_request_head_does_not_hold_shutdown() {
    let db = TestDb::sqlite();
    let server = "header_read_timeout = \"1h\"\nidle_timeout = \"1h\"\nshutdown_timeout = \"1h\"";
    let toml = format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[store]\nurl = \"{}\"\n", db.url());
    let app = tally::app::Application::build(tally::config::from_toml(&toml).unwrap()).await.unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(HALF_HEAD).await.unwrap();
    // Connections are accepted in order: once a later one is answered, this one is being served.
    let mut later = TcpStream::connect(addr).await.unwrap();
    later.write_all(b"GET /healthz HTTP/1.1\r\nHost: tally\r\nConnection: close\r\n\r\n").await.unwrap();
    let answered = until_closed(&mut later, "a connection asking to close").await;
    assert!(String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"));

    stop.send(()).unwrap();
    let stopped = tokio::time::timeout(NEVER, running).await;
    stopped.expect("shutdown is not held by the half-sent head").unwrap().unwrap();
    until_closed(&mut half, "the half-sent head's connection at shutdown").await;
}

#[tokio::test]
async fn http2_is_still_served() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), "").await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

/// A response still being written when shutdown comes is written to its end: its request
/// counts as in flight until its body is sent, not only until the handler returns.
#[tokio::test]
async fn shutdown_finishes_writing_a_response_to_a_slow_reader() {
    let db = TestDb::sqlite();
    // Eight accounts whose raw payloads (2 MB less a little each) make a 15 MB answer: more
    // than the kernel buffers on both ends hold, so the server is still writing at shutdown.
    let body = crate::helpers::leanx_body("1.00", "2.00");
    let padded = body.replacen('{', &format!(r#"{{"padding":"{}","#, "x".repeat(1_900_000)), 1);
    let upstream =
        crate::helpers::leanx(wiremock::ResponseTemplate::new(200).set_body_raw(padded, "application/json")).await;
    let accounts: String = (0..8)
        .map(|i| {
            format!(
                "[[accounts]]\nid = \"a{i}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\n",
                upstream.uri()
            )
        })
        .collect();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"1h\"\n[store]\nurl = \"{}\"\n{accounts}",
        db.url()
    );
    let app = tally::app::Application::build(tally::config::from_toml(&toml).unwrap()).await.unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    // A slow reader: a small receive window, and nothing read until the answer has begun.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(b"GET /balances?include=raw HTTP/1.1\r\nHost: tally\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut first = [0u8; 1024];
    let n = tokio::time::timeout(NEVER, slow.read(&mut first)).await.expect("the answer begins").unwrap();
    let head = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    stop.send(()).unwrap();
    let mut answer = first[..n].to_vec();
    answer.extend(until_closed(&mut slow, "the answer being written at shutdown").await);
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .expect("a content length");
    assert!(length > 15_000_000, "a large answer: {length} bytes");
    assert_eq!(body.len(), length, "the whole answer was written before the connection closed");
    tokio::time::timeout(NEVER, running).await.expect("tally stops once the answer is written").unwrap().unwrap();
}
