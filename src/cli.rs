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
    /// Print the OpenAPI document.
    Openapi {
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
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
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime()?.block_on(serve(load(cli.config)?)),
        Command::Migrate => runtime()?.block_on(migrate(load(cli.config)?)),
        Command::CheckConfig => {
            let settings = load(cli.config)?;
            println!("config ok: {} account(s), store {}", settings.accounts.len(), store_kind(&settings));
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
        Command::Openapi { format } => {
            let doc = crate::http::openapi();
            let text = match format {
                Format::Json => doc.to_pretty_json().map_err(|e| e.to_string())?,
                Format::Yaml => doc.to_yaml().map_err(|e| e.to_string())?,
            };
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
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
