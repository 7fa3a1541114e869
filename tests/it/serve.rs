//! `tally serve` as a process: where it finds its config, what it logs, and how it stops.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `tally serve` process on an ephemeral port, logging JSON lines, killed on drop.
struct Served {
    child: Child,
    base: String,
    /// Every log line after the one announcing the address, as it arrives.
    lines: mpsc::Receiver<serde_json::Value>,
    /// The log lines up to and including that one.
    start_lines: Vec<serde_json::Value>,
}

impl Served {
    /// Starts tally in `dir` with `args`; the listen address is overridden to port 0 through
    /// the environment, so the config file (if any) is still what is being tested.
    fn start(dir: &Path, args: &[&str]) -> Self {
        // The tests' own HTTP client needs rustls' provider, as tally's does.
        tally::install_crypto_provider();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(args)
            .current_dir(dir)
            .env_remove("TALLY_CONFIG")
            .env("TALLY__SERVER__LISTEN", "127.0.0.1:0")
            .env("TALLY_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tally binary runs");
        let (tx, lines) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let json: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
                if tx.send(json).is_err() {
                    break;
                }
            }
        });
        let mut start_lines = Vec::new();
        let addr = loop {
            let line = lines.recv_timeout(Duration::from_secs(20)).expect("tally logs until it listens");
            start_lines.push(line.clone());
            if line["message"] == "tally is listening" {
                break line["addr"].as_str().expect("the address is a field").to_owned();
            }
        };
        Self { child, base: format!("http://{addr}"), lines, start_lines }
    }

    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit on its own, after a signal.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        // A thread owns the blocking wait; a finished placeholder takes the child's place here.
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("tally did not exit within 10 s of SIGTERM")
        });
        status.unwrap()
    }

    fn later_lines(&self) -> Vec<serde_json::Value> {
        self.lines.try_iter().collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn with_no_config_tally_serves_defaults_creates_tally_db_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path(), &["serve"]);
    let r = reqwest::get(format!("{}/healthz", served.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(dir.path().join("tally.db").exists(), "the default SQLite store is ./tally.db");
    let warnings: Vec<_> = served.start_lines.iter().filter(|l| l["level"] == "WARN").collect();
    assert_eq!(warnings.len(), 1, "one warning line: {warnings:?}");
    assert!(warnings[0]["message"].as_str().unwrap().contains("using built-in defaults"), "{warnings:?}");
    served.terminate();
    assert!(served.wait_exit().success(), "SIGTERM is a clean stop");
}

#[tokio::test]
async fn open_metrics_beside_api_keys_warn_that_they_name_every_account() {
    let dir = tempfile::tempdir().unwrap();
    let keyed = format!(
        "[auth]\napi_keys = [{{ name = \"ops\", sha256 = \"{}\" }}]\n\
         [[accounts]]\nid = \"named-in-metrics\"\nprovider = \"leanx\"\nbase_url = \"http://127.0.0.1:9\"\nauth_token = \"t\"\n",
        tally::http::digest_hex("k")
    );
    for (metrics, warned) in [("", true), ("[metrics]\nrequire_auth = true\n", false)] {
        std::fs::write(dir.path().join("tally.toml"), format!("{keyed}{metrics}")).unwrap();
        let served = Served::start(dir.path(), &[]);
        let warning = served.start_lines.iter().find(|l| {
            l["level"] == "WARN" && l["message"].as_str().is_some_and(|m| m.contains("metrics.require_auth is false"))
        });
        assert_eq!(warning.is_some(), warned, "{metrics:?}: {:?}", served.start_lines);
        let open = reqwest::get(format!("{}/metrics", served.base)).await.unwrap();
        if warned {
            let text = open.text().await.unwrap();
            assert!(text.contains(r#"account="named-in-metrics""#), "what the warning says: {text}");
        } else {
            assert_eq!(open.status(), 401);
        }
    }
}

#[tokio::test]
async fn tally_toml_in_the_working_directory_is_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tally.toml"), "[store]\nurl = \"sqlite://from-tally-toml.db\"\n").unwrap();
    let served = Served::start(dir.path(), &[]);
    assert_eq!(reqwest::get(format!("{}/readyz", served.base)).await.unwrap().status(), 200);
    assert!(dir.path().join("from-tally-toml.db").exists());
    assert!(served.start_lines.iter().any(|l| l["message"] == "loaded config" && l["path"] == "tally.toml"));
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish_then_exits_zero() {
    let upstream = crate::helpers::leanx(crate::helpers::ok("2.25", "1.50").set_delay(Duration::from_secs(1))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[accounts]]\nid = \"slow\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\n",
        upstream.uri()
    );
    std::fs::write(dir.path().join("tally.toml"), config).unwrap();
    let mut served = Served::start(dir.path(), &["serve", "--config", "tally.toml"]);
    let in_flight = tokio::spawn(reqwest::get(format!("{}/balances", served.base)));
    let reached = tokio::time::timeout(Duration::from_secs(5), async {
        while upstream.received_requests().await.unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    });
    reached.await.expect("the request reaches the upstream");
    served.terminate();
    let answer = in_flight.await.unwrap().expect("the request in flight is answered");
    let status = answer.status();
    let body: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(status, 200, "{body}");
    let prefund = body["balances"].as_array().unwrap().iter().find(|l| l["wallet"] == "prefund").cloned();
    assert_eq!(prefund.map(|l| l["available"].clone()), Some(serde_json::json!("2.25")), "{body}");
    assert!(served.wait_exit().success());
    let messages: Vec<_> = served.later_lines().iter().map(|l| l["message"].to_string()).collect();
    assert!(messages.iter().any(|m| m.contains("shutting down")), "{messages:?}");
    assert!(messages.last().is_some_and(|m| m.contains("stopped")), "the pool is closed last: {messages:?}");
}

#[test]
fn check_config_refuses_what_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"0.0.0.0:8080\"\n", "refusing to listen on 0.0.0.0:8080 without API keys"),
        ("[store]\nurl = \"postgres://tally:pw@db:notaport/tally\"\n", "config key `store.url`: "),
    ];
    for (toml, expected) in cases {
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["check-config", "--config", path.to_str().unwrap()])
            .env_remove("TALLY_CONFIG")
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(err.contains(expected), "{toml}: {err}");
        assert!(!err.contains("pw@"), "the URL is never echoed: {err}");
    }
}

