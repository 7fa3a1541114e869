use secrecy::ExposeSecret;

use super::*;
use crate::providers::ProviderConfig;

const FULL: &str = r#"
[server]
listen = "127.0.0.1:9090"
request_timeout = "8s"
max_concurrent_fetches = 16

[store]
url = "postgres://tally@db.internal/tally"
max_connections = 20

[defaults]
ttl = "45s"
timeout = "2500ms"
refresh_interval = "1m"

[auth]
api_keys = [
  { name = "grafana", sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" },
  { name = "oncall", sha256 = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752", role = "operate" },
]

[metrics]
require_auth = true

[[accounts]]
id = "leanx-main"
provider = "leanx"
base_url = "https://api.leanx.dev"
auth_token = "LP-X|uuid|hex"
currency = "myr"
ttl = "10s"

[[accounts]]
id = "luxtak-latam"
provider = "luxtak"
app_id = "APP"
app_key = "KEY"

[[accounts]]
id = "ibanera-treasury"
provider = "ibanera"
username = "u"
password = "p"
totp_secret = "JBSWY3DPEHPK3PXP"

[[accounts]]
id = "yedpay-hk"
provider = "yedpay"
access_token = "tok"
company_id = "JwoMPpKy"
currencies = ["HKD", "usd"]
"#;

#[test]
fn a_full_valid_file_loads_with_defaults_and_overrides() {
    let s = from_toml(FULL).unwrap();
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(s.server.request_timeout, Duration::from_secs(8));
    assert_eq!(s.server.max_concurrent_fetches, 16);
    assert_eq!(s.store.max_connections, 20);
    assert_eq!(s.auth.api_keys[0].name, "grafana");
    assert_eq!(s.auth.api_keys[0].role, crate::config::Role::Read, "read is the default role");
    assert_eq!(s.auth.api_keys[1].role, crate::config::Role::Operate);
    assert!(s.metrics.require_auth);
    assert_eq!(s.accounts.len(), 4);
    let leanx = &s.accounts[0];
    assert_eq!(leanx.freshness.ttl, Duration::from_secs(10), "the account's own ttl wins");
    assert_eq!(leanx.freshness.timeout, Duration::from_millis(2500), "[defaults] applies");
    assert_eq!(leanx.freshness.refresh_interval, Duration::from_secs(60));
    assert_eq!(leanx.utc_offset.local_minus_utc(), 8 * 3600);
    match &leanx.provider {
        ProviderConfig::Leanx(leanx) => {
            assert_eq!(leanx.auth_token.expose_secret(), "LP-X|uuid|hex");
            assert_eq!(leanx.currency.as_str(), "MYR");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.accounts[1].base_url.as_str(), "https://api.luxtak.com/", "documented default base URL");
    match &s.accounts[3].provider {
        ProviderConfig::Yedpay(yedpay) => {
            assert_eq!(yedpay.currencies.iter().map(|c| c.as_str()).collect::<Vec<_>>(), ["HKD", "USD"])
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn no_file_means_loopback_sqlite_and_no_accounts() {
    let s = from_toml("").unwrap();
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.store.url.expose_secret(), "sqlite://tally.db");
    assert!(s.accounts.is_empty());
    assert_eq!(s.server.request_timeout, Duration::from_secs(10));
    assert_eq!(s.events.retention, Duration::from_secs(30 * 24 * 3600), "events are kept 30 days");
    let minutes = |m: u64| Duration::from_secs(60 * m);
    assert_eq!(
        s.payouts.watch_schedule,
        [Duration::from_secs(30), minutes(1), minutes(2), minutes(5), minutes(10), minutes(30), minutes(60)],
        "the watch's default schedule, its last delay repeating"
    );
    assert_eq!(s.payouts.watch_for, Duration::from_secs(7 * 24 * 3600), "payouts are watched 7 days");
}

fn error_of(toml: &str) -> ConfigError {
    from_toml(toml).map(|_| ()).expect_err(&format!("the config should be rejected: {toml}"))
}

#[test]
fn each_bad_config_names_its_key() {
    let leanx = "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"t\"\n";
    let cases: &[(&str, &str, &str)] = &[
        ("[server]\nlistn = \"x\"", "server.listn", "unknown field `listn`"),
        ("[sever]\nlisten = \"x\"", "sever", "unknown field `sever`"),
        ("[server]\nlisten = \"localhost\"", "server.listen", "not an address"),
        ("[server]\nrequest_timeout = \"10 parsecs\"", "server.request_timeout", "not a duration"),
        (
            "[defaults]\nttl = \"soon\"\n[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"t\"",
            "defaults.ttl",
            "not a duration",
        ),
        ("[[accounts]]\nid = \"a\"\nprovider = \"stripe\"", "accounts[0].provider", "unknown provider `stripe`"),
        (
            "[[accounts]]\nid = \"Main Account\"\nprovider = \"leanx\"\nauth_token = \"t\"",
            "accounts[0].id",
            "not a valid account id",
        ),
        (&format!("{leanx}{leanx}"), "accounts[1].id", "used twice"),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"luxtak\"\napp_id = \"x\"",
            "accounts[0].app_key",
            "is required for provider luxtak",
        ),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"env:TALLY_TEST_SURELY_UNSET\"",
            "accounts[0].auth_token",
            "TALLY_TEST_SURELY_UNSET is not set",
        ),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"t\"\nbase_url = \"not a url\"",
            "accounts[0].base_url",
            "is not a URL",
        ),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"t\"\nbase_url = \"ftp://x\"",
            "accounts[0].base_url",
            "http(s)",
        ),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"t\"\napp_key = \"k\"",
            "accounts[0].app_key",
            "unknown field `app_key`, expected one of `auth_token`, `currency`, `hash_key`",
        ),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_tokn = \"t\"",
            "accounts[0].auth_tokn",
            "unknown field `auth_tokn`",
        ),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"ibanera\"\nusername = \"u\"\npassword = \"p\"\ntotp_secret = \"not base32!\"",
            "accounts[0].totp_secret",
            "base32",
        ),
        ("[auth]\napi_keys = [{ name = \"x\", sha256 = \"abc\" }]", "auth.api_keys[0].sha256", "hex SHA-256"),
        (
            "[auth]\napi_keys = [{ name = \"x\", sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\", role = \"admin\" }]",
            "auth.api_keys[0].role",
            "`read` or `operate`",
        ),
        ("[store]\nurl = \"mysql://x\"", "store.url", "must start with"),
        ("[store]\nurl = \"postgres://u@db/x?sslmod=require\"", "store.url", "unknown connection parameter `sslmod`"),
        ("[server]\nmax_concurrent_fetches = 0", "server.max_concurrent_fetches", "at least 1"),
        // Durations a clock cannot be moved by are refused, not obeyed (they once gave 500s).
        ("[server]\nrequest_timeout = \"500000000000years\"", "server.request_timeout", "at most 365 days"),
        (
            &format!("[defaults]\ncircuit_cooldown = \"1000000years\"\n{leanx}"),
            "defaults.circuit_cooldown",
            "at most 365 days",
        ),
        (&format!("{leanx}circuit_cooldown = \"366d\""), "accounts[0].circuit_cooldown", "at most 365 days"),
        // [defaults] is checked with no account to use it.
        ("[defaults]\nttl = 30", "defaults.ttl", "not a duration"),
        (
            "[[accounts]]\nid = \"y\"\nprovider = \"yedpay\"\naccess_token = \"t\"\ncompany_id = \"C\"\ncurrencies = [\"HKD\", \"hkd\"]",
            "accounts[0].currencies",
            "lists HKD twice",
        ),
        ("[defaults]\ntimeout = \"0s\"", "defaults.timeout", "longer than zero"),
        ("[events]\nretention = \"0s\"", "events.retention", "longer than zero"),
        ("[events]\nretention = \"366d\"", "events.retention", "at most 365 days"),
        ("[events]\nretention = \"a month\"", "events.retention", "not a duration"),
        ("[events]\nmax_wait = \"31s\"", "events.max_wait", "at most 30s"),
        ("[events]\nmax_wait = \"0s\"", "events.max_wait", "longer than zero"),
        ("[payouts]\nwatch_schedule = []", "payouts.watch_schedule", "1 to 50 delays"),
        ("[payouts]\nwatch_schedule = [\"30s\", \"soon\"]", "payouts.watch_schedule[1]", "not a duration"),
        ("[payouts]\nwatch_schedule = [\"500ms\"]", "payouts.watch_schedule[0]", "at least 1s"),
        ("[payouts]\nwatch_schedule = [\"0s\"]", "payouts.watch_schedule[0]", "longer than zero"),
        ("[payouts]\nwatch_for = \"0s\"", "payouts.watch_for", "longer than zero"),
        ("[payouts]\nwatch_for = \"400d\"", "payouts.watch_for", "at most 365 days"),
        ("[payouts]\nwatch_fro = \"7d\"", "payouts.watch_fro", "unknown field `watch_fro`"),
        ("[events]\nretension = \"30d\"", "events.retension", "unknown field `retension`"),
        ("[defaults]\ntimeout = \"-5s\"", "defaults.timeout", "not a duration"),
        ("[defaults]\ncircuit_failure_threshold = 0", "defaults.circuit_failure_threshold", "at least 1"),
        ("[defaults]\nmax_calls_per_minute = 0", "defaults.max_calls_per_minute", "at least 1"),
        (&format!("{leanx}max_calls_per_minute = 0"), "accounts[0].max_calls_per_minute", "at least 1"),
        (&format!("[defaults]\nmax_calls_per_minute = 0\n{leanx}"), "defaults.max_calls_per_minute", "at least 1"),
        ("[[accounts]]\nid = \"a\"\nprovider = \"leanx\"", "accounts[0].auth_token", "is required for provider leanx"),
    ];
    for (toml, key, problem) in cases {
        let e = error_of(toml);
        let text = e.to_string();
        assert_eq!(e.key, *key, "for {toml:?}: {text}");
        assert!(text.contains(problem), "for {toml:?}: {text:?} should mention {problem:?}");
    }
}

