//! `deploy/prometheus` and `deploy/grafana`: every PromQL expression of the alert rules and of
//! the Grafana board parses (with `promql-parser`), names only series and labels that a real
//! tally exports (read from a scrape of a running app with an account, a monitor and a
//! webhook), and never aggregates `tally_balance` across currencies. The rules' behaviour is
//! tested by `promtool test rules` in `.ci/run`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use promql_parser::parser::{self, Expr, LabelModifier};

use crate::helpers::{self, TestApp, TestDb};

/// Labels Prometheus itself puts on every series it scrapes: its target's, not tally's.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Series whose amounts are money: an aggregation over one must keep `currency`.
const MONEY: [&str; 1] = ["tally_balance"];

type Exported = BTreeMap<String, BTreeSet<String>>;

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

/// The series and label names of a real scrape of tally with an account that has a figure, a
/// monitor and a webhook (names no other test uses: metrics are process-wide).
async fn exported() -> Exported {
    let upstream = helpers::leanx(helpers::ok("100.00", "2.50")).await;
    let db = TestDb::sqlite();
    let extra = format!(
        "[[accounts]]\nid = \"board-check\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\nmax_retries = 0\n\
         [[monitors]]\nid = \"board-check-low\"\naccount = \"board-check\"\nwallet = \"prefund\"\ncurrency = \"MYR\"\nbelow = \"1\"\n\
         [[webhooks]]\nid = \"board-check\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        upstream.uri()
    );
    let app = TestApp::spawn(db.url(), &extra).await;
    assert_eq!(app.get("/balances?max_age=0").await.status(), 200);
    let text = app.get("/metrics").await.text().await.unwrap();
    app.stop().await;
    parse_exposition(&text)
}

/// Series name to label names, from the Prometheus text format.
fn parse_exposition(text: &str) -> Exported {
    let label = regex::Regex::new(r#"([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*""#).unwrap();
    let mut series = Exported::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            let close = line.rfind('}').expect("a closing brace");
            labels.extend(label.captures_iter(&line[end..close]).map(|c| c[1].to_owned()));
        }
    }
    series
}

/// What an expression's result carries: its label names, and whether it holds money.
struct Shape {
    labels: BTreeSet<String>,
    money: bool,
}

/// Checks `expr` (from `origin`) against `exported`, pushing what is wrong to `problems`.
fn check(origin: &str, expr: &str, exported: &Exported, problems: &mut Vec<String>) {
    match parser::parse(expr) {
        Ok(ast) => {
            walk(&ast, exported, &mut |p| problems.push(format!("{origin}: {p}\n    in {expr}")));
        }
        Err(e) => problems.push(format!("{origin}: does not parse: {e}\n    in {expr}")),
    }
}

