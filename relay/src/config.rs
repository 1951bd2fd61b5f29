//! The relay's TOML configuration: typed, validated at load time, with errors that name the file, line and field.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::smtp::BareLineEnding;

/// The configuration that `relay serve` uses when no `--config` is given: the safe sandbox in
/// `examples/relay.toml` (loopback only, local spool, every domain routed to a local `relay sink`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/relay.toml");

/// A configuration file that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file that was asked for.
        file: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value is wrong. The message already names file, line and field.
    #[error("{0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the inbound SMTP side.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[spool]`: the RocksDB queue.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[dns]`: the resolver used for MX lookups.
    #[serde(default)]
    pub dns: DnsConfig,
    /// `[delivery]`: the outbound side.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// `[[route]]`: fixed next hops for chosen domains.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[log]`: log format and level.
    #[serde(default)]
    pub log: LogConfig,
    /// `[plugins]`: the Wasm policy plugins, their runtime limits and their own tables.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// `[[source]]`: local addresses outgoing connections may come from.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// `[[pool]]`: named, weighted groups of sources.
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    /// `[metrics]`: the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[bounces]`: domains whose addresses receive returned DSNs for `on_bounce`.
    #[serde(default)]
    pub bounces: BouncesConfig,
}

/// `[bounces]`: the bounce domains. Mail to an address at one of them is taken from any
/// client, parsed as an RFC 3464 DSN for `on_bounce`, and dropped (never queued or relayed).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BouncesConfig {
    /// Domains (lower-case, no trailing dot); empty: the feature is off.
    pub domains: Vec<BounceDomain>,
}

/// A bounce domain: a DNS name, lower-cased, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BounceDomain(pub String);

impl<'de> Deserialize<'de> for BounceDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let domain = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            Ok(BounceDomain(domain))
        } else {
            Err(serde::de::Error::custom(format!(
                "\"{text}\" is not a domain (e.g. \"bounces.example.com\")"
            )))
        }
    }
}

/// `[metrics]`: where `GET /metrics` is served (Prometheus/OpenMetrics text over HTTP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `ip:port` to serve the metrics on; absent: no endpoint. Port 0 picks a free port (the
    /// bound address is logged as `metrics_listening`).
    #[serde(deserialize_with = "metrics_listen")]
    pub listen: Option<SocketAddr>,
}

/// `[metrics] listen`: an IP address and port (no host names: the endpoint binds, it does not
/// resolve).
fn metrics_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<SocketAddr>().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "\"{text}\" is not ip:port (e.g. \"127.0.0.1:9090\" or \"[::1]:9090\")"
        ))
    })
}

/// `[plugins]`: where plugins live, the sandbox limits, and one `[plugins.NAME]` table per plugin.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginsConfig {
    /// Directory watched for `*.wasm` plugins; absent: no plugins.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Where compiled plugin code is cached (keyed by file hash and engine).
    #[serde(default = "default_plugin_cache")]
    pub cache_dir: PathBuf,
    /// Longest a plugin may run for one hook call.
    #[serde(default = "default_time_budget")]
    pub time_budget: ConfigDuration,
    /// Memory cap per plugin instance, in bytes.
    #[serde(default = "default_plugin_memory")]
    pub memory_limit: u64,
    /// Faults (trap, timeout, memory) within `fault_window` before a plugin is quarantined.
    #[serde(default = "default_max_faults")]
    pub max_faults: u32,
    /// The window for `max_faults`.
    #[serde(default = "default_fault_window")]
    pub fault_window: ConfigDuration,
    /// What a hook answers when a plugin faults.
    #[serde(default)]
    pub fallback: FallbackConfig,
    /// `[plugins.NAME]`: order and configuration of each plugin (NAME is the file stem).
    #[serde(flatten)]
    pub tables: std::collections::BTreeMap<String, PluginTable>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: None,
            cache_dir: default_plugin_cache(),
            time_budget: default_time_budget(),
            memory_limit: default_plugin_memory(),
            max_faults: default_max_faults(),
            fault_window: default_fault_window(),
            fallback: FallbackConfig::default(),
            tables: Default::default(),
        }
    }
}

fn default_plugin_cache() -> PathBuf {
    PathBuf::from("./data/plugin-cache")
}
fn default_time_budget() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(10))
}
fn default_plugin_memory() -> u64 {
    32 * 1024 * 1024
}
fn default_max_faults() -> u32 {
    5
}
fn default_fault_window() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

