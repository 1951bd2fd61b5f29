//! The `relay` command: `serve`, `check-config` and `sink`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use relay::config::{Config, LogConfig, LogFormat, EMBEDDED_DEFAULT};
use relay::sink::{FailRule, SinkOptions};

#[derive(Parser)]
#[command(
    name = "relay",
    version,
    about = "A self-hosted SMTP relay with durable queueing and Wasm policy plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept mail over SMTP, queue it durably and deliver it.
    Serve {
        /// Configuration file; without it, the embedded sandbox config (examples/relay.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and exit (0 when valid).
    CheckConfig {
        /// Configuration file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with policy plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Run a catch-all SMTP server that stores what it receives as files (for trying the relay
    /// without the internet, and for tests).
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2600")]
        listen: SocketAddr,
        /// Directory for received messages (<id>.eml and <id>.json).
        #[arg(long, default_value = "./data/sink")]
        dir: PathBuf,
        /// Refuse recipients: ADDRESS=CODE [X.Y.Z] TEXT, ADDRESS may be `*@domain` or `*`. Repeatable.
        #[arg(long = "fail", value_name = "RULE")]
        fail: Vec<String>,
        /// Host name in the greeting.
        #[arg(long, default_value = "sink.localhost")]
        hostname: String,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a plugin file: a component for this relay's interface version that compiles,
    /// and print which hooks it implements.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(2)
            }
        },
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => match relay::policy::check_plugin(&file) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let loaded = match &config {
                Some(path) => Config::load(path),
                None => Config::parse(EMBEDDED_DEFAULT, "<embedded examples/relay.toml>"),
            };
            let config = match loaded {
                Ok(c) => c,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(2);
                }
            };
            relay::observe::init_logging(&config.log);
            run_async(async move {
                relay::serve::run(config)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))
            })
        }
        Command::Sink {
            listen,
            dir,
            fail,
            hostname,
            json,
        } => {
            let rules: Result<Vec<FailRule>, String> =
                fail.iter().map(|r| FailRule::parse(r)).collect();
            let rules = match rules {
                Ok(r) => r,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(2);
                }
            };
            relay::observe::init_logging(&LogConfig {
                format: if json {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                },
                level: "info".into(),
            });
            run_async(async move {
                relay::sink::run(SinkOptions {
                    listen,
                    dir,
                    fail: rules,
                    hostname,
                })
                .await
                .map_err(|e| anyhow::anyhow!("sink on {listen}: {e}"))
            })
        }
    }
}

/// Most threads for blocking spool reads.
const BLOCKING_THREADS: usize = 16;

fn run_async(task: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // Blocking work is short spool reads (a body to deliver, a schedule scan). Tokio's
        // default of up to 512 threads let a delivery burst start about 100 of them, each
        // keeping its stack and allocator arenas: 40 MB of RSS for no gain on a few cores.
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(event = "fatal", error = %err, "relay stopped");
            eprintln!("relay: {err}");
            ExitCode::FAILURE
        }
    }
}
