//! The `relay` command: `serve`, `check-config`, `plugin`, `sink` and `user`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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
    /// Manage the SMTP AUTH users file (the relay reloads it when it changes).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user, or set a new password for an existing one. Prompts twice for the password
    /// on the terminal unless --password-stdin is given. Creates the file (mode 0600) if needed.
    Add {
        /// The user name (e.g. app@example.com): no whitespace, control characters or ':'.
        name: String,
        #[command(flatten)]
        file: UsersFileArgs,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Remove {
        /// The user name.
        name: String,
        #[command(flatten)]
        file: UsersFileArgs,
    },
    /// Print the user names, one a line.
    List {
        #[command(flatten)]
        file: UsersFileArgs,
    },
}

/// Which users file: given directly, or the `[auth] users_file` of a relay config.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct UsersFileArgs {
    /// The users file.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// A relay config file; its `[auth] users_file` is used (relative to the config's directory).
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
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
        Command::User { command } => match user_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("relay user: {err:#}");
                ExitCode::FAILURE
            }
        },
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

/// Runs `relay user ...`; the error names the file.
fn user_command(command: UserCommand) -> anyhow::Result<()> {
    use relay::auth::{Change, UserName};
    match command {
        UserCommand::Add {
            name,
            file,
            password_stdin,
        } => {
            let name = UserName::parse(&name)?;
            let path = users_file(&file)?;
            let password = if password_stdin {
                password_from_stdin()?
            } else {
                password_from_terminal(&name)?
            };
            if password.is_empty() {
                anyhow::bail!("the password is empty; {} is unchanged", path.display());
            }
            match relay::auth::set_user(&path, &name, &password)? {
                Change::Added { created: true } => {
                    println!("created {} with user \"{name}\"", path.display())
                }
                Change::Added { created: false } => {
                    println!("added user \"{name}\" to {}", path.display())
                }
                Change::Replaced => println!(
                    "replaced the password of existing user \"{name}\" in {}",
                    path.display()
                ),
            }
        }
        UserCommand::Remove { name, file } => {
            let path = users_file(&file)?;
            relay::auth::remove_user(&path, &name)?;
            println!("removed user \"{name}\" from {}", path.display());
        }
        UserCommand::List { file } => {
            let path = users_file(&file)?;
            for name in relay::auth::list_users(&path)? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

/// The users file: `--file`, or `[auth] users_file` from `--config`, relative to the config's
/// directory. Only that key is read, so a config being edited need not be valid yet.
fn users_file(args: &UsersFileArgs) -> anyhow::Result<PathBuf> {
    if let Some(file) = &args.file {
        return Ok(file.clone());
    }
    let Some(config) = &args.config else {
        anyhow::bail!("give --file PATH or --config PATH");
    };
    let text = std::fs::read_to_string(config)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", config.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not valid TOML: {}", config.display(), e.message()))?;
    let file = table
        .get("auth")
        .and_then(|auth| auth.get("users_file"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: [auth] users_file is not set (add `users_file = \"users\"` under [auth], or use --file)",
                config.display()
            )
        })?;
    let Some(file) = file.as_str().filter(|f| !f.is_empty()) else {
        anyhow::bail!(
            "{}: [auth] users_file must be a non-empty string (a path)",
            config.display()
        );
    };
    // As `relay serve` reads it: a relative path is relative to the working directory, like
    // every other path in the config.
    Ok(PathBuf::from(file))
}

/// The first line of standard input, without its line ending.
fn password_from_stdin() -> anyhow::Result<Vec<u8>> {
    let mut line = Vec::new();
    std::io::stdin()
        .lock()
        .read_until(b'\n', &mut line)
        .map_err(|e| anyhow::anyhow!("cannot read the password from standard input: {e}"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

/// Asks twice on the terminal, without echo; a mismatch is an error.
fn password_from_terminal(name: &relay::auth::UserName) -> anyhow::Result<Vec<u8>> {
    let no_terminal = |e: std::io::Error| {
        anyhow::anyhow!("cannot read a password from the terminal ({e}); use --password-stdin")
    };
    let first =
        rpassword::prompt_password(format!("Password for {name}: ")).map_err(no_terminal)?;
    if first.is_empty() {
        // Reported by the caller, without asking twice.
        return Ok(Vec::new());
    }
    let again = rpassword::prompt_password("Again: ").map_err(no_terminal)?;
    if first != again {
        anyhow::bail!("the two passwords differ; nothing was changed");
    }
    Ok(first.into_bytes())
}