/// `[plugins.NAME]`: `priority` (lower runs first) and any other keys, handed to the plugin as JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginTable {
    /// Order among plugins: lower runs first; ties run in name order.
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// The plugin's own settings (everything but `priority`).
    #[serde(flatten)]
    pub config: toml::Table,
}

fn default_priority() -> i64 {
    100
}

/// `[plugins.fallback]`: fail-open (`accept`) or fail-closed (`tempfail`) per hook.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// on_rcpt's answer when a plugin faults.
    pub on_rcpt: FallbackMode,
    /// on_data's answer when a plugin faults.
    pub on_data: FallbackMode,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            on_rcpt: FallbackMode::Accept,
            on_data: FallbackMode::Accept,
        }
    }
}

/// A hook's answer when its plugin faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackMode {
    /// Fail open: carry on as if the plugin had no opinion.
    Accept,
    /// Fail closed: answer `451 4.3.0` so the client retries later.
    Tempfail,
}

/// `[[source]]`: a local address for outgoing connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name plugins and pools refer to.
    pub name: String,
    /// The address to bind outgoing connections to (it must be configured on this host).
    pub ip: IpAddr,
    /// EHLO name when sending from this address (should match its PTR record);
    /// defaults to the delivery EHLO name.
    #[serde(default)]
    pub ehlo: Option<HostName>,
}

/// `[[pool]]`: a named group of sources, chosen by weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Name plugins refer to.
    pub name: String,
    /// Members and their weights.
    pub members: Vec<PoolMemberConfig>,
}

/// One member of a `[[pool]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolMemberConfig {
    /// A `[[source]]` name.
    pub source: String,
    /// Relative share of traffic (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `[server]`: listeners, identity, who may relay, and session limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to accept SMTP on. Port 0 picks a free port (the bound address is logged).
    pub listen: Vec<SocketAddr>,
    /// Our host name: greeting, EHLO, Received headers, DSNs.
    pub hostname: HostName,
    /// Client networks allowed to relay to any domain.
    pub relay_networks: Vec<IpNet>,
    /// Largest accepted message in bytes (advertised with SIZE).
    pub max_message_size: u64,
    /// Recipients per message; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Longest command or text line in bytes including CRLF (RFC 5321 4.5.3.1).
    pub max_line_length: usize,
    /// Client errors per session before the relay hangs up with `421 4.7.0`.
    pub max_errors: u32,
    /// How long to wait for the next command.
    pub command_timeout: ConfigDuration,
    /// How long to wait for the next chunk of message data.
    pub data_timeout: ConfigDuration,
    /// Concurrent inbound connections in total.
    pub max_connections: usize,
    /// Concurrent inbound connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Received headers a message may carry before it is refused as a loop.
    pub max_hops: u32,
    /// What to do with a bare LF or CR in message data: `reject` or `normalize`.
    pub bare_line_ending: BareLineEnding,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            hostname: HostName("localhost".into()),
            relay_networks: vec![
                "127.0.0.0/8".parse().expect("literal network"),
                "::1/128".parse().expect("literal network"),
            ],
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_line_length: 1000,
            max_errors: 10,
            command_timeout: ConfigDuration(Duration::from_secs(300)),
            data_timeout: ConfigDuration(Duration::from_secs(600)),
            max_connections: 1000,
            max_connections_per_ip: 100,
            max_hops: 50,
            bare_line_ending: BareLineEnding::Reject,
        }
    }
}

/// `[spool]`: where the queue lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the RocksDB database; created if missing.
    pub path: PathBuf,
    /// Free bytes the spool's file system must keep; below it, MAIL FROM gets `452 4.3.1`.
    pub min_free_space: u64,
    /// Messages being delivered at once; the rest wait on disk (memory stays flat with queue depth).
    pub max_in_flight: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: PathBuf::from("./data/spool"),
            min_free_space: 100 * 1024 * 1024,
            max_in_flight: 1000,
        }
    }
}

/// `[dns]`: the resolver for MX and address lookups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// `ip:port` of the name servers to ask; empty means the system resolver (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Time to wait for one answer.
    pub timeout: ConfigDuration,
    /// Tries per query.
    pub attempts: usize,
    /// Answers kept in the resolver cache (each for its TTL).
    pub cache_size: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: ConfigDuration(Duration::from_secs(5)),
            attempts: 2,
            cache_size: 4096,
        }
    }
}

