//! The relay's TOML configuration: typed, validated at load time, with errors that name the file, line and field.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::smtp::BareLineEnding;

mod mail;
pub use mail::{DkimConfig, DkimKeyConfig, FromPolicy, HygieneConfig};

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
    /// `[[tls_policy]]`: outbound TLS policies for chosen recipient domains.
    #[serde(default, rename = "tls_policy")]
    pub tls_policies: Vec<TlsPolicyConfig>,
    /// `[tls]`: the certificate inbound TLS (STARTTLS and implicit TLS) presents.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `[[listener]]`: SMTP listeners with their own TLS and AUTH settings.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[auth]`: SMTP AUTH users and the brute-force limits.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// `[dkim]`: signing keys and the choice of signing domain.
    #[serde(default)]
    pub dkim: Option<DkimConfig>,
    /// `[hygiene]`: headers added or refused before a message is queued.
    #[serde(default)]
    pub hygiene: HygieneConfig,
}

/// `[tls]`: the server certificate. Both files are watched: a renewed certificate is used for
/// new connections within seconds, without a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Time allowed for a TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: ConfigDuration,
}

fn default_handshake_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

/// How a listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// No TLS: STARTTLS is not offered.
    None,
    /// Plain SMTP that offers STARTTLS (ports 25 and 587).
    Starttls,
    /// TLS from the first byte (port 465, RFC 8314).
    Implicit,
}

/// `[[listener]]`: one address to accept SMTP on, and what it demands of clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The address; port 0 picks a free port (the bound address is logged).
    pub address: SocketAddr,
    /// A name for logs (default: the address).
    pub name: Option<String>,
    /// `none`, `starttls` or `implicit`; default `starttls` when `[tls]` is set, else `none`.
    pub tls: Option<ListenerTls>,
    /// MAIL FROM needs a login first, whatever the client's address (`530 5.7.0`).
    #[serde(default)]
    pub require_auth: bool,
    /// MAIL FROM needs TLS first (`530 5.7.0`).
    #[serde(default)]
    pub require_tls: bool,
    /// Offer AUTH without TLS to loopback clients (never to others: their passwords would
    /// cross the network in the clear).
    #[serde(default)]
    pub auth_in_clear_on_loopback: bool,
}

/// `[auth]`: who may log in with SMTP AUTH, and how repeated failures are slowed down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The users file (`relay user add NAME --config ...` manages it); reloaded when it changes.
    pub users_file: PathBuf,
    /// Failed logins from one client address (IPv6: its /64) after which each answer is delayed.
    #[serde(default = "default_delay_after")]
    pub delay_after: u32,
    /// Failed logins within `failure_window` after which the address is locked out.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// The window failures are counted in.
    #[serde(default = "default_auth_window")]
    pub failure_window: ConfigDuration,
    /// How long a locked-out address gets `421 4.7.0` to AUTH.
    #[serde(default = "default_auth_window")]
    pub lockout: ConfigDuration,
    /// Name the logged-in user in the Received header (`Authenticated sender:`).
    #[serde(default = "default_true")]
    pub received_shows_user: bool,
}

fn default_delay_after() -> u32 {
    3
}

fn default_max_failures() -> u32 {
    10
}

fn default_auth_window() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(15 * 60))
}

fn default_true() -> bool {
    true
}

/// One listener as the relay runs it, from `[server] listen` or `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Name for logs.
    pub name: String,
    /// The address to bind.
    pub address: SocketAddr,
    /// Its TLS mode.
    pub tls: ListenerTls,
    /// MAIL FROM needs a login.
    pub require_auth: bool,
    /// MAIL FROM needs TLS.
    pub require_tls: bool,
    /// AUTH without TLS for loopback clients.
    pub auth_in_clear_on_loopback: bool,
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
    /// Addresses to accept SMTP on, with the default listener settings (STARTTLS offered when
    /// `[tls]` is set). Port 0 picks a free port (the bound address is logged). Default
    /// `127.0.0.1:2525`, unless `[[listener]]`s are configured.
    pub listen: Option<Vec<SocketAddr>>,
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
            listen: None,
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
    /// Outbound TLS for domains without a `[[tls_policy]]`: `none`, `opportunistic` (default),
    /// `required` or `verify`.
    pub tls: TlsPolicy,
    /// PEM files of CA certificates trusted for `verify`, besides the built-in web PKI roots.
    /// Read when the config is loaded: a file that cannot be read or holds no certificate is a
    /// config error.
    pub tls_ca_files: Vec<CaFile>,
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
            tls: TlsPolicy::Opportunistic,
            tls_ca_files: Vec::new(),
        }
    }
}

