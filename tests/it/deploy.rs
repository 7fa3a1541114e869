//! The Dockerfile and docker-compose.yml cannot be built here (no Docker engine), so these
//! tests hold them to the config contract: every `TALLY__` variable is a real config key, the
//! listen port is the one exposed and published, and health checks call `/healthz`.

use std::collections::BTreeMap;
use std::path::Path;

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

/// Checks `TALLY__SECTION__KEY=value` pairs by loading them as TOML: unknown keys and bad
/// values fail exactly as they would at start-up.
fn assert_valid_overrides(source: &str, vars: &BTreeMap<String, String>) {
    let mut toml = String::new();
    for (name, value) in vars.iter().filter(|(k, _)| k.starts_with("TALLY__")) {
        let parts: Vec<&str> = name.trim_start_matches("TALLY__").split("__").collect();
        assert_eq!(parts.len(), 2, "{source}: {name} is not TALLY__SECTION__KEY");
        // Compose interpolates ${VAR}; any value of the right shape will do here.
        let value = value.replace("${POSTGRES_PASSWORD}", "pw");
        toml.push_str(&format!("[{}]\n{} = {:?}\n", parts[0].to_lowercase(), parts[1].to_lowercase(), value));
    }
    tally::config::from_toml(&toml).unwrap_or_else(|e| panic!("{source}: {e}"));
}

fn dockerfile_env() -> BTreeMap<String, String> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let line = text.lines().find(|l| l.starts_with("ENV ")).expect("an ENV line");
    line.trim_start_matches("ENV ")
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_dockerfile_matches_the_config_contract() {
    let env = dockerfile_env();
    assert_valid_overrides("Dockerfile", &env);
    let port = env["TALLY__SERVER__LISTEN"].rsplit(':').next().unwrap().to_owned();
    let text = read("Dockerfile");
    assert!(text.contains(&format!("EXPOSE {port}")), "EXPOSE the listen port {port}");
    assert!(text.contains(&format!("http://127.0.0.1:{port}/healthz")), "HEALTHCHECK calls /healthz");
    assert!(text.contains("USER tally"), "runs as a non-root user");
    assert!(text.contains("COPY migrations migrations"), "migrations are embedded at build time");
}

#[test]
fn the_compose_file_matches_the_config_contract() {
    let compose: serde_json::Value = yaml_serde::from_str(&read("docker-compose.yml")).unwrap();
    let tally = &compose["services"]["tally"];
    let env: BTreeMap<String, String> =
        serde_json::from_value(tally["environment"].clone()).expect("environment as a map of strings");
    assert_valid_overrides("docker-compose.yml", &env);
    assert!(env["TALLY__STORE__URL"].starts_with("postgres://"), "compose runs on PostgreSQL");
    assert!(env["TALLY__STORE__URL"].contains("@postgres:5432/"), "the database service's name and port");
    // A password in the URL would need percent-encoding (`@`, `/`, `%`): it goes to the driver
    // through PGPASSWORD, as the database service gets it.
    assert_eq!(env["TALLY__STORE__URL"], "postgres://tally@postgres:5432/tally", "no password in the URL");
    assert_eq!(env["PGPASSWORD"], "${POSTGRES_PASSWORD}", "the database's password, from .env");
    let port = env["TALLY__SERVER__LISTEN"].rsplit(':').next().unwrap().to_owned();
    let ports: Vec<String> = serde_json::from_value(tally["ports"].clone()).unwrap();
    assert!(ports.iter().all(|p| p.ends_with(&format!(":{port}"))), "published ports map to {port}: {ports:?}");
    assert_eq!(tally["depends_on"]["postgres"]["condition"], "service_healthy");
    assert!(tally["healthcheck"]["test"].to_string().contains("/healthz"));
    assert!(compose["services"]["postgres"]["healthcheck"].is_object());
    assert_eq!(tally["env_file"], ".env");

    // Every ${VAR} compose needs is listed in .env.example, and .env itself is not committed.
    let example = read(".env.example");
    let compose_text = read("docker-compose.yml");
    for var in compose_text.split("${").skip(1).map(|s| s.split(['}', ':']).next().unwrap()) {
        assert!(example.lines().any(|l| l.starts_with(&format!("{var}="))), "{var} missing from .env.example");
    }
    assert!(read(".gitignore").lines().any(|l| l == "/.env"));
}

#[test]
fn the_example_config_is_valid_given_its_environment_and_a_key_of_ones_own() {
    // The example references env:NAME secrets; check its shape with literal stand-ins.
    let text = read("tally.example.toml").replace("\"env:", "\"stand-in-for-");
    let text = text.replace("stand-in-for-IBANERA_TOTP_SECRET", "JBSWY3DPEHPK3PXP");
    // It ships no working key: its placeholder stops start-up, naming the key to fill in.
    let e = tally::config::from_toml(&text).expect_err("the placeholder digest is refused");
    assert_eq!(e.key, "auth.api_keys[0].sha256");
    let text = text.replace("<digest from tally hash-key>", &tally::http::digest_hex("an operator's own key"));
    let settings = tally::config::from_toml(&text).unwrap_or_else(|e| panic!("tally.example.toml: {e}"));
    assert_eq!(settings.accounts.len(), 4);
}
