//! The `tally` binary as an operator runs it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn tally(args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
    cmd.args(args)
        .env_remove("TALLY_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the tally binary runs");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_names_a_typoed_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:8080\"\nrequest_timout = \"10s\"\n").unwrap();
    let out = tally(&["check-config", "--config", path.to_str().unwrap()], &[], None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("config key `server.request_timout`: unknown field `request_timout`"), "{err}");
}

#[test]
fn check_config_counts_monitors_webhooks_and_keys_and_names_each_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.toml");
    let valid = "[auth]\napi_keys = [{ name = \"ops\", sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\", role = \"operate\" }]\n\
                 [[accounts]]\nid = \"leanx-main\"\nprovider = \"leanx\"\nauth_token = \"t\"\n\
                 [[monitors]]\nid = \"low\"\naccount = \"leanx-main\"\ncurrency = \"MYR\"\nbelow = \"500\"\nclear = \"750\"\n\
                 [[webhooks]]\nid = \"bot\"\nurl = \"https://hooks.example.com/tally\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
    std::fs::write(&path, valid).unwrap();
    let out = tally(&["check-config", "--config", path.to_str().unwrap()], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 account(s), 1 monitor(s), 1 webhook(s), 1 API key(s)"),
        "{}",
        text(&out.stdout)
    );

    for (from, to, key) in [
        ("clear = \"750\"", "clear = \"400\"", "monitors[0].clear"),
        ("account = \"leanx-main\"\ncurrency", "account = \"leanx-mian\"\ncurrency", "monitors[0].account"),
        ("https://hooks.example.com/tally", "hooks.example.com", "webhooks[0].url"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "webhooks[0].secret"),
        ("role = \"operate\"", "role = \"admin\"", "auth.api_keys[0].role"),
    ] {
        std::fs::write(&path, valid.replace(from, to)).unwrap();
        let out = tally(&["check-config", "--config", path.to_str().unwrap()], &[], None);
        assert!(!out.status.success(), "{key}");
        let err = text(&out.stderr);
        assert!(err.contains(&format!("config key `{key}`")), "{key}: {err}");
        assert!(!err.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "no secret in the error: {err}");
    }
}

#[test]
fn check_config_accepts_a_valid_file_and_environment_overrides_win() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
    let out = tally(&["check-config", "--config", path.to_str().unwrap()], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("config ok: 0 account(s), 0 monitor(s), 0 webhook(s), 0 API key(s), store sqlite")
    );

    let out =
        tally(&["check-config", "--config", path.to_str().unwrap()], &[("TALLY__SERVER__LISTEN", "nonsense")], None);
    assert!(!out.status.success(), "the environment value must override the file");
    assert!(text(&out.stderr).contains("config key `server.listen`"), "{}", text(&out.stderr));

    let out = tally(
        &["check-config"],
        &[("TALLY_CONFIG", path.to_str().unwrap()), ("TALLY__STORE__URL", "postgres://x@127.0.0.1/db")],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("store postgres"));
}

#[test]
fn a_missing_config_file_is_an_error() {
    let out = tally(&["check-config", "--config", "/nonexistent/tally.toml"], &[], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not exist"));
}

#[test]
fn hash_key_prints_the_sha256_of_stdin() {
    let out = tally(&["hash-key"], &[], Some("test\n"));
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
}

#[test]
fn migrate_creates_and_migrates_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let url = format!("sqlite://{}", db.display());
    let out = tally(&["migrate"], &[("TALLY__STORE__URL", &url)], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(db.exists());
}

#[test]
fn openapi_prints_json_and_yaml() {
    let out = tally(&["openapi"], &[], None);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let out = tally(&["openapi", "--format", "yaml"], &[], None);
    assert!(text(&out.stdout).starts_with("openapi: 3.1.0"), "{}", text(&out.stdout));
}

#[test]
fn config_is_refused_by_the_commands_that_would_ignore_it() {
    for (args, named) in [
        (&["demo", "--config", "tally.toml"][..], "`tally demo` (the demo makes its own config"),
        (&["--config", "tally.toml", "emulate"][..], "`tally emulate`"),
        (&["openapi", "--config", "tally.toml"][..], "`tally openapi`"),
        (&["hash-key", "--config", "tally.toml"][..], "`tally hash-key`"),
    ] {
        // No input: each command refuses before reading any (a write could meet a closed pipe).
        let out = tally(args, &[], None);
        assert!(!out.status.success(), "{args:?} must not run");
        let err = text(&out.stderr);
        assert!(err.contains(&format!("--config is not used by {named}")), "{args:?}: {err}");
    }
}

#[test]
fn check_config_reads_the_rates_file_and_names_each_bad_reporting_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.toml");
    let rates = dir.path().join("rates.csv");
    std::fs::write(&rates, "date,currency,rate\n2026-11-28,HKD,0.1285\n").unwrap();
    let valid = format!(
        "[reporting]\ncurrency = \"USD\"\nrates = [{{ currency = \"MYR\", rate = \"0.2241\", as_of = \"2026-11-28\" }}]\nrates_file = \"{}\"\n",
        rates.display()
    );
    std::fs::write(&path, &valid).unwrap();
    let out = tally(&["check-config", "--config", path.to_str().unwrap()], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (from, to, key) in [
        ("\"MYR\"", "\"USD\"", "reporting.rates[0].currency"),
        ("\"0.2241\"", "\"-1\"", "reporting.rates[0].rate"),
        ("\"0.2241\"", "0.2241", "reporting.rates[0].rate"),
        ("rates.csv", "missing.csv", "reporting.rates_file"),
    ] {
        std::fs::write(&path, valid.replace(from, to)).unwrap();
        let out = tally(&["check-config", "--config", path.to_str().unwrap()], &[], None);
        assert!(!out.status.success(), "{key}");
        let err = text(&out.stderr);
        assert!(err.contains(&format!("config key `{key}`")), "{key}: {err}");
    }
    std::fs::write(&rates, "2026-11-28,HKD,0.1285\n2026-11-28,HKD,0.1290\n").unwrap();
    std::fs::write(&path, &valid).unwrap();
    let out = tally(&["check-config", "--config", path.to_str().unwrap()], &[], None);
    let err = text(&out.stderr);
    assert!(
        err.contains("config key `reporting.rates_file`: line 2, as_of: `HKD` has two rates for 2026-11-28"),
        "{err}"
    );
}