/// `[delivery]`: how and when the relay talks to receiving MXes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// TCP port of receiving MXes (25 on the internet; tests use a high port).
    pub remote_port: u16,
    /// Name sent in EHLO; defaults to `[server] hostname`.
    pub helo_name: Option<HostName>,
    /// Waits between attempts; the last one repeats until `max_age`.
    pub retry_schedule: Vec<ConfigDuration>,
    /// How long a message may stay queued before it bounces.
    pub max_age: ConfigDuration,
    /// Concurrent connections to one destination (domain or next hop).
    pub max_connections_per_destination: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: u32,
    /// How long an idle connection is kept for reuse.
    pub idle_timeout: ConfigDuration,
    /// Time allowed to establish a TCP connection.
    pub connect_timeout: ConfigDuration,
    /// Time allowed for the greeting and each command's reply (RFC 5321 4.5.3.2).
    pub command_timeout: ConfigDuration,
    /// Time allowed for the reply to the end of message data.
    pub data_timeout: ConfigDuration,
    /// Pool (or source) used when no plugin chooses; absent: the operating system picks the address.
    pub default_pool: Option<String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let mins = |m: u64| ConfigDuration(Duration::from_secs(m * 60));
        DeliveryConfig {
            remote_port: 25,
            helo_name: None,
            retry_schedule: vec![mins(5), mins(10), mins(30), mins(60), mins(120), mins(240)],
            max_age: ConfigDuration(Duration::from_secs(5 * 24 * 3600)),
            max_connections_per_destination: 20,
            max_messages_per_connection: 100,
            idle_timeout: ConfigDuration(Duration::from_secs(5)),
            connect_timeout: ConfigDuration(Duration::from_secs(30)),
            command_timeout: mins(5),
            data_timeout: mins(10),
            default_pool: None,
        }
    }
}

/// `[[route]]`: send a domain (or `*`, every domain) to a fixed next hop instead of its MX.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The recipient domain, or `*` for all domains without a more specific route.
    pub domain: RouteDomain,
    /// `host:port` of the next hop; the host may be a name (A/AAAA) or an IP.
    pub next_hop: NextHop,
}

/// `[log]`: where and how the relay logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for machines (one object per line).
    pub format: LogFormat,
    /// Minimum level: `error`, `warn`, `info`, `debug` or `trace`, or a tracing filter directive.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// A span of time written like `"30s"`, `"5m"`, `"4h"`, `"5d"` or `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// Parses `"<number><unit>"` with unit `ms`, `s`, `m`, `h`, `d` or `w`.
    pub fn parse(text: &str) -> Option<ConfigDuration> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().ok()?;
        let millis = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return None,
        };
        Some(ConfigDuration(Duration::from_millis(
            n.checked_mul(millis)?,
        )))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ConfigDuration::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "\"{text}\" is not a duration (e.g. \"30s\", \"5m\", \"4h\", \"5d\")"
            ))
        })
    }
}

/// A DNS host name (ours, for greeting and EHLO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostName(pub String);

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let valid = !text.is_empty()
            && text.len() <= 253
            && text.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if valid {
            Ok(HostName(text.to_ascii_lowercase()))
        } else {
            Err(serde::de::Error::custom(format!(
                "\"{text}\" is not a host name (letters, digits, '-' and '.', e.g. \"relay.example.com\")"
            )))
        }
    }
}

/// The domain a route applies to: one domain, or every domain (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteDomain {
    /// Every domain without a more specific route.
    Any,
    /// Exactly this domain (lower-case).
    Exact(String),
}

impl<'de> Deserialize<'de> for RouteDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let text = text.trim().trim_end_matches('.').to_lowercase();
        if text == "*" {
            Ok(RouteDomain::Any)
        } else if text.is_empty() || text.contains(['@', ' ', '*']) {
            Err(serde::de::Error::custom(format!(
                "\"{text}\" is not a domain or \"*\""
            )))
        } else {
            Ok(RouteDomain::Exact(text))
        }
    }
}