#[tokio::test]
async fn the_demo_command_takes_faults_and_removes_its_scratch_store_on_sigterm() {
    tally::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["demo", "--listen", "127.0.0.1:0", "--fault", "yedpay=malformed"])
        .env("TMPDIR", tmp.path())
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let first = banner.next().expect("a banner");
    assert!(first.starts_with("tally demo: the dashboard at http://") && first.contains("/dashboard"), "{first}");
    let api = banner.next().expect("the API line");
    let url = api.split("the API on ").nth(1).and_then(|s| s.split(',').next()).expect("the API URL").to_owned();
    let store = banner.find_map(|l| l.strip_prefix("store: ").map(str::to_owned)).expect("the store path");
    assert!(store.starts_with(tmp.path().to_str().unwrap()), "a scratch store under TMPDIR: {store}");

    let r = reqwest::get(format!("{url}/balances")).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let accounts = body["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 5, "{body}");
    for a in accounts {
        let expected = if a["account"] == "yedpay-hk" { "failed" } else { "fresh" };
        assert_eq!(a["status"], expected, "{a}");
    }
    let yedpay = accounts.iter().find(|a| a["account"] == "yedpay-hk").unwrap();
    assert_eq!(yedpay["error"]["code"], "upstream_invalid_response", "the --fault flag reached the emulator");

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(Duration::from_secs(10)).expect("the demo stops on SIGTERM").unwrap();
    assert!(status.success());
    assert!(!Path::new(&store).parent().unwrap().exists(), "the scratch directory is removed");
}

#[tokio::test]
async fn the_demo_may_listen_beyond_loopback_and_says_so() {
    let demo = tally::demo::Demo::build("0.0.0.0:0".parse().unwrap(), None).await.expect("emulated data only");
    assert!(demo.banner().contains("beyond loopback without API keys (demo data only)"));
    demo.run_until(async {}).await.unwrap();
}
