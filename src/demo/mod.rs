//! `tally demo`: the emulators on an ephemeral loopback port and tally in front of them with
//! the demo accounts and a SQLite store in a temporary directory: the whole API with no
//! credentials. A demo monitor watches the LeanX prefund pool, and a demo webhook delivers
//! alerts, payout and account events to a receiver inside the demo ([`receiver`]), which
//! verifies each signature and prints it.

pub mod receiver;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;

use crate::app::Application;
use crate::emulator::{Emulator, EmulatorOptions};

/// The demo monitor: `leanx-main`'s prefund pool (about 393 MYR in the demo data) below 300.00,
/// clear again at 350.00.
const DEMO_MONITOR: &str = "[[monitors]]\nid = \"leanx-prefund-low\"\naccount = \"leanx-main\"\nwallet = \"prefund\"\n\
                            currency = \"MYR\"\nbelow = \"300.00\"\nclear = \"350.00\"\n";

/// What the demo webhook is sent: every event but `balance.changed` (the demo figures drift
/// every minute, which would drown the rest).
const DEMO_WEBHOOK_EVENTS: &str = r#"["balance.threshold_crossed", "balance.threshold_cleared", "account.unhealthy", "account.recovered", "payout.status_changed", "payout.finalized", "webhook.test"]"#;

pub struct Demo {
    app: Application,
    emulator: Emulator,
    receiver: receiver::Receiver,
    /// The temporary directory holding the store (none with `--store`), removed when the demo
    /// ends or fails to start.
    _scratch: Option<Scratch>,
    store: PathBuf,
    exposed: bool,
}

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Demo {
    pub async fn build(listen: SocketAddr, store: Option<PathBuf>) -> Result<Self, String> {
        Self::build_with(listen, store, EmulatorOptions::default(), false).await
    }

    /// Like [`build`](Self::build), with the emulators' options (faults), and whether the demo
    /// receiver prints what it receives (as `tally demo` does).
    pub async fn build_with(
        listen: SocketAddr,
        store: Option<PathBuf>,
        options: EmulatorOptions,
        print_deliveries: bool,
    ) -> Result<Self, String> {
        let emulator = Emulator::start(
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot start the emulators: {e}"))?,
            options,
        )
        .await
        .map_err(|e| format!("cannot start the emulators: {e}"))?;
        let receiver = receiver::Receiver::start(
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot start the demo receiver: {e}"))?,
            print_deliveries,
        )
        .map_err(|e| format!("cannot start the demo receiver: {e}"))?;
        let (store, scratch) = match store {
            Some(path) => (path, None),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "tally-demo-{}-{:08x}",
                    std::process::id(),
                    rand::random::<u32>()
                ));
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                (dir.join("tally.db"), Some(Scratch(dir)))
            }
        };
        // The demo serves emulated data only, so it may listen beyond loopback without keys.
        let exposed = !listen.ip().is_loopback();
        let toml = format!(
            "[server]\nlisten = \"{listen}\"\n\n[store]\nurl = \"sqlite://{}\"\n\n[auth]\nallow_anonymous = {exposed}\n\n{}\n\
             {DEMO_MONITOR}\n[[webhooks]]\nid = \"demo-receiver\"\nurl = \"{}\"\nsecret = \"{}\"\nevents = {DEMO_WEBHOOK_EVENTS}\n",
            store.display(),
            emulator.demo_accounts_toml(),
            receiver.url(),
            receiver.secret,
        );
        let settings = crate::config::from_toml(&toml).map_err(|e| e.to_string())?;
        let app = Application::build(settings).await.map_err(|e| e.to_string())?;
        // LeanX and Luxtak call a merchant back when a payout settles: here, at tally's callback route.
        let mut tally = app.local_addr();
        if tally.ip().is_unspecified() {
            tally.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        emulator.send_callbacks_to(&format!("http://{tally}"));
        Ok(Self { app, emulator, receiver, _scratch: scratch, store, exposed })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.app.local_addr()
    }

    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// What the demo receiver has been delivered.
    pub fn inbox(&self) -> std::sync::Arc<receiver::Inbox> {
        std::sync::Arc::clone(&self.receiver.inbox)
    }

    /// What to print at start: where things are and what to try.
    pub fn banner(&self) -> String {
        let url = format!("http://{}", self.local_addr());
        format!(
            "tally demo: the dashboard at {url}/dashboard (open it in a browser)\n\
             the API on {url}, five demo accounts against provider emulators at http://{emu}\n\
             store: {store}\n\n\
             try:\n\
             \x20 curl -s {url}/balances\n\
             \x20 curl -s '{url}/balances?currency=MYR&max_age=0'\n\
             \x20 curl -s {url}/payouts/PAYOUT-A9D5%3A174307-LEANX\n\
             \x20 curl -s {url}/payouts/LUX-ORDER-1004\n\
             \x20 curl -s '{url}/balances/history?account=leanx-main'\n\
             \x20 curl -s {url}/accounts\n\
             \x20 {url}/docs in a browser: the interactive API page\n\n\
             a monitor, leanx-prefund-low, fires when leanx-main's prefund pool falls below 300.00 MYR\n\
             and clears at 350.00; alerts go to the demo webhook receiver, which prints them below:\n\
             \x20 curl -X PUT -d '{{\"value\":\"120.00\"}}' http://{emu}/_control/leanx/prefund\n\
             \x20 curl -s '{url}/balances?account=leanx-main&max_age=0'    # refetch: `alerts` lists it\n\
             \x20 curl -s {url}/monitors\n\
             \x20 curl -s '{url}/events?type=balance.threshold_crossed,balance.threshold_cleared'\n\
             \x20 curl -X DELETE http://{emu}/_control/leanx/prefund          # back to ~393 MYR: it clears\n\
             \x20 curl -s {url}/webhooks\n\
             \x20 curl -s -X POST {url}/webhooks/demo-receiver/test\n\n\
             a pending LeanX payout: looking it up watches it; LeanX calls back on success only\n\
             (signed; tally verifies it), so a failure is found by the watch (first check after 30 s):\n\
             \x20 curl -s {url}/payouts/PAYOUT-B7E1%3A091512-LEANX\n\
             \x20 curl -X PUT -d '{{\"status\":\"SUCCESS\"}}' http://{emu}/_control/leanx/payouts/PAYOUT-B7E1%3A091512-LEANX\n\
             \x20 curl -X PUT -d '{{\"status\":\"FAILED\"}}' http://{emu}/_control/leanx/payouts/PAYOUT-C2F4%3A101030-LEANX\n\
             \x20 curl -s '{url}/payouts?account=leanx-main' ; curl -s {url}/callbacks\n\n\
             faults: curl -X PUT -d '{{\"fail_next\":3}}' http://{emu}/_control/faults/leanx\n\
             {exposed}Ctrl-C stops everything.",
            emu = self.emulator.addr(),
            store = self.store.display(),
            exposed =
                if self.exposed { "note: listening beyond loopback without API keys (demo data only)\n" } else { "" },
        )
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
        let result = self.app.run_until(shutdown).await.map_err(|e| format!("server error: {e}"));
        self.emulator.shutdown().await;
        result
    }
}
