//! The `relay` command: `serve`, `check-config`, `plugin`, `sink`, `user` and `dkim`.

use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
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
    /// Make DKIM signing keys and check that DNS publishes them.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Generate a signing key, write it (mode 0600) and print the DNS TXT record to publish.
    Keygen {
        /// The signing domain (d=), e.g. example.com.
        #[arg(long)]
        domain: String,
        /// The selector (s=): the record goes at SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// The key type: rsa (every receiver verifies it) or ed25519 (RFC 8463; not all do yet,
        /// so sign with an RSA key too).
        #[arg(long, value_enum, default_value_t = KeyType::Rsa)]
        algo: KeyType,
        /// RSA key size: 2048 (default), 3072 or 4096.
        #[arg(long)]
        bits: Option<usize>,
        /// The private key file to write [default: DOMAIN.SELECTOR.key in the current directory].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace an existing key file (its key is lost).
        #[arg(long)]
        force: bool,
    },
    /// Look up SELECTOR._domainkey.DOMAIN and say whether it publishes the key.
    ///
    /// Exit status 0 when every checked key is published, 1 when one is not (or DNS failed),
    /// 2 when a key or config could not be read.
    Check {
        /// The signing domain.
        #[arg(long)]
        domain: String,
        /// The selector; with --config, only this domain's key with this selector is checked.
        #[arg(long, required_unless_present = "config")]
        selector: Option<String>,
        #[command(flatten)]
        source: DkimKeySource,
        /// A name server to ask, IP or IP:PORT (repeatable) [default: the config's [dns]
        /// nameservers, else the system resolver].
        #[arg(long = "nameserver", value_name = "IP:PORT", value_parser = parse_nameserver)]
        nameservers: Vec<SocketAddr>,
    },
}

/// `relay dkim keygen --algo`.
#[derive(Clone, Copy, ValueEnum)]
enum KeyType {
    /// RSA with SHA-256.
    Rsa,
    /// Ed25519 with SHA-256.
    Ed25519,
}

/// Which key `relay dkim check` compares: a key file, or a config's `[[dkim.key]]`.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct DkimKeySource {
    /// The private key file.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// A relay config: its [[dkim.key]] tables for --domain, and its [dns] settings.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
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
        Command::Dkim {
            command:
                DkimCommand::Keygen {
                    domain,
                    selector,
                    algo,
                    bits,
                    out,
                    force,
                },
        } => match dkim_keygen(&domain, &selector, algo, bits, out, force) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("relay dkim keygen: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Dkim {
            command:
                DkimCommand::Check {
                    domain,
                    selector,
                    source,
                    nameservers,
                },
        } => dkim_check(&domain, selector.as_deref(), &source, nameservers),
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

/// Runs `relay dkim keygen`.
fn dkim_keygen(
    domain: &str,
    selector: &str,
    algo: KeyType,
    bits: Option<usize>,
    out: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    use relay::dkim::{generate_key, write_key_file, DkimError, KeyAlgorithm, SignerSpec};
    let domain = domain.trim_end_matches('.');
    let algorithm = match (algo, bits) {
        (KeyType::Ed25519, Some(_)) => {
            anyhow::bail!("--bits is for RSA keys; Ed25519 keys have one size")
        }
        (KeyType::Ed25519, None) => KeyAlgorithm::Ed25519,
        (KeyType::Rsa, _) => KeyAlgorithm::Rsa,
    };
    let generated = generate_key(algorithm, bits.unwrap_or(relay::dkim::MIN_RSA_BITS))?;
    let key = Arc::new(generated.key);
    // The names go into the file name, the record and the signatures: refuse what would break
    // them before anything is written.
    SignerSpec::new(domain, selector, Arc::clone(&key)).validate()?;
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{domain}.{selector}.key")));
    match write_key_file(&path, &generated.pem, force) {
        Ok(()) => {}
        Err(err @ DkimError::KeyFileExists { .. }) => {
            anyhow::bail!("{err} (use --force to replace it, or --out for another file)")
        }
        Err(err) => return Err(err.into()),
    }
    // Absolute, so that the config line works whatever directory the relay runs in.
    let shown = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let name = relay::dkim::record_name(selector, domain);
    let shown = shown.display();
    let report = format!(
        "Wrote a new {algorithm} key ({bits} bits) to {shown} (mode 0600).\n\n\
         Publish this TXT record at {name}:\n\n{zone}\n\n\
         The record's value alone, for a DNS provider's web form:\n\n{txt}\n\n\
         Then sign with it: add to the relay config\n\n\
         [[dkim.key]]\ndomain = {domain_toml}\nselector = {selector_toml}\nkey_file = {file_toml}\n\n\
         and check the record once it is published:\n\
         relay dkim check --domain {domain} --selector {selector} --key {shown}\n",
        algorithm = key.algorithm(),
        bits = key.bits(),
        zone = key.public_key().zone_file_line(selector, domain),
        txt = key.public_key_txt(),
        domain_toml = toml_string(domain),
        selector_toml = toml_string(selector),
        file_toml = toml_string(&shown.to_string()),
    );
    // The key is written: if the record cannot be shown, say so rather than panic.
    std::io::Write::write_all(&mut std::io::stdout(), report.as_bytes()).map_err(|e| {
        anyhow::anyhow!(
            "wrote {shown}, but cannot print its DNS record ({e}); `relay dkim check \
             --domain {domain} --selector {selector} --key {shown}` prints it too"
        )
    })?;
    Ok(())
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// `--nameserver`: `IP:PORT`, or an IP for port 53.
fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{text:?} is not IP or IP:PORT (e.g. 127.0.0.1:5353)"))
}

