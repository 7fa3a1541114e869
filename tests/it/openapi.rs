//! The OpenAPI document is generated from the code; these tests keep the committed copies in
//! step with it, so every API change shows up in review. `UPDATE_OPENAPI=1 cargo test openapi`
//! rewrites them.

use std::path::Path;

fn check(path: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the spec the code generates; run `UPDATE_OPENAPI=1 cargo test openapi` and review the diff",
        path.display()
    );
}

#[test]
fn openapi_yaml_is_what_tally_openapi_prints() {
    check("openapi.yaml", &tally::http::openapi_text(true));
}

#[test]
fn the_json_spec_is_pinned() {
    check("tests/snapshots/openapi.json", &tally::http::openapi_text(false));
}

#[test]
fn every_route_documents_its_errors_as_problem_json() {
    let doc = tally::http::openapi();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                // Responses shared by every route are described once and referenced.
                let response = match response["$ref"].as_str() {
                    Some(r) => &doc["components"]["responses"][r.trim_start_matches("#/components/responses/")],
                    None => response,
                };
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status} must document a problem+json body"
                    );
                    assert!(!response["description"].as_str().unwrap_or_default().is_empty());
                }
            }
        }
    }
}