fn walk(e: &Expr, exported: &Exported, problem: &mut dyn FnMut(String)) -> Shape {
    let none = || Shape { labels: BTreeSet::new(), money: false };
    match e {
        Expr::VectorSelector(vs) => selector(vs, exported, problem),
        Expr::MatrixSelector(ms) => selector(&ms.vs, exported, problem),
        Expr::Aggregate(agg) => {
            let inner = walk(&agg.expr, exported, problem);
            if let Some(param) = &agg.param {
                walk(param, exported, problem);
            }
            let op = agg.op.to_string();
            let labels: BTreeSet<String> = match &agg.modifier {
                Some(LabelModifier::Include(by)) => by.labels.iter().cloned().collect(),
                Some(LabelModifier::Exclude(without)) => {
                    inner.labels.iter().filter(|l| !without.labels.contains(l)).cloned().collect()
                }
                None => BTreeSet::new(),
            };
            if let Some(modifier) = &agg.modifier {
                for l in &modifier.labels().labels {
                    if !inner.labels.contains(l) {
                        problem(format!("{op} groups by `{l}`, which what it aggregates does not carry"));
                    }
                }
            }
            if inner.money && !labels.contains("currency") {
                problem(format!("{op} over {MONEY:?} drops `currency`: it would add up different currencies"));
            }
            Shape { labels, money: inner.money }
        }
        Expr::Binary(b) => {
            let (lhs, rhs) = (walk(&b.lhs, exported, problem), walk(&b.rhs, exported, problem));
            let both: BTreeSet<String> = lhs.labels.union(&rhs.labels).cloned().collect();
            if let Some(matching) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                for l in &matching.labels().labels {
                    if !both.contains(l) {
                        problem(format!("on/ignoring names `{l}`, which neither side carries"));
                    }
                }
            }
            Shape { labels: both, money: lhs.money || rhs.money }
        }
        Expr::Call(call) => {
            let shapes: Vec<Shape> = call.args.args.iter().map(|a| walk(a, exported, problem)).collect();
            if matches!(call.func.name, "label_replace" | "label_join") {
                problem(format!("{} makes a label tally does not export", call.func.name));
            }
            Shape {
                labels: shapes.iter().flat_map(|s| s.labels.iter().cloned()).collect(),
                money: shapes.iter().any(|s| s.money),
            }
        }
        Expr::Unary(u) => walk(&u.expr, exported, problem),
        Expr::Paren(p) => walk(&p.expr, exported, problem),
        Expr::Subquery(s) => walk(&s.expr, exported, problem),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => none(),
        Expr::Extension(_) => {
            problem("an extension node".to_owned());
            none()
        }
    }
}

fn selector(vs: &parser::VectorSelector, exported: &Exported, problem: &mut dyn FnMut(String)) -> Shape {
    let name = vs.name.clone().or_else(|| {
        vs.matchers.matchers.iter().find(|m| m.name == "__name__" && m.op.to_string() == "=").map(|m| m.value.clone())
    });
    let Some(name) = name else {
        problem("a selector without a series name".to_owned());
        return Shape { labels: BTreeSet::new(), money: false };
    };
    let Some(labels) = exported.get(&name) else {
        problem(format!("`{name}` is not a series tally exports"));
        return Shape { labels: BTreeSet::new(), money: false };
    };
    let mut carried: BTreeSet<String> = labels.clone();
    carried.extend(TARGET_LABELS.map(str::to_owned));
    let matchers = vs.matchers.matchers.iter().chain(vs.matchers.or_matchers.iter().flatten());
    for m in matchers.filter(|m| m.name != "__name__") {
        if !carried.contains(&m.name) {
            problem(format!("`{name}` has no label `{}` (it has {labels:?})", m.name));
        }
    }
    Shape { labels: carried, money: MONEY.contains(&name.as_str()) }
}

/// The `expr` of every rule of a Prometheus rule file, each on its own line (the test fails on
/// a block scalar rather than read half an expression).
fn rule_expressions(yaml: &str) -> Sourced {
    let mut alert = String::new();
    let mut found = Vec::new();
    for line in yaml.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        } else if let Some(expr) = line.strip_prefix("expr:") {
            let expr = expr.trim();
            assert!(!expr.starts_with(['|', '>']) && !expr.is_empty(), "{alert}: write expr on one line");
            let unquoted = expr.strip_prefix('"').and_then(|e| e.strip_suffix('"')).unwrap_or(expr);
            found.push((alert.clone(), unquoted.to_owned()));
        }
    }
    let alerts = yaml.lines().filter(|l| l.trim().starts_with("- alert:")).count();
    assert_eq!(found.len(), alerts, "one expr per alert");
    found
}

/// Where an expression comes from (a panel's title, an alert's name) and the expression.
type Sourced = Vec<(String, String)>;

/// A `label_values(selector, label)` variable: its name, selector and label.
type Variable = (String, String, String);