/// One key for `relay dkim check` to compare.
struct KeyToCheck {
    domain: String,
    selector: String,
    key_file: PathBuf,
}

/// Runs `relay dkim check`: 0 when every key is published, 1 when one is not, 2 when the
/// check could not be made.
fn dkim_check(
    domain: &str,
    selector: Option<&str>,
    source: &DkimKeySource,
    nameservers: Vec<SocketAddr>,
) -> ExitCode {
    use relay::config::DnsConfig;
    use relay::dkim::{check, lookup_key_record, record_name, DkimKey, Verdict};
    let domain = domain.trim_end_matches('.');
    let (keys, mut dns) = match (&source.key, &source.config, selector) {
        (Some(key_file), _, Some(selector)) => (
            vec![KeyToCheck {
                domain: domain.to_string(),
                selector: selector.to_string(),
                key_file: key_file.clone(),
            }],
            DnsConfig::default(),
        ),
        (_, Some(config), _) => match dkim_keys_from_config(config, domain, selector) {
            Ok(found) => found,
            Err(err) => {
                eprintln!("relay dkim check: {err:#}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("relay dkim check: give --key FILE --selector S, or --config FILE");
            return ExitCode::from(2);
        }
    };
    if !nameservers.is_empty() {
        dns.nameservers = nameservers;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("relay dkim check: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let mut status = 0u8;
    for wanted in keys {
        let name = record_name(&wanted.selector, &wanted.domain);
        let key = match DkimKey::load(&wanted.key_file) {
            Ok(key) => key,
            Err(err) => {
                eprintln!("{name}: cannot check: {err}");
                status = 2;
                continue;
            }
        };
        let answer = runtime.block_on(lookup_key_record(&dns, &wanted.selector, &wanted.domain));
        let verdict = check(key.public_key(), &answer);
        if verdict.is_match() {
            println!(
                "{name}: ok: {verdict} in {} ({}, {} bits)",
                wanted.key_file.display(),
                key.algorithm(),
                key.bits()
            );
            continue;
        }
        if let Verdict::LookupFailed(_) = verdict {
            println!("{name}: UNKNOWN: {verdict}");
        } else {
            println!(
                "{name}: FAIL: {verdict} (key {})",
                wanted.key_file.display()
            );
            println!("  publish: {}", key.public_key_txt());
        }
        status = status.max(1);
    }
    ExitCode::from(status)
}

/// The `[[dkim.key]]` tables of a config for `domain` (and `selector`), and its `[dns]`. Only
/// those parts are read, so a config being written need not be valid as a whole yet.
fn dkim_keys_from_config(
    config: &Path,
    domain: &str,
    selector: Option<&str>,
) -> anyhow::Result<(Vec<KeyToCheck>, relay::config::DnsConfig)> {
    let file = config.display();
    let text =
        std::fs::read_to_string(config).map_err(|e| anyhow::anyhow!("{file}: cannot read: {e}"))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{file}: not valid TOML: {}", e.message()))?;
    let dns = match table.get("dns") {
        Some(dns) => dns
            .clone()
            .try_into::<relay::config::DnsConfig>()
            .map_err(|e| anyhow::anyhow!("{file}: [dns]: {}", e.message()))?,
        None => relay::config::DnsConfig::default(),
    };
    let entries = match table.get("dkim").and_then(|dkim| dkim.get("key")) {
        Some(toml::Value::Array(entries)) => entries.as_slice(),
        Some(_) => anyhow::bail!("{file}: dkim.key must be an array of tables ([[dkim.key]])"),
        None => &[],
    };
    let mut keys = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let field = |name: &str| -> anyhow::Result<String> {
            entry
                .get(name)
                .and_then(toml::Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{file}: [[dkim.key]] number {}: {name} must be a non-empty string",
                        index + 1
                    )
                })
        };
        let key = KeyToCheck {
            domain: field("domain")?,
            selector: field("selector")?,
            // As `relay serve` reads it: relative to the working directory.
            key_file: PathBuf::from(field("key_file")?),
        };
        let wanted = key
            .domain
            .trim_end_matches('.')
            .eq_ignore_ascii_case(domain)
            && selector.is_none_or(|s| key.selector.eq_ignore_ascii_case(s));
        if wanted {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        let which = match selector {
            Some(selector) => format!("domain {domain} and selector {selector}"),
            None => format!("domain {domain}"),
        };
        anyhow::bail!("{file}: no [[dkim.key]] for {which}");
    }
    Ok((keys, dns))
}
