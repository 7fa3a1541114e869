//! `tally demo` end to end: the demo on port 0, every account fresh with exact figures, and a
//! demo payout of each status read back normalized.

use serde_json::Value;
use tally::demo::Demo;

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap())
}

#[tokio::test]
async fn the_demo_serves_every_account_fresh_and_every_payout_status() {
    let demo = Demo::build("127.0.0.1:0".parse().unwrap(), None).await.unwrap();
    let base = format!("http://{}", demo.local_addr());
    assert!(demo.banner().contains(&format!("curl -s {base}/balances")));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(demo.run_until(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();

    let (status, body) = get(&http, format!("{base}/balances")).await;
    assert_eq!(status, 200);
    assert_eq!(body["complete"], true, "{body}");
    let accounts: Vec<&str> =
        body["accounts"].as_array().unwrap().iter().map(|a| a["account"].as_str().unwrap()).collect();
    assert_eq!(accounts, ["leanx-main", "leanx-ops", "luxtak-latam", "ibanera-treasury", "yedpay-hk"]);
    assert!(body["accounts"].as_array().unwrap().iter().all(|a| a["status"] == "fresh"));
    let line = |account: &str, wallet: &str, currency: &str| {
        body["balances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["account"] == account && l["wallet"] == wallet && l["currency"] == currency)
            .unwrap_or_else(|| panic!("{account}/{wallet}/{currency}"))
            .clone()
    };
    // Exact figures as the emulators start (their drift begins after a minute).
    assert_eq!(line("leanx-main", "prefund", "MYR")["available"], "393.63");
    assert_eq!(line("yedpay-hk", "JwoMPpKy", "HKD")["total"], "17.4781");
    assert_eq!(line("ibanera-treasury", "1002", "USDC")["available"], "1520.12345678");
    assert_eq!(line("ibanera-treasury", "1004", "GBP")["blocked"], true);
    assert_eq!(line("luxtak-latam", "main", "BRL")["total"], "99002.23");
    let myr = body["totals"].as_array().unwrap().iter().find(|t| t["currency"] == "MYR").unwrap();
    assert_eq!(myr["entries"], 4, "two LeanX accounts, two pools each");

    for (id, status) in [
        ("PAYOUT-A9D5%3A174307-LEANX", "succeeded"),
        ("INVOICE2001", "pending"),
        ("INVOICE2002", "awaiting_approval"),
        ("INVOICE2003", "failed"),
        ("LUX-ORDER-1001", "pending"),
        ("LUX-ORDER-1002", "processing"),
        ("LUX-ORDER-1003", "succeeded"),
        ("LUX-ORDER-1004", "failed"),
        ("LUX-ORDER-1005", "reversed"),
        ("STL-0001", "pending"),
        ("STL-0002", "processing"),
        ("STL-0003", "succeeded"),
        ("STL-0004", "failed"),
        ("STL-0005", "cancelled"),
        ("STL-0006", "cancelled"),
    ] {
        let (code, payout) = get(&http, format!("{base}/payouts/{id}")).await;
        assert_eq!((code, payout["status"].as_str()), (200, Some(status)), "{id}: {payout}");
    }
    let (_, failed) = get(&http, format!("{base}/payouts/INVOICE2003")).await;
    assert_eq!(failed["failure"]["code"], "77");
    assert_eq!(failed["amount"], "75.50");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