#[test]
fn errors_never_echo_secret_values() {
    let e = error_of(
        "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"SUPERSECRET\"\napp_key = \"ALSOSECRET\"",
    );
    let text = e.to_string();
    assert!(!text.contains("SUPERSECRET") && !text.contains("ALSOSECRET"), "{text}");
    let e = error_of("[store]\nurl = \"mysql://user:hunter2@db/x\"");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    // A secret typed into a key that is not one, or a value the driver would have logged.
    for (toml, key) in [
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"t\"\nbase_url = \"https://u:hunter2@api.leanx.io\"",
            "accounts[0].base_url",
        ),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"t\"\nbase_url = \"ftp://u:hunter2@x\"",
            "accounts[0].base_url",
        ),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"t\"\nbase_url = \"hunter2 not a url\"",
            "accounts[0].base_url",
        ),
        ("[store]\nurl = \"postgres://u@db/x?passwrd=hunter2\"", "store.url"),
        // A credential typed without quotes, or into a key of another type.
        ("[[accounts]]\nid = \"a\"\nprovider = \"luxtak\"\napp_id = 4711000123\napp_key = \"k\"", "accounts[0].app_id"),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"ibanera\"\nusername = \"u\"\npassword = \"p\"\ntotp_secret = \"JBSWY3DPEHPK3PXP\"\npage_size = \"hunter2\"",
            "accounts[0].page_size",
        ),
    ] {
        let e = error_of(toml);
        assert_eq!(e.key, key);
        assert!(!e.to_string().contains("hunter2") && !e.to_string().contains("4711000123"), "{e}");
    }
}

