//! `tally demo`: the emulators on an ephemeral loopback port and tally in front of them with
//! the demo accounts and a SQLite store in a temporary directory: the whole API with no
//! credentials.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;

use crate::app::Application;
use crate::emulator::{Emulator, EmulatorOptions};

pub struct Demo {
    app: Application,
    emulator: Emulator,
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
        Self::build_with(listen, store, EmulatorOptions::default()).await
    }

    /// Like [`build`](Self::build), with the emulators' options (faults).
    pub async fn build_with(
        listen: SocketAddr,
        store: Option<PathBuf>,
        options: EmulatorOptions,
    ) -> Result<Self, String> {
        let emulator = Emulator::start(
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot start the emulators: {e}"))?,
            options,
        )
        .await
        .map_err(|e| format!("cannot start the emulators: {e}"))?;
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
            "[server]\nlisten = \"{listen}\"\n\n[store]\nurl = \"sqlite://{}\"\n\n[auth]\nallow_anonymous = {exposed}\n\n{}",
            store.display(),
            emulator.demo_accounts_toml()
        );
        let settings = crate::config::from_toml(&toml).map_err(|e| e.to_string())?;
        let app = Application::build(settings).await.map_err(|e| e.to_string())?;
        Ok(Self { app, emulator, _scratch: scratch, store, exposed })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.app.local_addr()
    }

    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// What to print at start: where things are and what to try.
    pub fn banner(&self) -> String {
        let url = format!("http://{}", self.local_addr());
        format!(
            "tally demo: the API on {url}, five demo accounts against provider emulators at http://{emu}\n\
             store: {store}\n\n\
             try:\n\
             \x20 curl -s {url}/balances\n\
             \x20 curl -s '{url}/balances?currency=MYR&max_age=0'\n\
             \x20 curl -s {url}/payouts/PAYOUT-A9D5%3A174307-LEANX\n\
             \x20 curl -s {url}/payouts/LUX-ORDER-1004\n\
             \x20 curl -s '{url}/balances/history?account=leanx-main'\n\
             \x20 curl -s {url}/accounts\n\
             \x20 {url}/docs in a browser: the interactive API page\n\n\
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
