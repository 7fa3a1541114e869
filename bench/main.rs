//! tally's benchmark: each row measured against its physical limit in the same run, written
//! to BENCHMARKS.md. Run with `bench/run.sh` (release build). Upstreams are tally's own
//! provider emulators with controlled latency; tally runs as a separate release process
//! (except the throughput row, which compares it with a bare axum route in one process).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally::domain::Provider;
use tally::emulator::{Emulator, EmulatorOptions, Faults, credentials};
use tokio::net::TcpListener;

/// Everything after this line of BENCHMARKS.md is kept when the benchmark rewrites the table.
const NOTES_MARKER: &str = "<!-- Notes: kept as they are when bench/run.sh rewrites the table above. -->";

struct Row {
    name: &'static str,
    figure: String,
    limit: String,
    ratio: f64,
    target: &'static str,
    met: bool,
}

/// The allocator the `tally` binary runs with (src/main.rs), so tally hosted in this process is
/// measured as it runs in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    tally::install_crypto_provider();
    let tally_bin = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/release/tally".into()));
    let out = PathBuf::from(std::env::args().nth(2).unwrap_or_else(|| "BENCHMARKS.md".into()));
    let pg = std::env::var("TALLY_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let bench = Bench { tally_bin, pg, dir: std::env::temp_dir().join(format!("tally-bench-{}", std::process::id())) };
    std::fs::create_dir_all(&bench.dir).unwrap();
    let started = Instant::now();
    // `TALLY_BENCH_ONLY=throughput,scale` runs some rows (while profiling); default all.
    let only = std::env::var("TALLY_BENCH_ONLY").unwrap_or_default();
    let run = |row: &str| only.is_empty() || only.split(',').any(|r| r == row);
    let mut rows = Vec::new();
    if run("fanout") {
        rows.extend(bench.fan_out().await);
    }
    if run("coalescing") {
        rows.push(bench.coalescing().await);
    }
    if run("throughput") {
        rows.extend(bench.throughput().await);
    }
    if run("scale") {
        rows.extend(bench.scale().await);
    }
    if run("history") {
        rows.extend(bench.history().await);
    }
    if run("replicas") {
        rows.push(bench.replicas().await);
    }
    let _ = std::fs::remove_dir_all(&bench.dir);
    // The table is rewritten; the notes after NOTES_MARKER (profiles, fixes, before/after) are
    // kept from the previous BENCHMARKS.md.
    let notes = std::fs::read_to_string(&out)
        .ok()
        .and_then(|old| old.find(NOTES_MARKER).map(|at| old[at..].to_owned()))
        .unwrap_or_else(|| format!("{NOTES_MARKER}\n"));
    let report = format!("{}\n{notes}", report(&rows, started.elapsed()));
    std::fs::write(&out, &report).unwrap();
    println!("{report}");
}

struct Bench {
    tally_bin: PathBuf,
    pg: String,
    dir: PathBuf,
}