/// `host:port` of a fixed next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl NextHop {
    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl<'de> Deserialize<'de> for NextHop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(format!(
                "\"{text}\" is not host:port (e.g. \"smtp.example.net:25\" or \"[::1]:2525\")"
            ))
        };
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(NextHop {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains([':', '[', ']', ' ']) || port == 0 {
            return Err(bad());
        }
        Ok(NextHop {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let line = inner
                .span()
                .map(|span| line_of(text, span.start))
                .unwrap_or(0);
            ConfigError::Invalid(format_error(file, line, &path, inner.message()))
        })?;
        config.validate(text, file)?;
        Ok(config)
    }

    /// Checks that go beyond the type of one value.
    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let fail = |section: &str, field: &str, reason: &str| {
            let line = find_key_line(text, section, field);
            // Array tables read as [[name]] in messages, like parse errors inside them.
            let path = if matches!(section, "route" | "source" | "pool") {
                format!("{section}[0].{field}")
            } else {
                format!("{section}.{field}")
            };
            Err(ConfigError::Invalid(format_error(
                file, line, &path, reason,
            )))
        };
        if self.server.listen.is_empty() {
            return fail("server", "listen", "needs at least one address");
        }
        if self.server.max_line_length < 512 {
            return fail(
                "server",
                "max_line_length",
                "must be at least 512 (RFC 5321 4.5.3.1.4)",
            );
        }
        if self.server.max_connections == 0 || self.server.max_connections_per_ip == 0 {
            return fail("server", "max_connections", "must be at least 1");
        }
        if self.delivery.retry_schedule.is_empty() {
            return fail("delivery", "retry_schedule", "needs at least one duration");
        }
        if self
            .delivery
            .retry_schedule
            .iter()
            .any(|d| d.0 < Duration::from_millis(100))
        {
            return fail(
                "delivery",
                "retry_schedule",
                "every wait must be at least 100ms",
            );
        }
        if self.delivery.max_connections_per_destination == 0 {
            return fail(
                "delivery",
                "max_connections_per_destination",
                "must be at least 1",
            );
        }
        if self.spool.max_in_flight == 0 {
            return fail("spool", "max_in_flight", "must be at least 1");
        }
        let mut seen = std::collections::HashSet::new();
        for route in &self.routes {
            if !seen.insert(route.domain.clone()) {
                let name = match &route.domain {
                    RouteDomain::Any => "*".to_string(),
                    RouteDomain::Exact(d) => d.clone(),
                };
                return fail(
                    "route",
                    "domain",
                    &format!("\"{name}\" has more than one route"),
                );
            }
        }
        let mut source_names = std::collections::HashSet::new();
        for source in &self.sources {
            if !source_names.insert(source.name.as_str()) {
                return fail(
                    "source",
                    "name",
                    &format!("\"{}\" is defined twice", source.name),
                );
            }
        }
        let mut pool_names = std::collections::HashSet::new();
        for pool in &self.pools {
            if !pool_names.insert(pool.name.as_str()) || source_names.contains(pool.name.as_str()) {
                return fail(
                    "pool",
                    "name",
                    &format!("\"{}\" is already the name of a source or pool", pool.name),
                );
            }
            if pool.members.is_empty() || pool.members.iter().all(|m| m.weight == 0) {
                return fail(
                    "pool",
                    "members",
                    &format!(
                        "pool \"{}\" needs a member with a weight above 0",
                        pool.name
                    ),
                );
            }
            if let Some(m) = pool
                .members
                .iter()
                .find(|m| !source_names.contains(m.source.as_str()))
            {
                return fail(
                    "pool",
                    "members",
                    &format!(
                        "pool \"{}\": \"{}\" is not a [[source]] name",
                        pool.name, m.source
                    ),
                );
            }
        }
        if let Some(default) = &self.delivery.default_pool {
            if !source_names.contains(default.as_str()) && !pool_names.contains(default.as_str()) {
                return fail(
                    "delivery",
                    "default_pool",
                    &format!("\"{default}\" is not a [[pool]] or [[source]] name"),
                );
            }
        }
        if self.plugins.time_budget.0 < Duration::from_millis(1) {
            return fail("plugins", "time_budget", "must be at least 1ms");
        }
        if self.plugins.memory_limit < 1024 * 1024 {
            return fail(
                "plugins",
                "memory_limit",
                "must be at least 1048576 (1 MiB)",
            );
        }
        if let Some(addr) = self.metrics.listen {
            if addr.port() != 0 && self.server.listen.contains(&addr) {
                return fail(
                    "metrics",
                    "listen",
                    &format!("{addr} is also a [server] listen address; pick another port"),
                );
            }
        }
        let mut bounce_domains = std::collections::HashSet::new();
        for domain in &self.bounces.domains {
            if !bounce_domains.insert(domain.0.as_str()) {
                return fail(
                    "bounces",
                    "domains",
                    &format!("\"{}\" is listed twice", domain.0),
                );
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return fail(
                "log",
                "level",
                &format!(
                    "\"{}\" is not a level (error, warn, info, debug, trace)",
                    self.log.level
                ),
            );
        }
        Ok(())
    }

    /// The name the relay sends in EHLO when delivering.
    pub fn helo_name(&self) -> &HostName {
        self.delivery
            .helo_name
            .as_ref()
            .unwrap_or(&self.server.hostname)
    }
}