/// How the relay uses TLS when it delivers to a destination (its STARTTLS policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Never STARTTLS: plain text even where TLS is offered.
    None,
    /// STARTTLS when offered, without checking the certificate; where TLS fails, deliver in
    /// plain text on a new connection (RFC 3207 with RFC 7435 opportunistic security).
    Opportunistic,
    /// TLS or no delivery (defer), without checking the certificate.
    Required,
    /// TLS with a certificate that is valid for the MX host name (or the route's next hop),
    /// or no delivery (defer).
    Verify,
}

impl TlsPolicy {
    /// The policy's name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
            TlsPolicy::Verify => "verify",
        }
    }

    /// True for `required` and `verify`: without TLS the delivery is deferred.
    pub fn requires_tls(self) -> bool {
        matches!(self, TlsPolicy::Required | TlsPolicy::Verify)
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[tls_policy]]`: the outbound TLS policy for one recipient domain (or its subdomains).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPolicyConfig {
    /// `example.com` (that domain only) or `*.example.com` (every subdomain, not the domain).
    pub domain: PolicyDomain,
    /// `none`, `opportunistic`, `required` or `verify`.
    pub policy: TlsPolicy,
}

/// The recipient domains a `[[tls_policy]]` applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicyDomain {
    /// Exactly this domain (lower-case, no trailing dot).
    Exact(String),
    /// Every domain ending in `.` + this one (written `*.example.com`), at any depth.
    Subdomains(String),
}

impl PolicyDomain {
    /// True if the policy applies to `domain` (lower-case).
    pub fn matches(&self, domain: &str) -> bool {
        match self {
            PolicyDomain::Exact(d) => d == domain,
            PolicyDomain::Subdomains(parent) => domain
                .strip_suffix(parent.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl fmt::Display for PolicyDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyDomain::Exact(d) => f.write_str(d),
            PolicyDomain::Subdomains(d) => write!(f, "*.{d}"),
        }
    }
}

impl<'de> Deserialize<'de> for PolicyDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let domain = text.trim().trim_end_matches('.').to_lowercase();
        let (wildcard, name) = match domain.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, domain.as_str()),
        };
        if name.is_empty()
            || name.contains(['@', ' ', '*', '[', ']'])
            || name.starts_with('.')
            || name.contains("..")
        {
            return Err(serde::de::Error::custom(format!(
                "\"{text}\" is not a domain or \"*.domain\" (e.g. \"example.com\", \"*.example.com\"; [delivery] tls is the policy of every other domain)"
            )));
        }
        Ok(if wildcard {
            PolicyDomain::Subdomains(name.to_owned())
        } else {
            PolicyDomain::Exact(name.to_owned())
        })
    }
}

/// One `[delivery] tls_ca_files` entry: a PEM file of CA certificates, read once, when the
/// config is loaded.
#[derive(Debug, Clone)]
pub struct CaFile {
    /// The file as configured (a relative path is taken from the working directory).
    pub path: PathBuf,
    /// Its certificates, each usable as a trust anchor.
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl CaFile {
    /// Reads every certificate in a PEM file. Fails, naming the file, when it cannot be read,
    /// is not PEM, holds no certificate, or holds one that cannot be a trust anchor.
    pub fn read(path: &Path) -> Result<CaFile, String> {
        use rustls::pki_types::pem::{self, PemObject};
        use rustls::pki_types::CertificateDer;

        let shown = path.display();
        let describe = |err: pem::Error| match err {
            pem::Error::Io(err) => format!("\"{shown}\": cannot read: {err}"),
            other => format!("\"{shown}\": not a PEM file: {other}"),
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(describe)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(describe)?;
        if certs.is_empty() {
            return Err(format!(
                "\"{shown}\" holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)"
            ));
        }
        for (index, cert) in certs.iter().enumerate() {
            rustls::RootCertStore::empty()
                .add(cert.clone())
                .map_err(|err| {
                    format!(
                        "\"{shown}\": certificate {} cannot be a trust anchor: {err}",
                        index + 1
                    )
                })?;
        }
        Ok(CaFile {
            path: path.to_owned(),
            certs,
        })
    }
}

impl<'de> Deserialize<'de> for CaFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = PathBuf::deserialize(d)?;
        CaFile::read(&path).map_err(serde::de::Error::custom)
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
    /// Every listener: `[server] listen` addresses (default `127.0.0.1:2525` when there is no
    /// `[[listener]]`), then the `[[listener]]`s.
    pub fn listeners(&self) -> Vec<Listener> {
        let default_tls = if self.tls.is_some() {
            ListenerTls::Starttls
        } else {
            ListenerTls::None
        };
        let plain = match &self.server.listen {
            Some(addresses) => addresses.clone(),
            None if self.listeners.is_empty() => vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            None => Vec::new(),
        };
        let mut all: Vec<Listener> = plain
            .into_iter()
            .map(|address| Listener {
                name: address.to_string(),
                address,
                tls: default_tls,
                require_auth: false,
                require_tls: false,
                auth_in_clear_on_loopback: false,
            })
            .collect();
        all.extend(self.listeners.iter().map(|l| Listener {
            name: l.name.clone().unwrap_or_else(|| l.address.to_string()),
            address: l.address,
            tls: l.tls.unwrap_or(default_tls),
            require_auth: l.require_auth,
            require_tls: l.require_tls,
            auth_in_clear_on_loopback: l.auth_in_clear_on_loopback,
        }));
        all
    }

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
        if self.listeners().is_empty() {
            return fail(
                "server",
                "listen",
                "needs at least one address (or a [[listener]])",
            );
        }
        self.validate_listeners(text, file)?;
        if let Some(dkim) = &self.dkim {
            mail::validate(dkim, text, file)?;
        }
        self.validate_tls_policies(text, file)?;
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
            if addr.port() != 0 && self.listeners().iter().any(|l| l.address == addr) {
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
impl Config {
    /// The `[[listener]]`, `[tls]` and `[auth]` checks.
    fn validate_listeners(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let fail_at = |index: usize, field: &str, reason: &str| {
            let line = find_array_key_line(text, "listener", index, field);
            Err(ConfigError::Invalid(format_error(
                file,
                line,
                &format!("listener[{index}].{field}"),
                reason,
            )))
        };
        let mut names = std::collections::HashSet::new();
        let mut addresses = std::collections::HashSet::new();
        for (index, listener) in self.listeners.iter().enumerate() {
            let tls = listener.tls.unwrap_or(if self.tls.is_some() {
                ListenerTls::Starttls
            } else {
                ListenerTls::None
            });
            if tls != ListenerTls::None && self.tls.is_none() {
                return fail_at(
                    index,
                    "tls",
                    "needs a certificate: add a [tls] section with cert and key",
                );
            }
            if listener.require_tls && tls == ListenerTls::None {
                return fail_at(
                    index,
                    "require_tls",
                    "cannot be met on a listener with tls = \"none\"",
                );
            }
            if listener.require_auth && self.auth.is_none() {
                return fail_at(
                    index,
                    "require_auth",
                    "needs an [auth] section with users_file",
                );
            }
            if let Some(name) = &listener.name {
                if !names.insert(name.as_str()) {
                    return fail_at(index, "name", &format!("\"{name}\" is used twice"));
                }
            }
            if listener.address.port() != 0 && !addresses.insert(listener.address) {
                return fail_at(
                    index,
                    "address",
                    &format!("{} is used twice", listener.address),
                );
            }
        }
        if let Some(auth) = &self.auth {
            let fail = |field: &str, reason: &str| {
                Err(ConfigError::Invalid(format_error(
                    file,
                    find_key_line(text, "auth", field),
                    &format!("auth.{field}"),
                    reason,
                )))
            };
            if auth.max_failures == 0 {
                return fail("max_failures", "must be at least 1");
            }
            if auth.delay_after > auth.max_failures {
                return fail("delay_after", "must not be more than max_failures");
            }
            if auth.failure_window.0.is_zero() {
                return fail("failure_window", "must be more than 0");
            }
        }
        Ok(())
    }
}

impl Config {
    /// The `[[tls_policy]]` checks: each domain once.
    fn validate_tls_policies(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (index, rule) in self.tls_policies.iter().enumerate() {
            if !seen.insert(&rule.domain) {
                let line = find_array_key_line(text, "tls_policy", index, "domain");
                return Err(ConfigError::Invalid(format_error(
                    file,
                    line,
                    &format!("tls_policy[{index}].domain"),
                    &format!("\"{}\" has more than one policy", rule.domain),
                )));
            }
        }
        Ok(())
    }
}

/// The line of `field` in the `index`th `[[section]]` table, or 0.
fn find_array_key_line(text: &str, section: &str, index: usize, field: &str) -> usize {
    let header = format!("[[{section}]]");
    let mut seen = 0;
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed.replace(' ', "") == header && {
                seen += 1;
                seen == index + 1
            };
        } else if inside {
            if let Some((key, _)) = trimmed.split_once('=') {
                if key.trim() == field {
                    return n + 1;
                }
            }
        }
    }
    0
}

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
    fn listeners_come_from_server_listen_and_listener_tables() {
        let config = Config::parse("", "r.toml").expect("valid");
        let listeners = config.listeners();
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].address, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(listeners[0].tls, ListenerTls::None);

        let text = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[auth]\nusers_file = \"users\"\n\
                    [[listener]]\nname = \"submission\"\naddress = \"0.0.0.0:587\"\nrequire_auth = true\n\
                    [[listener]]\naddress = \"0.0.0.0:465\"\ntls = \"implicit\"\n";
        let config = Config::parse(text, "r.toml").expect("valid");
        let listeners = config.listeners();
        // No [server] listen: only the [[listener]]s.
        assert_eq!(listeners.len(), 2);
        assert_eq!(
            (
                listeners[0].name.as_str(),
                listeners[0].tls,
                listeners[0].require_auth
            ),
            ("submission", ListenerTls::Starttls, true)
        );
        assert_eq!(
            (listeners[1].name.as_str(), listeners[1].tls),
            ("0.0.0.0:465", ListenerTls::Implicit)
        );
        let auth = config.auth.expect("auth");
        assert_eq!((auth.delay_after, auth.max_failures), (3, 10));
    }

    #[test]
    fn listener_errors_name_the_line_and_field() {
        let cases = [
            (
                "[[listener]]\naddress = \"127.0.0.1:465\"\ntls = \"implicit\"\n",
                "r.toml:3: [[listener]] tls: needs a certificate: add a [tls] section with cert and key",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:587\"\nrequire_auth = true\n",
                "r.toml:3: [[listener]] require_auth: needs an [auth] section with users_file",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:587\"\nrequire_tls = true\n",
                "r.toml:3: [[listener]] require_tls: cannot be met on a listener with tls = \"none\"",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[[listener]]\naddress = \"127.0.0.1:1\"\n",
                "r.toml:4: [[listener]] address: 127.0.0.1:1 is used twice",
            ),
            (
                "[auth]\nusers_file = \"u\"\ndelay_after = 5\nmax_failures = 2\n",
                "r.toml:3: [auth] delay_after: must not be more than max_failures",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\ntls = \"ssl\"\n",
                "r.toml:3: [[listener]] tls: unknown variant `ssl`, expected one of `none`, `starttls`, `implicit`",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text, "r.toml").expect_err(text).to_string();
            assert_eq!(err, expected, "{text}");
        }
    }

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

#[cfg(test)]
mod tls_policy_config_tests {
    use super::*;

    #[test]
    fn outbound_tls_defaults_to_opportunistic_with_no_rules() {
        let config = Config::parse("", "r.toml").unwrap();
        assert_eq!(config.delivery.tls, TlsPolicy::Opportunistic);
        assert!(config.delivery.tls_ca_files.is_empty());
        assert!(config.tls_policies.is_empty());
    }

    #[test]
    fn tls_policies_parse_with_exact_and_wildcard_domains() {
        let text = r#"
[delivery]
tls = "required"
[[tls_policy]]
domain = "Bank.Example."
policy = "verify"
[[tls_policy]]
domain = "*.legacy.test"
policy = "none"
"#;
        let config = Config::parse(text, "r.toml").unwrap();
        assert_eq!(config.delivery.tls, TlsPolicy::Required);
        assert_eq!(
            config.tls_policies[0].domain,
            PolicyDomain::Exact("bank.example".into())
        );
        assert_eq!(config.tls_policies[0].policy, TlsPolicy::Verify);
        assert_eq!(
            config.tls_policies[1].domain,
            PolicyDomain::Subdomains("legacy.test".into())
        );
        assert!(config.tls_policies[1].domain.matches("mx.legacy.test"));
        assert!(config.tls_policies[1].domain.matches("a.b.legacy.test"));
        assert!(!config.tls_policies[1].domain.matches("legacy.test"));
        assert!(!config.tls_policies[1].domain.matches("notlegacy.test"));
    }

    #[test]
    fn an_unknown_policy_name_is_located_and_the_valid_ones_listed() {
        let err = Config::parse("[delivery]\ntls = \"verfy\"\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.toml:2: [delivery] tls: "), "{err}");
        assert!(
            err.contains("verfy") && err.contains("opportunistic") && err.contains("verify"),
            "{err}"
        );
        let text = "[[tls_policy]]\ndomain = \"a.test\"\npolicy = \"strict\"\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("r.toml:3: [[tls_policy]] policy: "),
            "{err}"
        );
    }

    #[test]
    fn tls_policy_domains_are_checked() {
        for bad in ["*", "*.", "a@b.test", "*.*.test", "a..test"] {
            let text = format!("[[tls_policy]]\ndomain = \"{bad}\"\npolicy = \"verify\"\n");
            let err = Config::parse(&text, "r.toml").unwrap_err().to_string();
            assert!(
                err.starts_with("r.toml:2: [[tls_policy]] domain: ")
                    && err.contains("is not a domain"),
                "{bad}: {err}"
            );
        }
        let text = "[[tls_policy]]\ndomain = \"a.test\"\npolicy = \"verify\"\n\n[[tls_policy]]\ndomain = \"A.test\"\npolicy = \"none\"\n";
        let err = Config::parse(text, "r.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "r.toml:6: [[tls_policy]] domain: \"a.test\" has more than one policy"
        );
        let err = Config::parse("[[tls_policy]]\ndomain = \"a.test\"\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("policy"), "{err}");
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_names_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let text = format!(
            "[delivery]\ntls_ca_files = [{:?}]\n",
            missing.display().to_string()
        );
        let err = Config::parse(&text, "r.toml").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "r.toml:2: [delivery] tls_ca_files: \"{}\": cannot read: ",
                missing.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_ca_file_without_a_usable_certificate_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("empty.pem", "", "holds no certificate"),
            (
                "key.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "holds no certificate",
            ),
            (
                "junk.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "cannot be a trust anchor",
            ),
            (
                "broken.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n",
                "not a PEM file",
            ),
        ];
        for (name, content, expected) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let text = format!(
                "[delivery]\ntls_ca_files = [{:?}]\n",
                path.display().to_string()
            );
            let err = Config::parse(&text, "r.toml").unwrap_err().to_string();
            assert!(
                err.starts_with("r.toml:2: [delivery] tls_ca_files: ") && err.contains(expected),
                "{name}: {err}"
            );
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn a_ca_file_with_certificates_is_read_at_load_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut pem = String::new();
        for name in ["CA one", "CA two"] {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            pem.push_str(&params.self_signed(&key).unwrap().pem());
        }
        let path = dir.path().join("cas.pem");
        std::fs::write(&path, pem).unwrap();
        let text = format!(
            "[delivery]\ntls = \"verify\"\ntls_ca_files = [{:?}]\n",
            path.display().to_string()
        );
        let config = Config::parse(&text, "r.toml").unwrap();
        assert_eq!(config.delivery.tls_ca_files[0].path, path);
        assert_eq!(config.delivery.tls_ca_files[0].certs.len(), 2);
    }
}