/// A tally process, killed on drop.
struct Tally {
    child: Child,
    base: String,
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tally {
    /// Kilobytes of resident memory now and at its peak (`/proc/PID/status`).
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

async fn emulator(latency_ms: u64) -> Emulator {
    let mut options = EmulatorOptions::default();
    for p in Provider::ALL {
        options.faults.insert(p, Faults { latency: Duration::from_millis(latency_ms), ..Faults::default() });
    }
    Emulator::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).await.unwrap()
}

fn leanx_accounts(emu: &Emulator, prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[accounts]]\nid = \"{prefix}-{i}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"{}\"\nmax_retries = 0\n",
                emu.base_url(Provider::Leanx),
                credentials::LEANX_MAIN_TOKEN
            )
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Bench {
    async fn tally(&self, name: &str, server: &str, store: &str, accounts: &str) -> Tally {
        let port = free_port();
        let config =
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n[store]\nurl = \"{store}\"\n\n{accounts}");
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let child = Command::new(&self.tally_bin)
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the tally binary runs");
        // Owned at once, so that any exit path kills and reaps it.
        let tally = Tally { child, base: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http.get(format!("{}/healthz", tally.base)).send().await.is_ok() {
                return tally;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tally ({name}) did not start");
    }

    fn sqlite(&self, name: &str) -> String {
        format!("sqlite://{}", self.dir.join(format!("{name}.db")).display())
    }

    /// A fresh PostgreSQL database for one row.
    async fn postgres(&self, name: &str) -> String {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.pg).await.expect("the benchmark's PostgreSQL");
        let db = format!("tally_bench_{name}");
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await.unwrap();
        let mut url = url::Url::parse(&self.pg).unwrap();
        url.set_path(&format!("/{db}"));
        url.to_string()
    }

    /// Row 1: live `/balances` over five accounts whose upstreams answer in 50…400 ms.
    async fn fan_out(&self) -> Vec<Row> {
        let mut emulators = Vec::new();
        let mut accounts = String::new();
        for (i, ms) in [50, 100, 150, 200, 400].into_iter().enumerate() {
            let emu = emulator(ms).await;
            accounts.push_str(&leanx_accounts(&emu, &format!("fan{i}"), 1));
            emulators.push(emu);
        }
        let tally = self.tally("fanout", "", &self.sqlite("fanout"), &accounts).await;
        let http = reqwest::Client::new();
        let url = format!("{}/balances?max_age=0", tally.base);
        for _ in 0..3 {
            http.get(&url).send().await.unwrap().bytes().await.unwrap();
        }
        let mut took = Vec::new();
        for _ in 0..40 {
            let t = Instant::now();
            let r = http.get(&url).send().await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            assert_eq!(body["complete"], true);
            took.push(t.elapsed());
        }
        let (p50, p99) = (percentile(&mut took, 0.50), percentile(&mut took, 0.99));
        let limit = Duration::from_millis(400);
        vec![
            ratio_row("Fan-out p50: live /balances, 5 upstreams of 50–400 ms", p50, limit, "≤ 1.05"),
            ratio_row("Fan-out p99", p99, limit, "≤ 1.05"),
        ]
    }

    /// Row 2: 1000 concurrent forced requests for the same accounts. The upstream takes 1 s:
    /// opening 1000 connections on two cores shared with tally can take longer than 200 ms, and
    /// a request arriving after a fetch has finished rightly forces the next one.
    async fn coalescing(&self) -> Row {
        let emu = emulator(1000).await;
        let accounts = 5;
        let tally = self
            .tally(
                "coalescing",
                "max_concurrent_requests = 2000",
                &self.sqlite("coalescing"),
                &leanx_accounts(&emu, "co", accounts),
            )
            .await;
        forced_requests(&[&tally], 1000).await;
        let per_account = emu.calls(Provider::Leanx) as f64 / accounts as f64;
        Row {
            name: "Coalescing: 1000 concurrent forced requests, upstream calls per account",
            figure: format!("{per_account:.2}"),
            limit: "1".into(),
            ratio: per_account,
            target: "= 1",
            met: per_account <= 1.0,
        }
    }

    /// Row 3: cached `/balances` (ten warm accounts) against a bare axum route returning the
    /// same bytes, both in this process, 64 connections for 10 s each.
    async fn throughput(&self) -> Vec<Row> {
        let emu = emulator(0).await;
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\n[defaults]\nttl = \"1h\"\n{}",
            self.sqlite("throughput"),
            leanx_accounts(&emu, "warm", 10)
        );
        let app = tally::app::Application::build(tally::config::from_toml(&toml).unwrap()).await.unwrap();
        let tally_url = format!("http://{}/balances", app.local_addr());
        tokio::spawn(app.run_until(std::future::pending()));
        let http = reqwest::Client::new();
        let body = http.get(&tally_url).send().await.unwrap().bytes().await.unwrap();
        let bare = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_url = format!("http://{}/balances", bare.local_addr().unwrap());
        let bytes = body.clone();
        let router = axum::Router::new().route(
            "/balances",
            axum::routing::get(move || {
                let bytes = bytes.clone();
                async move { ([("content-type", "application/json")], bytes) }
            }),
        );
        tokio::spawn(async move { axum::serve(bare, router).await });
        // Ten rounds of one second each side, interleaved (bare, tally, bare, …), after a warm-up:
        // drift in this machine's speed falls on both alike. Each side's figure is its total
        // over its 10 s; the spread of the per-round ratios shows how steady the run was.
        load(&bare_url, 64, Duration::from_secs(1)).await;
        load(&tally_url, 64, Duration::from_secs(1)).await;
        let (mut bare_total, mut tally_total) = (0.0, 0.0);
        let (mut bare_latencies, mut tally_latencies) = (Vec::new(), Vec::new());
        let mut round_ratios = Vec::new();
        for _ in 0..10 {
            let bare = load(&bare_url, 64, Duration::from_secs(1)).await;
            let tally = load(&tally_url, 64, Duration::from_secs(1)).await;
            round_ratios.push(tally.len() as f64 / bare.len() as f64);
            (bare_total, tally_total) = (bare_total + bare.len() as f64, tally_total + tally.len() as f64);
            bare_latencies.extend(bare);
            tally_latencies.extend(tally);
        }
        let (bare_rps, tally_rps) = (bare_total / 10.0, tally_total / 10.0);
        let bare_p99 = percentile(&mut bare_latencies, 0.99);
        let tally_p99 = percentile(&mut tally_latencies, 0.99);
        let ratio = tally_rps / bare_rps;
        round_ratios.sort_by(f64::total_cmp);
        let spread = format!("{:.2}–{:.2}", round_ratios[0], round_ratios[round_ratios.len() - 1]);
        vec![
            Row {
                name: "Cached /balances throughput (10 warm accounts, 64 connections, 10 × 1 s interleaved) ÷ bare axum route, same bytes",
                figure: format!(
                    "{tally_rps:.0} req/s vs {bare_rps:.0} req/s (bare p99 {:.2} ms; per-round ratios {spread})",
                    ms(bare_p99)
                ),
                limit: format!("{bare_rps:.0} req/s"),
                ratio,
                target: "≥ 0.6",
                met: ratio >= 0.6,
            },
            Row {
                name: "Cached /balances p99 latency",
                figure: format!("{:.2} ms", ms(tally_p99)),
                limit: "10 ms".into(),
                ratio: ms(tally_p99) / 10.0,
                target: "< 1.0",
                met: ms(tally_p99) < 10.0,
            },
        ]
    }

    /// Row 4: 1000 accounts at 100 ms, a full live refresh; memory at peak and after rounds.
    async fn scale(&self) -> Vec<Row> {
        let emu = emulator(100).await;
        let fetches = 64;
        let server = format!("request_timeout = \"60s\"\nmax_concurrent_fetches = {fetches}");
        let tally = self.tally("scale", &server, &self.sqlite("scale"), &leanx_accounts(&emu, "s", 1000)).await;
        let http = reqwest::Client::new();
        let url = format!("{}/balances?max_age=0", tally.base);
        let mut walls = Vec::new();
        let mut rss_after = Vec::new();
        for _ in 0..6 {
            let t = Instant::now();
            let r = http.get(&url).send().await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            walls.push(t.elapsed());
            assert_eq!(body["accounts"].as_array().unwrap().len(), 1000);
            rss_after.push(tally.rss_kib());
        }
        let ideal = Duration::from_millis(100) * 1000u32.div_ceil(fetches);
        let wall = walls[0];
        let peak_mib = rss_after.iter().map(|r| r.1).max().unwrap() as f64 / 1024.0;
        let (first, last) = (rss_after[1].0 as f64 / 1024.0, rss_after[5].0 as f64 / 1024.0);
        vec![
            ratio_row(
                "Scale: 1000 accounts at 100 ms, full live refresh (max_concurrent_fetches 64)",
                wall,
                ideal,
                "≤ 1.2",
            ),
            Row {
                name: "Scale: peak RSS",
                figure: format!("{peak_mib:.1} MiB"),
                limit: "150 MiB".into(),
                ratio: peak_mib / 150.0,
                target: "≤ 1.0",
                met: peak_mib <= 150.0,
            },
            Row {
                name: "Scale: steady RSS, after refresh round 1 → round 5",
                figure: format!("{first:.1} → {last:.1} MiB"),
                limit: format!("{first:.1} MiB (no growth)"),
                ratio: last / first,
                target: "≤ 1.05",
                met: last / first <= 1.05,
            },
        ]
    }

    /// Row 5: 1,000,000 change points in PostgreSQL; a one-month range for one account. On the
    /// same dataset and tally process, issue 20's rows beside it: `as_of` for that account at
    /// instants across the same month, and `daily` over the same month for all 100 accounts.
    async fn history(&self) -> Vec<Row> {
        use sqlx::Connection;
        let url = self.postgres("history").await;
        let status = Command::new(&self.tally_bin)
            .arg("migrate")
            .env("TALLY__STORE__URL", &url)
            .env("RUST_LOG", "error")
            .status()
            .unwrap();
        assert!(status.success());
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        // 100 accounts × 10,000 hourly change points (about 14 months each).
        sqlx::query(
            "INSERT INTO balance_points (account, provider, wallet, currency, available, total, blocked, first_seen_at, last_confirmed_at)
             SELECT 'h-' || a, 'leanx', 'prefund', 'MYR', (1000 + n)::numeric / 100, (1000 + n)::numeric / 100, false,
                    timestamptz '2025-01-01' + n * interval '1 hour', timestamptz '2025-01-01' + n * interval '1 hour' + interval '50 minutes'
             FROM generate_series(0, 99) a, generate_series(0, 9999) n",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query("ANALYZE balance_points").execute(&mut conn).await.unwrap();
        let accounts: String = (0..100)
            .map(|i| format!("[[accounts]]\nid = \"h-{i}\"\nprovider = \"leanx\"\nbase_url = \"http://127.0.0.1:9\"\nauth_token = \"t\"\n"))
            .collect();
        let tally = self.tally("history", "", &url, &accounts).await;
        let http = reqwest::Client::new();
        let query = format!(
            "{}/balances/history?account=h-42&from=2025-06-01T00:00:00Z&to=2025-07-01T00:00:00Z&limit=10000",
            tally.base
        );
        let mut points = 0;
        let mut history =
            timed(&http, |_| query.clone(), |body| points = body["points"].as_array().unwrap().len()).await;
        let history_p50 = percentile(&mut history, 0.5);
        let mut row = ratio_row(
            "History: one-month range for one account, 1,000,000 change points in PostgreSQL, p50",
            history_p50,
            Duration::from_millis(50),
            "≤ 1.0",
        );
        row.figure = format!("{} ({points} points)", row.figure);

        // `as_of` for h-42 at a different instant of June 2025 each request (every 12 h 7 min 13 s
        // from 00:00:10 on the 1st), each the point in force then.
        let june = chrono::DateTime::parse_from_rfc3339("2025-06-01T00:00:10Z").unwrap().to_utc();
        let step = chrono::TimeDelta::seconds(12 * 3600 + 7 * 60 + 13);
        let as_of_url = |i: usize| {
            let at = june + step * i32::try_from(i).unwrap();
            format!("{}/balances?account=h-42&as_of={}", tally.base, at.format("%Y-%m-%dT%H:%M:%SZ"))
        };
        let mut as_of = timed(&http, as_of_url, |body| {
            assert_eq!(body["balances"].as_array().unwrap().len(), 1, "{body}");
            assert_eq!(body["accounts"][0]["source"], "store", "{body}");
            assert_ne!(body["accounts"][0]["status"], "failed", "{body}");
        })
        .await;
        let as_of_p50 = percentile(&mut as_of, 0.5);
        let mut as_of_row = ratio_row(
            "as_of: /balances?as_of= for one account at instants across one month, same 1,000,000 points, p50",
            as_of_p50,
            Duration::from_millis(20),
            "≤ 1.0",
        );
        as_of_row.figure = format!("{} (history query above: {:.1} ms)", as_of_row.figure, ms(history_p50));

        // `daily` for June 2025 (30 days) over all 100 accounts: 100 entries × 30 days.
        let daily_url = format!("{}/balances/daily?from=2025-06-01&to=2025-06-30", tally.base);
        let mut lines = 0;
        let mut daily =
            timed(&http, |_| daily_url.clone(), |body| lines = body["days"].as_array().unwrap().len()).await;
        assert_eq!(lines, 30 * 100, "one line per day and account");
        let daily_p50 = percentile(&mut daily, 0.5);
        let mut daily_row = ratio_row(
            "daily: /balances/daily, 30 days × 100 entries (72,000 of the same 1,000,000 points), p50",
            daily_p50,
            Duration::from_millis(100),
            "≤ 1.0",
        );
        daily_row.figure =
            format!("{} ({lines} lines; history query above: {:.1} ms)", daily_row.figure, ms(history_p50));
        vec![row, as_of_row, daily_row]
    }

    /// Issue 10's row: three replicas on one PostgreSQL, 300 concurrent forced requests.
    async fn replicas(&self) -> Row {
        let emu = emulator(300).await;
        let url = self.postgres("replicas").await;
        let accounts = 2;
        let config = leanx_accounts(&emu, "r", accounts);
        let a = self.tally("replica-a", "", &url, &config).await;
        let b = self.tally("replica-b", "", &url, &config).await;
        let c = self.tally("replica-c", "", &url, &config).await;
        forced_requests(&[&a, &b, &c], 300).await;
        let per_account = emu.calls(Provider::Leanx) as f64 / accounts as f64;
        Row {
            name: "Coalescing across 3 replicas on PostgreSQL: 300 forced requests, upstream calls per account",
            figure: format!("{per_account:.2}"),
            limit: "1".into(),
            ratio: per_account,
            target: "= 1",
            met: per_account <= 1.0,
        }
    }
}