#[test]
fn syntax_errors_name_the_position_in_one_line_and_never_echo_the_source() {
    let cases = [
        // An unterminated string: the parser's own message would quote the whole line.
        ("[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"LP-SECRET-1", "line 4, column"),
        (
            "[[accounts]]\nid = \"a\"\nprovider = \"leanx\"\nauth_token = \"LP-SECRET-1\"\nauth_token = \"LP-SECRET-2\"",
            "line 5, column 1: duplicate key",
        ),
        ("[store]\nurl = 'postgres://u:LP-SECRET-3@db/x\n", "line 2, column"),
    ];
    for (toml, position) in cases {
        let e = error_of(toml);
        let text = e.to_string();
        assert_eq!(e.key, "(config)");
        assert!(text.contains(&format!("TOML syntax error at {position}")), "{text}");
        assert!(!text.contains("LP-SECRET") && !text.contains('\n'), "one line, no source: {text}");
    }
}

#[test]
fn env_and_file_references_resolve_through_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "from-a-file\n").unwrap();
    // HOME is set wherever tests run; a secret may come from any variable.
    let toml = format!(
        "[[accounts]]\nid = \"i\"\nprovider = \"ibanera\"\nusername = \"env:HOME\"\npassword = \"file:{}\"\ntotp_secret = \"JBSWY3DPEHPK3PXP\"",
        password.display()
    );
    match &from_toml(&toml).unwrap().accounts[0].provider {
        ProviderConfig::Ibanera(ibanera) => {
            assert_eq!(ibanera.username.expose_secret(), std::env::var("HOME").unwrap());
            assert_eq!(ibanera.password.expose_secret(), "from-a-file", "one trailing newline is dropped");
        }
        other => panic!("unexpected {other:?}"),
    }
    let missing = error_of(&toml.replace(&password.display().to_string(), "/surely/not/here"));
    assert_eq!(missing.key, "accounts[0].password");
}