/// The PromQL of a Grafana board: each target's `expr`, and each variable's.
fn board_expressions(board: &serde_json::Value) -> (Sourced, Vec<Variable>) {
    fn targets(v: &serde_json::Value, title: &str, out: &mut Sourced) {
        match v {
            serde_json::Value::Object(map) => {
                let title = map.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    out.push((title.to_owned(), expr.to_owned()));
                }
                for (key, child) in map {
                    if key != "templating" {
                        targets(child, title, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| targets(i, title, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    targets(&board["panels"], "panels", &mut exprs);
    let call = regex::Regex::new(r"^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$").unwrap();
    let mut variables = Vec::new();
    for var in board["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
        let query = var["query"]["query"].as_str().or(var["query"].as_str()).expect("a query");
        let c = call
            .captures(query)
            .unwrap_or_else(|| panic!("variable {}: not label_values(selector, label)", var["name"]));
        variables.push((var["name"].as_str().unwrap().to_owned(), c[1].to_owned(), c[2].to_owned()));
    }
    (exprs, variables)
}

#[tokio::test]
async fn every_promql_expression_in_deploy_names_only_what_tally_exports_and_keeps_currencies_apart() {
    let exported = exported().await;
    for series in ["tally_balance", "tally_monitor_firing", "tally_webhook_pending", "tally_account_up"] {
        assert!(exported.contains_key(series), "the scrape has {series}: {:?}", exported.keys());
    }
    let mut problems = Vec::new();

    let rules = rule_expressions(&read("deploy/prometheus/tally-rules.yml"));
    assert_eq!(rules.len(), 5, "monitor firing, stale figures, account down, webhook backlog, tally absent");
    for (alert, expr) in &rules {
        check(&format!("rule {alert}"), expr, &exported, &mut problems);
    }

    let board: serde_json::Value = serde_json::from_str(&read("deploy/grafana/tally.json")).unwrap();
    let (exprs, variables) = board_expressions(&board);
    assert!(exprs.len() >= 12, "the board's targets are read: {exprs:?}");
    for (panel, expr) in &exprs {
        check(&format!("panel {panel:?}"), expr, &exported, &mut problems);
    }
    assert!(!variables.is_empty());
    for (name, selector, label) in &variables {
        check(&format!("variable {name}"), selector, &exported, &mut problems);
        if let Ok(Expr::VectorSelector(vs)) = parser::parse(selector) {
            let series = vs.name.unwrap_or_default();
            if !exported.get(&series).is_some_and(|l| l.contains(label)) {
                problems.push(format!("variable {name}: `{series}` has no label `{label}`"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker itself: each of these must be refused, so a green test means something.
#[test]
fn the_check_refuses_unknown_series_unknown_labels_and_sums_across_currencies() {
    let exported: Exported = [
        ("tally_balance", &["account", "provider", "wallet", "currency", "field"][..]),
        ("tally_webhook_pending", &["webhook"][..]),
    ]
    .into_iter()
    .map(|(name, labels)| (name.to_owned(), labels.iter().map(|l| l.to_string()).collect()))
    .collect();
    let refused = |expr: &str| {
        let mut problems = Vec::new();
        check("probe", expr, &exported, &mut problems);
        problems
    };
    for bad in [
        "sum(tally_balance)",
        "sum by (provider) (tally_balance)",
        "sum without (currency) (tally_balance)",
        "sum by (provider) (max by (account, provider, wallet, currency) (tally_balance > -Inf))",
        "avg(tally_balance{currency=\"MYR\"})",
        "tally_balanse",
        "tally_balance{wallet_id=\"x\"}",
        "max by (queue) (tally_webhook_pending)",
        "{__name__=~\"tally_.*\"}",
        "sum by (currency) (tally_balance",
    ] {
        assert!(!refused(bad).is_empty(), "{bad} passes the check");
    }
    for good in [
        "sum by (currency) (max by (account, provider, wallet, currency) (tally_balance{field=\"total\"} > -Inf))",
        "sum by (provider, currency) (tally_balance)",
        "max without (instance, job) (tally_balance)",
        "max by (webhook) (tally_webhook_pending{job=\"tally\"}) > 3",
    ] {
        assert_eq!(refused(good), Vec::<String>::new(), "{good}");
    }
}
