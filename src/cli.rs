//! The `tally` command line.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::app::{Application, shutdown_signal};
use crate::config::{self, Settings, Source};

#[derive(Parser, Debug)]
#[command(name = "tally", version, about = "Balances and payout status across payment providers")]
pub struct Cli {
    /// Config file (TOML). Default: $TALLY_CONFIG, else ./tally.toml, else built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the config file and exit.
    CheckConfig,
    /// Read an API key from stdin and print its SHA-256 digest for `auth.api_keys`.
    HashKey,
    /// Run the service in front of built-in provider emulators, with demo accounts and a
    /// temporary SQLite store: the whole API with no credentials.
    Demo {
        /// Where the API listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Keep the store in this SQLite file instead of a temporary one.
        #[arg(long, value_name = "PATH")]
        store: Option<PathBuf>,
        /// Inject faults into the emulators, as `tally emulate --fault`.
        #[arg(long = "fault", value_name = "PROVIDER=SPEC")]
        faults: Vec<String>,
    },
    /// Run only the provider emulators (base URLs http://ADDR/{leanx,luxtak,ibanera,yedpay}).
    Emulate {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// Inject faults: PROVIDER=latency=100ms,jitter=20ms,error_rate=0.1,rate_limit=5,hang,malformed,fail_next=3
        #[arg(long = "fault", value_name = "PROVIDER=SPEC")]
        faults: Vec<String>,
    },
    /// Print the OpenAPI document.
    Openapi {
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
}

impl Command {
    /// The name of a command that reads no config file.
    fn without_config(&self) -> Option<&'static str> {
        match self {
            Self::Serve | Self::Migrate | Self::CheckConfig => None,
            Self::HashKey => Some("hash-key"),
            Self::Demo { .. } => Some("demo"),
            Self::Emulate { .. } => Some("emulate"),
            Self::Openapi { .. } => Some("openapi"),
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Json,
    Yaml,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tally: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let command = cli.command.unwrap_or(Command::Serve);
    // `--config` is global so that it may stand anywhere on the line, but only the commands
    // that read a config use it: elsewhere it would be silently ignored.
    if let (Some(_), Some(name)) = (&cli.config, command.without_config()) {
        return Err(format!(
            "--config is not used by `tally {name}`{}",
            if name == "demo" { " (the demo makes its own config; `tally serve --config` runs yours)" } else { "" }
        ));
    }
    match command {
        Command::Serve => runtime()?.block_on(serve(load(cli.config)?)),
        Command::Migrate => runtime()?.block_on(migrate(load(cli.config)?)),
        Command::CheckConfig => {
            let settings = load(cli.config)?;
            // What serve would refuse before binding, refused here too (no connection is made).
            runtime()?.block_on(async { crate::app::preflight(&settings).map(drop) }).map_err(|e| e.to_string())?;
            println!(
                "config ok: {} account(s), {} monitor(s), {} webhook(s), {} API key(s), store {}",
                settings.accounts.len(),
                settings.monitors.len(),
                settings.webhooks.len(),
                settings.auth.api_keys.len(),
                store_kind(&settings)
            );
            Ok(())
        }
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin().read_to_string(&mut key).map_err(|e| format!("cannot read the key from stdin: {e}"))?;
            let key = key.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                return Err("no key on stdin".into());
            }
            println!("{}", crate::http::digest_hex(key));
            Ok(())
        }
        Command::Demo { listen, store, faults } => runtime()?.block_on(async move {
            let demo = crate::demo::Demo::build_with(listen, store, emulator_options(&faults)?, true).await?;
            println!("{}", demo.banner());
            demo.run_until(shutdown_signal()).await
        }),
        Command::Emulate { listen, faults } => runtime()?.block_on(emulate(listen, &faults)),
        Command::Openapi { format } => {
            print!("{}", crate::http::openapi_text(matches!(format, Format::Yaml)));
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn load(cli_path: Option<PathBuf>) -> Result<Settings, String> {
    let path = config::locate(cli_path.as_deref());
    let (settings, source) = config::load(path.as_deref()).map_err(|e| e.to_string())?;
    match source {
        Source::File(p) => tracing::info!(path = %p.display(), "loaded config"),
        Source::BuiltInDefaults => {
            tracing::warn!("no config file (--config, $TALLY_CONFIG or ./tally.toml): using built-in defaults")
        }
    }
    Ok(settings)
}

fn store_kind(settings: &Settings) -> &'static str {
    use secrecy::ExposeSecret;
    if settings.store.url.expose_secret().starts_with("sqlite:") { "sqlite" } else { "postgres" }
}

async fn serve(settings: Settings) -> Result<(), String> {
    let app = Application::build(settings).await.map_err(|e| e.to_string())?;
    tracing::info!(addr = %app.local_addr(), "tally is listening");
    app.run_until(shutdown_signal()).await.map_err(|e| format!("server error: {e}"))
}

async fn migrate(settings: Settings) -> Result<(), String> {
    let store = crate::store::open(&settings.store).map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    store.close().await;
    println!("migrations applied ({})", store_kind(&settings));
    Ok(())
}

/// The emulators' options from `--fault PROVIDER=SPEC` flags.
fn emulator_options(faults: &[String]) -> Result<crate::emulator::EmulatorOptions, String> {
    let mut options = crate::emulator::EmulatorOptions::default();
    for spec in faults {
        let (provider, spec) =
            spec.split_once('=').ok_or_else(|| format!("--fault `{spec}`: expected PROVIDER=SPEC"))?;
        let provider: crate::domain::Provider = provider.parse().map_err(|e| format!("--fault: {e}"))?;
        let faults = spec.parse::<crate::emulator::Faults>().map_err(|e| format!("--fault {provider}: {e}"))?;
        options.faults.insert(provider, faults);
    }
    Ok(options)
}

async fn emulate(listen: std::net::SocketAddr, faults: &[String]) -> Result<(), String> {
    use crate::emulator::Emulator;
    let options = emulator_options(faults)?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let emulator = Emulator::start(listener, options).await.map_err(|e| e.to_string())?;
    println!(
        "provider emulators on http://{addr}\n\n{}\n\
         control: PUT http://{addr}/_control/faults/PROVIDER (JSON), GET http://{addr}/_control/calls,\n\
         \x20        POST http://{addr}/_control/ibanera/expire-tokens,\n\
         \x20        POST http://{addr}/_control/leanx/callback or /_control/luxtak/callback \
         ({{\"url\", \"payout\", \"status\"}}: send a signed callback),\n\
         \x20        PUT/DELETE http://{addr}/_control/leanx/prefund ({{\"value\": \"120.00\"}}: hold a prefund pool),\n\
         \x20        PUT http://{addr}/_control/leanx/payouts/ID or /_control/luxtak/payouts/ID ({{\"status\": \"…\"}}: move a payout)\n\n\
         tally accounts for these emulators:\n\n{}",
        emulator.directory(),
        emulator.demo_accounts_toml(),
        addr = emulator.addr(),
    );
    shutdown_signal().await;
    emulator.shutdown().await;
    Ok(())
}