#[test]
fn debug_output_redacts_secrets() {
    let s = from_toml(FULL).unwrap();
    let debug = format!("{s:?}");
    for secret in ["LP-X|uuid|hex", "KEY", "JBSWY3DPEHPK3PXP", "tally@db.internal"] {
        assert!(!debug.contains(secret), "Debug output leaks {secret}");
    }
}

#[test]
fn connection_timeouts_default_and_are_validated_like_every_duration() {
    let s = from_toml("").unwrap();
    assert_eq!(s.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.server.idle_timeout, Duration::from_secs(60));
    let s = from_toml("[server]\nheader_read_timeout = \"250ms\"\nidle_timeout = \"2m\"").unwrap();
    assert_eq!(s.server.header_read_timeout, Duration::from_millis(250));
    assert_eq!(s.server.idle_timeout, Duration::from_secs(120));
    for key in ["header_read_timeout", "idle_timeout"] {
        for (value, problem) in [("0s", "longer than zero"), ("366d", "at most 365 days"), ("soon", "not a duration")] {
            let e = error_of(&format!("[server]\n{key} = \"{value}\""));
            assert_eq!(e.key, format!("server.{key}"), "{value}");
            assert!(e.to_string().contains(problem), "{key} = {value}: {e}");
        }
    }
}

#[test]
fn max_calls_per_minute_comes_from_the_account_then_defaults_and_is_unlimited_otherwise() {
    let leanx = |id: &str, extra: &str| {
        format!("[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nauth_token = \"t\"\n{extra}\n")
    };
    let s = from_toml(&format!("{}{}", leanx("a", "max_calls_per_minute = 7"), leanx("b", ""))).unwrap();
    let budgets: Vec<_> = s.accounts.iter().map(|a| a.max_calls_per_minute.map(|n| n.get())).collect();
    assert_eq!(budgets, [Some(7), None], "unlimited by default");
    let s = from_toml(&format!(
        "[defaults]\nmax_calls_per_minute = 30\n{}{}",
        leanx("a", "max_calls_per_minute = 7"),
        leanx("b", "")
    ))
    .unwrap();
    let budgets: Vec<_> = s.accounts.iter().map(|a| a.max_calls_per_minute.map(|n| n.get())).collect();
    assert_eq!(budgets, [Some(7), Some(30)], "the account's own key wins over [defaults]");
}