/// `relay.toml:14: [delivery] retry_schedule: "5x" is not a duration`.
fn format_error(file: &str, line: usize, path: &str, message: &str) -> String {
    let message = message.trim();
    let (section, field) = split_path(path);
    let location = if line > 0 {
        format!("{file}:{line}")
    } else {
        file.to_string()
    };
    match (section.is_empty(), field.is_empty()) {
        (true, true) => format!("{location}: {message}"),
        (false, true) => format!("{location}: [{section}]: {message}"),
        (true, false) => format!("{location}: {field}: {message}"),
        (false, false) => format!("{location}: [{section}] {field}: {message}"),
    }
}

/// Splits serde's path (`delivery.retry_schedule[0]`, `route[1].next_hop`) into section and field.
fn split_path(path: &str) -> (String, String) {
    if path == "." || path.is_empty() {
        return (String::new(), String::new());
    }
    let mut parts = path.splitn(2, '.');
    let first = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    let field = rest.split('[').next().unwrap_or_default().to_string();
    let section_name = first.split('[').next().unwrap_or_default();
    let section = if first.contains('[') {
        format!("[{section_name}]")
    } else {
        section_name.to_string()
    };
    (section, field)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Line of `field = ...` inside `[section]` (or `[[section]]`), for errors found after parsing.
fn find_key_line(text: &str, section: &str, field: &str) -> usize {
    let mut in_section = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            let name = trimmed.trim_matches(|c| c == '[' || c == ']').trim();
            in_section = name == section;
        } else if in_section {
            if let Some((key, _)) = trimmed.split_once('=') {
                if key.trim() == field {
                    return n + 1;
                }
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_config_is_valid() {
        let config = Config::parse(EMBEDDED_DEFAULT, "examples/relay.toml").expect("valid");
        assert!(
            !config.routes.is_empty(),
            "sandbox routes to the local sink"
        );
    }

    #[test]
    fn issue_example_config_parses_with_its_values() {
        let text = r#"
[server]
listen = ["127.0.0.1:2525"]
hostname = "relay.example.test"
relay_networks = ["127.0.0.0/8", "::1/128"]
max_message_size = 26214400
[spool]
path = "./data/spool"
[dns]
nameservers = ["127.0.0.1:5353"]
[delivery]
remote_port = 25
retry_schedule = ["5m", "10m", "30m", "1h", "2h", "4h"]
max_age = "5d"
[[route]]
domain = "upstream.test"
next_hop = "127.0.0.1:2600"
"#;
        let config = Config::parse(text, "relay.toml").expect("valid");
        assert_eq!(config.server.hostname.0, "relay.example.test");
        assert_eq!(config.delivery.retry_schedule.len(), 6);
        assert_eq!(
            config.delivery.max_age.0,
            Duration::from_secs(5 * 24 * 3600)
        );
        assert_eq!(config.routes[0].next_hop.port, 2600);
        assert_eq!(config.dns.nameservers[0].port(), 5353);
    }

    #[test]
    fn bad_duration_names_file_line_section_and_field() {
        let text =
            "[server]\nhostname = \"a.test\"\n\n[delivery]\nretry_schedule = [\"5m\", \"5x\"]\n";
        let err = Config::parse(text, "relay.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("relay.toml:5: [delivery] retry_schedule: \"5x\" is not a duration"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_not_a_silent_default() {
        let text = "[server]\nhostnme = \"a.test\"\n";
        let err = Config::parse(text, "relay.toml").unwrap_err().to_string();
        assert!(err.starts_with("relay.toml:2: [server]"), "{err}");
        assert!(err.contains("hostnme"), "{err}");
    }

    #[test]
    fn bad_next_hop_in_route_array_is_located() {
        let text = "[[route]]\ndomain = \"a.test\"\nnext_hop = \"nowhere\"\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("r.toml:3: [[route]] next_hop: \"nowhere\" is not host:port"),
            "{err}"
        );
    }

    #[test]
    fn empty_retry_schedule_is_refused_with_its_line() {
        let text = "[delivery]\nremote_port = 2525\nretry_schedule = []\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "r.toml:3: [delivery] retry_schedule: needs at least one duration"
        );
    }

    #[test]
    fn durations_parse_every_unit() {
        for (text, ms) in [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("5d", 432_000_000),
            ("1w", 604_800_000),
        ] {
            assert_eq!(
                ConfigDuration::parse(text),
                Some(ConfigDuration(Duration::from_millis(ms)))
            );
        }
        for bad in ["", "5", "m", "5x", "-5m", "5.5m"] {
            assert_eq!(ConfigDuration::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn metrics_listen_is_optional_and_parses_an_address() {
        let config = Config::parse("[log]\nlevel = \"info\"\n", "r.toml").expect("valid");
        assert_eq!(config.metrics.listen, None);
        let config =
            Config::parse("[metrics]\nlisten = \"127.0.0.1:9090\"\n", "r.toml").expect("valid");
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9090".parse().expect("addr"))
        );
    }

    #[test]
    fn bad_metrics_listen_names_file_line_section_and_field() {
        let text = "[server]\nhostname = \"a.test\"\n\n[metrics]\nlisten = \"localhost:9090\"\n";
        let err = Config::parse(text, "relay.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "relay.toml:5: [metrics] listen: \"localhost:9090\" is not ip:port (e.g. \"127.0.0.1:9090\" or \"[::1]:9090\")"
        );
        let err = Config::parse("[metrics]\nport = 9090\n", "relay.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("relay.toml:2: [metrics]"), "{err}");
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn metrics_may_not_share_the_smtp_address() {
        let text =
            "[server]\nlisten = [\"127.0.0.1:2525\"]\n[metrics]\nlisten = \"127.0.0.1:2525\"\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "r.toml:4: [metrics] listen: 127.0.0.1:2525 is also a [server] listen address; pick another port"
        );
    }
}

#[cfg(test)]
mod plugin_config_tests {
    use super::*;

    #[test]
    fn plugin_tables_carry_priority_and_their_own_keys() {
        let text = r#"
[plugins]
dir = "./plugins"
time_budget = "5ms"
[plugins.fallback]
on_rcpt = "tempfail"
[plugins.rate-limit]
priority = 10
per_sender_domain = "100/1m"
[plugins.rate-limit.users]
alice = 5
"#;
        let config = Config::parse(text, "r.toml").expect("valid");
        assert_eq!(config.plugins.fallback.on_rcpt, FallbackMode::Tempfail);
        assert_eq!(config.plugins.fallback.on_data, FallbackMode::Accept);
        assert_eq!(config.plugins.time_budget.0, Duration::from_millis(5));
        let table = &config.plugins.tables["rate-limit"];
        assert_eq!(table.priority, 10);
        assert_eq!(table.config["per_sender_domain"].as_str(), Some("100/1m"));
        assert!(!table.config.contains_key("priority"));
    }

    #[test]
    fn a_misspelt_plugins_setting_is_an_error() {
        let text = "[plugins]\ntime_budgt = \"5ms\"\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert!(
            err.contains("time_budgt") || err.contains("[plugins]"),
            "{err}"
        );
    }

    #[test]
    fn pool_members_must_name_sources() {
        let text = r#"
[[source]]
name = "a"
ip = "127.0.0.2"
[[pool]]
name = "bulk"
members = [{ source = "a" }, { source = "nope", weight = 2 }]
"#;
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert!(
            err.contains("[[pool]] members") && err.contains("\"nope\""),
            "{err}"
        );
    }

    #[test]
    fn default_pool_must_exist() {
        let text = "[delivery]\ndefault_pool = \"ghost\"\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert!(err.contains("r.toml:2: [delivery] default_pool"), "{err}");
    }

    #[test]
    fn bounce_domains_default_to_off_and_are_lower_cased() {
        assert!(Config::parse("", "r.toml")
            .unwrap()
            .bounces
            .domains
            .is_empty());
        let text = "[bounces]\ndomains = [\"Bounces.Example.COM.\"]\n";
        let config = Config::parse(text, "r.toml").unwrap();
        assert_eq!(
            config.bounces.domains,
            vec![BounceDomain("bounces.example.com".into())]
        );
    }

    #[test]
    fn bad_bounce_domain_names_file_line_section_and_field() {
        let text = "[bounces]\ndomains = [\"b@x.com\"]\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert!(err.contains("r.toml:2: [bounces] domains"), "{err}");
        assert!(err.contains("\"b@x.com\" is not a domain"), "{err}");
        let text = "[bounces]\ndomains = [\"a.test\", \"A.test\"]\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert!(err.contains("r.toml:2: [bounces] domains"), "{err}");
        let text = "[bounces]\ndomain = [\"a.test\"]\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert!(err.contains("[bounces]"), "{err}");
    }
}