/// `n` concurrent `max_age=0` requests spread over the replicas; all must succeed.
async fn forced_requests(replicas: &[&Tally], n: usize) {
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, url) = (http.clone(), format!("{}/balances?max_age=0", replicas[i % replicas.len()].base));
            tokio::spawn(async move {
                match http.get(url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("HTTP {}: {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => Err(format!("{e:?}")),
                }
            })
        })
        .collect();
    let mut ok = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    assert_eq!(ok, n, "every forced request succeeds; first failure: {first_error:?}");
}

/// Closed-loop load, as wrk makes it: `connections` workers, each with its own HTTP/1
/// connection and a prepared request, for `duration`; the latency of every request answered.
/// Lean on purpose: on two cores the generator shares the CPU with the server it measures.
async fn load(url: &str, connections: usize, duration: Duration) -> Vec<Duration> {
    use http_body_util::{BodyExt, Empty};
    let uri: axum::http::Uri = url.parse().unwrap();
    let authority = uri.authority().expect("an absolute URL").to_string();
    let path = uri.path_and_query().expect("a path").to_string();
    let until = Instant::now() + duration;
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (authority, path) = (authority.clone(), path.clone());
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let io = hyper_util::rt::TokioIo::new(stream);
                let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(connection);
                let mut mine = Vec::new();
                while Instant::now() < until {
                    let request = axum::http::Request::get(path.as_str())
                        .header(axum::http::header::HOST, authority.as_str())
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap();
                    let t = Instant::now();
                    let response = sender.send_request(request).await.unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                    response.into_body().collect().await.unwrap();
                    mine.push(t.elapsed());
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all
}

/// 60 sequential GETs of `url(i)`, each answer checked by `check`; the times of the last 50,
/// from sending the request to receiving the answer's last byte.
async fn timed(
    http: &reqwest::Client,
    url: impl Fn(usize) -> String,
    mut check: impl FnMut(&serde_json::Value),
) -> Vec<Duration> {
    let mut took = Vec::new();
    for i in 0..60 {
        let t = Instant::now();
        let response = http.get(url(i)).send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let bytes = response.bytes().await.unwrap();
        // Timed to the answer's last byte; parsing it is the benchmark's own work.
        if i >= 10 {
            took.push(t.elapsed());
        }
        check(&serde_json::from_slice(&bytes).unwrap());
    }
    took
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio_row(name: &'static str, figure: Duration, limit: Duration, target: &'static str) -> Row {
    let ratio = figure.as_secs_f64() / limit.as_secs_f64();
    let bound: f64 = target.trim_start_matches(['≤', ' ']).parse().unwrap_or(1.0);
    Row {
        name,
        figure: format!("{:.1} ms", ms(figure)),
        limit: format!("{:.0} ms", ms(limit)),
        ratio,
        target,
        met: ratio <= bound,
    }
}

fn report(rows: &[Row], took: Duration) -> String {
    let cmd = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let mem =
        std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or_default().to_owned();
    let mut out = format!(
        "# Benchmarks\n\nMeasured by `bench/run.sh` (release build) in one run of {:.0} s.\n\n\
         - machine: {} cores, {}\n- date: {}\n- commit: {}\n\n\
         Each row is a figure and its ratio to the limit it is measured against in the same run.\n\n\
         | row | figure | limit | ratio | target | met |\n|---|---|---|---|---|---|\n",
        took.as_secs_f64(),
        cmd("nproc", &[]),
        mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" ").replace("kB", "kB RAM"),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        cmd("git", &["describe", "--always", "--dirty"]),
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.3} | {} | {} |\n",
            r.name,
            r.figure,
            r.limit,
            r.ratio,
            r.target,
            if r.met { "yes" } else { "**no**" }
        ));
    }
    out
}