#[test]
fn monitors_load_with_their_defaults() {
    use crate::domain::monitor::{Condition, Field};
    let s = from_toml(
        r#"
[[accounts]]
id = "leanx-main"
provider = "leanx"
auth_token = "t"

[[monitors]]
id = "leanx-prefund-low"
account = "leanx-main"
provider = "leanx"
wallet = "prefund"
currency = "myr"
below = "500.00"
clear = "750.00"

[[monitors]]
id = "usd_high"
currency = "USD"
field = "total"
above = "1000000"
"#,
    )
    .unwrap();
    let [low, high] = &s.monitors[..] else { panic!("two monitors: {:?}", s.monitors) };
    assert_eq!(low.id, "leanx-prefund-low");
    assert_eq!(low.account.as_ref().map(|a| a.as_str()), Some("leanx-main"));
    assert_eq!(low.provider, Some(crate::domain::Provider::Leanx));
    assert_eq!(low.wallet.as_deref(), Some("prefund"));
    assert_eq!(low.currency.as_str(), "MYR");
    assert_eq!((low.field, low.condition), (Field::Available, Condition::Below), "available by default");
    assert_eq!((low.threshold.to_string(), low.clear.to_string()), ("500.00".into(), "750.00".into()));
    assert_eq!((high.field, high.condition), (Field::Total, Condition::Above));
    assert_eq!(high.clear, high.threshold, "clear defaults to the threshold");
    assert!(high.account.is_none() && high.provider.is_none() && high.wallet.is_none());
    assert!(from_toml("").unwrap().monitors.is_empty());
}

#[test]
fn each_bad_monitor_names_its_key() {
    let leanx = "[[accounts]]\nid = \"leanx-main\"\nprovider = \"leanx\"\nauth_token = \"t\"\n";
    let m = |body: &str| format!("{leanx}[[monitors]]\n{body}\n");
    let ok = "id = \"m\"\ncurrency = \"MYR\"\nbelow = \"5\"";
    let cases: Vec<(String, &str, &str)> = vec![
        (m("currency = \"MYR\"\nbelow = \"5\""), "monitors[0].id", "is required"),
        (m("id = \"Low Prefund\"\ncurrency = \"MYR\"\nbelow = \"5\""), "monitors[0].id", "a-z, 0-9"),
        (format!("{}[[monitors]]\n{ok}\n", m(ok)), "monitors[1].id", "used twice"),
        (m(&format!("{ok}\naccount = \"nobody\"")), "monitors[0].account", "`nobody` is not a configured account"),
        (m(&format!("{ok}\nprovider = \"stripe\"")), "monitors[0].provider", "unknown provider `stripe`"),
        (
            m(&format!("{ok}\naccount = \"leanx-main\"\nprovider = \"luxtak\"")),
            "monitors[0].provider",
            "would match nothing",
        ),
        (m(&format!("{ok}\nwallet = \"\"")), "monitors[0].wallet", "non-empty"),
        (m("id = \"m\"\nbelow = \"5\""), "monitors[0].currency", "is required"),
        (m("id = \"m\"\ncurrency = \"M Y R\"\nbelow = \"5\""), "monitors[0].currency", "not a currency code"),
        (
            m(&format!("{ok}\nfield = \"balance\"")),
            "monitors[0].field",
            "`available`, `pending`, `reserved` or `total`",
        ),
        (m("id = \"m\"\ncurrency = \"MYR\""), "monitors[0].below", "one of `below` and `above` is required"),
        (m(&format!("{ok}\nabove = \"9\"")), "monitors[0].above", "not both"),
        (m("id = \"m\"\ncurrency = \"MYR\"\nbelow = \"five\""), "monitors[0].below", "not an exact decimal"),
        (m("id = \"m\"\ncurrency = \"MYR\"\nbelow = 500.1"), "monitors[0].below", "written as a string"),
        (m("id = \"m\"\ncurrency = \"MYR\"\nabove = 500"), "monitors[0].above", "written as a string"),
        (m("id = \"m\"\ncurrency = \"MYR\"\nabove = \"1e30\""), "monitors[0].above", "not an exact decimal"),
        (m(&format!("{ok}\nclear = \"4.99\"")), "monitors[0].clear", "at least `below`"),
        (m("id = \"m\"\ncurrency = \"MYR\"\nabove = \"5\"\nclear = \"5.01\""), "monitors[0].clear", "at most `above`"),
        (m(&format!("{ok}\nclear = \"x\"")), "monitors[0].clear", "not an exact decimal"),
        (m(&format!("{ok}\nthreshold = \"5\"")), "monitors[0].threshold", "unknown field `threshold`"),
    ];
    for (toml, key, problem) in &cases {
        let e = error_of(toml);
        let text = e.to_string();
        assert_eq!(e.key, *key, "for {toml:?}: {text}");
        assert!(text.contains(problem), "for {toml:?}: {text:?} should mention {problem:?}");
    }
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn webhook(extra: &str) -> String {
    format!(
        "[[accounts]]\nid = \"leanx-main\"\nprovider = \"leanx\"\nauth_token = \"t\"\n\n[[webhooks]]\nid = \"bot\"\nurl = \"https://hooks.example.com/tally\"\nsecret = \"{WEBHOOK_SECRET}\"\n{extra}"
    )
}

#[test]
fn a_webhook_loads_with_the_spec_s_defaults() {
    let s = from_toml(&webhook("")).unwrap();
    let w = &s.webhooks[0];
    assert_eq!(w.id, "bot");
    assert_eq!(w.url.as_str(), "https://hooks.example.com/tally");
    assert_eq!(w.secret.expose().len(), 24);
    assert!(w.previous_secret.is_none());
    assert!(w.events.is_empty() && w.accounts.is_empty(), "every type, every account");
    assert_eq!(w.timeout, Duration::from_secs(10));
    let hours = |h: u64| Duration::from_secs(h * 3600);
    assert_eq!(
        w.retry_schedule,
        [
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(1800),
            hours(2),
            hours(5),
            hours(10),
            hours(10)
        ]
    );
    let s = from_toml(&webhook(
        "previous_secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\nevents = [\"payout.finalized\", \"webhook.test\"]\naccounts = [\"leanx-main\"]\ntimeout = \"3s\"\nretry_schedule = [\"1s\"]",
    ))
    .unwrap();
    let w = &s.webhooks[0];
    assert!(w.previous_secret.is_some());
    assert_eq!(w.events, ["payout.finalized", "webhook.test"]);
    assert_eq!(w.accounts[0].as_str(), "leanx-main");
    assert_eq!((w.timeout, w.retry_schedule.clone()), (Duration::from_secs(3), vec![Duration::from_secs(1)]));
}

#[test]
fn each_bad_webhook_key_is_named() {
    let twice = format!(
        "{}\n[[webhooks]]\nid = \"bot\"\nurl = \"https://x.example\"\nsecret = \"{WEBHOOK_SECRET}\"",
        webhook("")
    );
    let too_many = format!("retry_schedule = [{}]", vec!["\"1s\""; 21].join(", "));
    let cases: Vec<(String, &str, &str)> = vec![
        (webhook("").replace("id = \"bot\"", "id = \"Bot!\""), "webhooks[0].id", "must be 1-64 characters"),
        (twice, "webhooks[1].id", "used twice"),
        (webhook("").replace("https://hooks.example.com/tally", "/tally"), "webhooks[0].url", "absolute URL"),
        (webhook("").replace("https://hooks.example.com/tally", "ftp://x.example/"), "webhooks[0].url", "http(s)"),
        (webhook("").replace(WEBHOOK_SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "webhooks[0].secret", "whsec_"),
        (webhook("").replace(WEBHOOK_SECRET, "whsec_c2hvcnQ="), "webhooks[0].secret", "24 to 64 bytes"),
        (webhook("").replace(WEBHOOK_SECRET, "env:TALLY_TEST_SURELY_UNSET_SECRET"), "webhooks[0].secret", "is not set"),
        (webhook("").replace(&format!("secret = \"{WEBHOOK_SECRET}\"\n"), ""), "webhooks[0].secret", "is required"),
        (webhook("previous_secret = \"whsec_!!\""), "webhooks[0].previous_secret", "base64"),
        (
            webhook("events = [\"balance.changed\", \"balance.exploded\"]"),
            "webhooks[0].events[1]",
            "unknown event type `balance.exploded`",
        ),
        (webhook("events = []"), "webhooks[0].events", "at least one"),
        (webhook("accounts = [\"yedpay-hk\"]"), "webhooks[0].accounts[0]", "no account `yedpay-hk`"),
        (webhook("timeout = \"0s\""), "webhooks[0].timeout", "longer than zero"),
        (webhook("timeout = \"1h\""), "webhooks[0].timeout", "at most 5m"),
        (webhook("retry_schedule = []"), "webhooks[0].retry_schedule", "1 to 20"),
        (webhook(&too_many), "webhooks[0].retry_schedule", "1 to 20"),
        (webhook("retry_schedule = [\"5s\", \"later\"]"), "webhooks[0].retry_schedule[1]", "not a duration"),
        (webhook("retry_schedule = [\"400days\"]"), "webhooks[0].retry_schedule[0]", "at most 365 days"),
        (webhook("secrets = \"x\""), "webhooks[0].secrets", "unknown field"),
    ];
    for (toml, key, problem) in &cases {
        let e = error_of(toml);
        let text = e.to_string();
        assert_eq!(e.key, *key, "for {toml:?}: {text}");
        assert!(text.contains(problem), "for {toml:?}: {text:?} should mention {problem:?}");
    }
}

#[test]
fn webhook_secrets_and_url_credentials_never_reach_debug_output_or_errors() {
    let s = from_toml(&webhook("previous_secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"")).unwrap();
    let debug = format!("{s:?}");
    for secret in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "C2FVsBQIhrscChlQIMV"] {
        assert!(!debug.contains(secret), "Debug output leaks {secret}");
    }
    let bad = webhook("").replace(WEBHOOK_SECRET, "whsec_hunter2hunter2");
    assert!(!error_of(&bad).to_string().contains("hunter2"));
    let bad = webhook("").replace("https://hooks.example.com/tally", "gopher://u:hunter2@x");
    assert!(!error_of(&bad).to_string().contains("hunter2"));
    let s = from_toml(
        &webhook("").replace("https://hooks.example.com/tally", "https://u:hunter2@x.example/h?token=hunter3"),
    )
    .unwrap();
    let shown = s.webhooks[0].shown_url();
    assert!(!shown.contains("hunter2") && !shown.contains("hunter3") && shown.contains("x.example/h"), "{shown}");
}

#[test]
fn reporting_loads_rates_from_the_config_and_the_rates_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rates.csv");
    std::fs::write(&file, "date,currency,rate\r\n2026-11-29,MYR,0.2250\n2026-11-28,BRL,0.1730\n").unwrap();
    let s = from_toml(&format!(
        "[reporting]\ncurrency = \"usd\"\nscale = 4\nrates = [{{ currency = \"MYR\", rate = \"0.2241\", as_of = \"2026-11-28\" }}]\nrates_file = \"{}\"\n",
        file.display()
    ))
    .unwrap();
    let r = s.reporting.expect("[reporting] is set");
    assert_eq!((r.currency.as_str(), r.scale, r.max_rate_age), ("USD", 4, Duration::from_secs(7 * 86_400)));
    let myr = "MYR".parse().unwrap();
    assert_eq!(r.rate_on(&myr, "2026-11-28".parse().unwrap()).unwrap().rate.to_string(), "0.2241");
    assert_eq!(r.rate_on(&myr, "2026-11-30".parse().unwrap()).unwrap().rate.to_string(), "0.2250", "from the file");
    assert!(r.rate_on(&"BRL".parse().unwrap(), "2026-11-28".parse().unwrap()).is_some());
    assert!(from_toml("").unwrap().reporting.is_none());
}

#[test]
fn each_bad_reporting_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let rate = |item: &str| format!("[reporting]\ncurrency = \"USD\"\nrates = [{{ {item} }}]\n");
    let with_file = |path: String| format!("[reporting]\ncurrency = \"USD\"\nrates_file = \"{path}\"\n");
    let myr = "currency = \"MYR\", as_of = \"2026-11-28\"";
    let cases: Vec<(String, &str, &str)> = vec![
        ("[reporting]\nscale = 2".into(), "reporting.currency", "is required"),
        ("[reporting]\ncurrency = \"U S D\"".into(), "reporting.currency", "not a currency code"),
        ("[reporting]\ncurrency = \"USD\"\nscale = 13".into(), "reporting.scale", "from 0 to 12"),
        ("[reporting]\ncurrency = \"USD\"\nmax_rate_age = \"soon\"".into(), "reporting.max_rate_age", "not a duration"),
        ("[reporting]\ncurrency = \"USD\"\nrate = []".into(), "reporting.rate", "unknown field `rate`"),
        (rate("currency = \"M-R\", rate = \"1\", as_of = \"2026-11-28\""), "reporting.rates[0].currency", "not a currency code"),
        (rate("rate = \"1\", as_of = \"2026-11-28\""), "reporting.rates[0].currency", "is required"),
        (rate(&format!("{myr}, rate = \"0\"")), "reporting.rates[0].rate", "above zero"),
        (rate(&format!("{myr}, rate = \"-0.2241\"")), "reporting.rates[0].rate", "above zero"),
        (rate(&format!("{myr}, rate = \"abc\"")), "reporting.rates[0].rate", "not an exact decimal"),
        (rate(&format!("{myr}, rate = 0.2241")), "reporting.rates[0].rate", "written as a string"),
        (rate(myr), "reporting.rates[0].rate", "is required"),
        (rate("currency = \"MYR\", rate = \"0.2\", as_of = \"28.11.2026\""), "reporting.rates[0].as_of", "not a date"),
        (rate("currency = \"usd\", rate = \"1\", as_of = \"2026-11-28\""), "reporting.rates[0].currency", "reporting currency itself"),
        (
            "[reporting]\ncurrency = \"USD\"\nrates = [{ currency = \"MYR\", rate = \"0.2\", as_of = \"2026-11-28\" }, { currency = \"MYR\", rate = \"0.3\", as_of = \"2026-11-28\" }]".into(),
            "reporting.rates[1].as_of",
            "two rates for 2026-11-28",
        ),
        (with_file(dir.path().join("missing.csv").display().to_string()), "reporting.rates_file", "cannot read"),
        (with_file(file("a.csv", "2026-11-28,MYR,0.2\n2026-11-28,MYR,0.3\n")), "reporting.rates_file", "line 2, as_of: `MYR` has two rates"),
        (with_file(file("b.csv", "2026-11-28,XX X,0.2\n")), "reporting.rates_file", "line 1, currency"),
        (with_file(file("c.csv", "2026-11-28,MYR,0\n")), "reporting.rates_file", "line 1, rate"),
        (with_file(file("d.csv", "2026-11-28,MYR\n")), "reporting.rates_file", "line 1"),
        (with_file(file("e.csv", "2026-11-28,USD,1\n")), "reporting.rates_file", "reporting currency itself"),
    ];
    for (toml, key, problem) in &cases {
        let e = error_of(toml);
        let text = e.to_string();
        assert_eq!(e.key, *key, "for {toml:?}: {text}");
        assert!(text.contains(problem), "for {toml:?}: {text:?} should mention {problem:?}");
    }
}
