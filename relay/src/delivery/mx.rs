//! MX resolution (RFC 5321 section 5.1, RFC 7505 null MX) on top of hickory-resolver.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ServerOrderingStrategy,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, TokioResolver};

use crate::smtp::{EnhancedCode, Reply};

/// How many MX hosts (after sorting) are resolved and offered for one domain. A domain publishing
/// hundreds of MX records would otherwise cost hundreds of lookups per delivery attempt.
const MAX_MX_HOSTS: usize = 10;

/// Resolver settings, from the `[dns]` section of the config.
#[derive(Clone, Debug)]
pub(crate) struct DnsSettings {
    /// Name servers as ip:port, asked over UDP (TCP on truncation). Empty means the system
    /// resolver configuration (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Time to wait for one answer from one server.
    pub timeout: Duration,
    /// How many times a query is tried before it counts as a temporary failure.
    pub attempts: usize,
    /// Number of answers (positive and negative) kept in the TTL-respecting cache.
    pub cache_size: usize,
}

/// Why a domain or host could not be turned into delivery targets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DnsError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail at all. Permanent.
    #[error("{domain} publishes a null MX record (RFC 7505): it accepts no mail")]
    NullMx {
        /// The recipient domain.
        domain: String,
    },
    /// The name does not exist (NXDOMAIN), has neither MX nor address records, or is not a valid
    /// domain name at all. Permanent.
    #[error("{domain}: {detail}")]
    NoSuchDomain {
        /// The domain or host name that was looked up.
        domain: String,
        /// What exactly was missing, for logs and bounces.
        detail: String,
    },
    /// SERVFAIL, timeouts, unreachable name servers, or MX hosts that do not resolve (yet).
    #[error("temporary DNS failure for {domain}: {detail}")]
    Temporary {
        /// The domain or host name that was looked up.
        domain: String,
        /// The resolver's error, for logs.
        detail: String,
    },
    /// The resolver could not be set up (unreadable system configuration).
    #[error("DNS resolver setup: {0}")]
    Setup(String),
}

impl DnsError {
    /// True if retrying cannot help: the recipient should bounce.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DnsError::NullMx { .. } | DnsError::NoSuchDomain { .. }
        )
    }

    /// The RFC 3463 status this failure maps to: 5.1.10 (RFC 7505), 5.1.2 or 4.4.3.
    pub fn enhanced_code(&self) -> EnhancedCode {
        match self {
            DnsError::NullMx { .. } => EnhancedCode(5, 1, 10),
            DnsError::NoSuchDomain { .. } => EnhancedCode(5, 1, 2),
            DnsError::Temporary { .. } | DnsError::Setup(_) => EnhancedCode(4, 4, 3),
        }
    }

    /// A synthesised SMTP reply describing the failure, for logs, the spool and bounces.
    pub fn to_reply(&self) -> Reply {
        let enhanced = Some(self.enhanced_code());
        let code = if self.is_permanent() { 550 } else { 451 };
        match self {
            DnsError::NullMx { .. } => Reply::new(code, enhanced, "Recipient address has null MX"),
            DnsError::NoSuchDomain { domain, detail } => Reply::new(
                code,
                enhanced,
                format!("Host or domain name not found: {domain}: {detail}"),
            ),
            DnsError::Temporary { domain, detail } => Reply::new(
                code,
                enhanced,
                format!("Temporary DNS failure for {domain}: {detail}"),
            ),
            DnsError::Setup(detail) => Reply::new(
                code,
                enhanced,
                format!("DNS resolver not available: {detail}"),
            ),
        }
    }
}

/// One host to try for a domain, with its addresses, in the order they should be tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MxTarget {
    /// The exchange host name (ASCII/punycode, no trailing dot), or the address literal
    /// (`[192.0.2.1]`) or the domain itself for an implicit MX.
    pub host: String,
    /// MX preference; 0 for implicit MX and address literals.
    pub preference: u16,
    /// The host's addresses, IPv4 first.
    pub addrs: Vec<IpAddr>,
}

/// Resolves recipient domains to delivery targets. Cheap to clone: all clones share one
/// resolver and its cache.
#[derive(Clone)]
pub(crate) struct MxResolver {
    resolver: Arc<TokioResolver>,
}

impl MxResolver {
    /// Builds a resolver. With `nameservers` set, only those servers are asked (UDP, then TCP
    /// when an answer is truncated) and `/etc/hosts` is ignored; with none, the system
    /// configuration is read.
    pub fn new(settings: &DnsSettings) -> Result<MxResolver, DnsError> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if settings.nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|err| {
                DnsError::Setup(format!("reading system DNS configuration: {err}"))
            })?
        } else {
            let mut config = ResolverConfig::new();
            for addr in &settings.nameservers {
                config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            let mut builder = TokioResolver::builder_with_config(config, provider);
            let opts = builder.options_mut();
            opts.use_hosts_file = ResolveHosts::Never;
            // Ask the servers in the order the operator listed them.
            opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
            builder
        };
        let opts = builder.options_mut();
        opts.timeout = settings.timeout;
        opts.attempts = settings.attempts.max(1);
        opts.cache_size = settings.cache_size.max(1);
        // Every name we query is made fully qualified, so search lists never apply; ndots is
        // set anyway so a stray relative name is not tried under the local domain first.
        opts.ndots = 0;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Ok(MxResolver {
            resolver: Arc::new(builder.build()),
        })
    }

    /// Delivery targets for a recipient domain, in the order to try them: MX hosts by
    /// preference (equal preferences shuffled, RFC 5321 5.1), each with its addresses. With no
    /// MX records the domain itself is the target (implicit MX). A null MX (RFC 7505) is
    /// [`DnsError::NullMx`]; NXDOMAIN, or no MX and no address, is [`DnsError::NoSuchDomain`];
    /// SERVFAIL, timeouts, and MX hosts of which none resolves are [`DnsError::Temporary`].
    /// Address literals (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) bypass DNS.
    pub async fn targets(&self, domain: &str) -> Result<Vec<MxTarget>, DnsError> {
        if domain.starts_with('[') {
            let addr = parse_address_literal(domain).ok_or_else(|| DnsError::NoSuchDomain {
                domain: domain.to_owned(),
                detail: "invalid address literal".to_owned(),
            })?;
            return Ok(vec![MxTarget {
                host: domain.to_owned(),
                preference: 0,
                addrs: vec![addr],
            }]);
        }
        let name = fqdn(domain)?;
        let records: Vec<(u16, Name)> = match self.resolver.mx_lookup(name.clone()).await {
            Ok(lookup) => lookup
                .iter()
                .map(|mx| (mx.preference(), mx.exchange().clone()))
                .collect(),
            Err(err) => match classify(&err) {
                Failure::NxDomain => {
                    return Err(DnsError::NoSuchDomain {
                        domain: domain.to_owned(),
                        detail: "domain does not exist (NXDOMAIN)".to_owned(),
                    })
                }
                Failure::NoData => Vec::new(),
                Failure::Temporary(detail) => {
                    return Err(DnsError::Temporary {
                        domain: domain.to_owned(),
                        detail: format!("MX lookup: {detail}"),
                    })
                }
            },
        };

        if records.is_empty() {
            return self.implicit_mx(domain, name).await;
        }
        // RFC 7505 3: a null MX is the only MX record of its domain. A "." exchange among real
        // MX records is a misconfiguration; it is skipped like any host that does not resolve.
        if records.iter().all(|(_, exchange)| exchange.is_root()) {
            return Err(DnsError::NullMx {
                domain: domain.to_owned(),
            });
        }
        let hosts = order_mx(records, &mut rand::rng());
        self.resolve_mx_hosts(domain, hosts).await
    }

    /// The A/AAAA addresses of a next-hop host name (IPv4 first). IP addresses, bare or in
    /// brackets, are returned as they are.
    pub async fn host_addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if host.starts_with('[') {
            // Next hops come from the config, where "[::1]" is a natural way to write IPv6.
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse::<IpAddr>().ok());
            return bare
                .or_else(|| parse_address_literal(host))
                .map(|ip| vec![ip])
                .ok_or_else(|| DnsError::NoSuchDomain {
                    domain: host.to_owned(),
                    detail: "invalid address literal".to_owned(),
                });
        }
        let name = fqdn(host)?;
        match addresses(&self.resolver, name).await {
            Ok(addrs) if !addrs.is_empty() => Ok(addrs),
            Ok(_) | Err(Failure::NoData) => Err(DnsError::NoSuchDomain {
                domain: host.to_owned(),
                detail: "host has no A or AAAA record".to_owned(),
            }),
            Err(Failure::NxDomain) => Err(DnsError::NoSuchDomain {
                domain: host.to_owned(),
                detail: "host does not exist (NXDOMAIN)".to_owned(),
            }),
            Err(Failure::Temporary(detail)) => Err(DnsError::Temporary {
                domain: host.to_owned(),
                detail,
            }),
        }
    }

    /// The TXT records at `name`, each with its strings joined (RFC 6376 3.6.2.2 splits DKIM
    /// keys into strings of at most 255 bytes): for `relay dkim check`. A name without TXT
    /// records gives an empty list; NXDOMAIN is [`DnsError::NoSuchDomain`].
    pub async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        let fqdn = fqdn(name)?;
        match self.resolver.txt_lookup(fqdn).await {
            Ok(lookup) => Ok(lookup
                .iter()
                .map(|txt| {
                    txt.txt_data()
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect()
                })
                .collect()),
            Err(err) => match classify(&err) {
                Failure::NxDomain => Err(DnsError::NoSuchDomain {
                    domain: name.to_owned(),
                    detail: "name does not exist (NXDOMAIN)".to_owned(),
                }),
                Failure::NoData => Ok(Vec::new()),
                Failure::Temporary(detail) => Err(DnsError::Temporary {
                    domain: name.to_owned(),
                    detail: format!("TXT lookup: {detail}"),
                }),
            },
        }
    }

    /// RFC 5321 5.1: no MX records, so the domain's own address records are the target.
    async fn implicit_mx(&self, domain: &str, name: Name) -> Result<Vec<MxTarget>, DnsError> {
        match addresses(&self.resolver, name.clone()).await {
            Ok(addrs) if !addrs.is_empty() => Ok(vec![MxTarget {
                host: host_string(&name),
                preference: 0,
                addrs,
            }]),
            Ok(_) | Err(Failure::NoData) => Err(DnsError::NoSuchDomain {
                domain: domain.to_owned(),
                detail: "domain has no MX, A or AAAA record".to_owned(),
            }),
            Err(Failure::NxDomain) => Err(DnsError::NoSuchDomain {
                domain: domain.to_owned(),
                detail: "domain does not exist (NXDOMAIN)".to_owned(),
            }),
            Err(Failure::Temporary(detail)) => Err(DnsError::Temporary {
                domain: domain.to_owned(),
                detail: format!("address lookup: {detail}"),
            }),
        }
    }

    /// Resolves the (already ordered) MX hosts concurrently and keeps those with addresses.
    async fn resolve_mx_hosts(
        &self,
        domain: &str,
        hosts: Vec<(u16, Name)>,
    ) -> Result<Vec<MxTarget>, DnsError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (index, (_, exchange)) in hosts.iter().enumerate() {
            let resolver = Arc::clone(&self.resolver);
            let exchange = exchange.clone();
            tasks.spawn(async move { (index, addresses(&resolver, exchange).await) });
        }
        let mut resolved: Vec<Option<Result<Vec<IpAddr>, Failure>>> = vec![None; hosts.len()];
        while let Some(joined) = tasks.join_next().await {
            // A lookup task only panics on a bug in the resolver; that host is then skipped.
            if let Ok((index, result)) = joined {
                if let Some(slot) = resolved.get_mut(index) {
                    *slot = Some(result);
                }
            }
        }

        let mut targets = Vec::new();
        let mut problems = Vec::new();
        for ((preference, exchange), result) in hosts.into_iter().zip(resolved) {
            let host = host_string(&exchange);
            match result {
                Some(Ok(addrs)) if !addrs.is_empty() => targets.push(MxTarget {
                    host,
                    preference,
                    addrs,
                }),
                Some(Ok(_)) | Some(Err(Failure::NoData)) => {
                    problems.push(format!("{host}: no A or AAAA record"))
                }
                Some(Err(Failure::NxDomain)) => {
                    problems.push(format!("{host}: does not exist (NXDOMAIN)"))
                }
                Some(Err(Failure::Temporary(detail))) => problems.push(format!("{host}: {detail}")),
                None => problems.push(format!("{host}: lookup failed")),
            }
        }
        if targets.is_empty() {
            // The MX records exist, so the domain means to receive mail: the hosts may appear
            // later (RFC 5321 5.1 leaves this to the client; retrying is the safe choice).
            return Err(DnsError::Temporary {
                domain: domain.to_owned(),
                detail: format!("no MX host has an address ({})", problems.join("; ")),
            });
        }
        Ok(targets)
    }
}

/// How a single lookup failed, as far as delivery cares.
#[derive(Clone, Debug)]
enum Failure {
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// NOERROR with no records of the asked type.
    NoData,
    /// Anything that may succeed later: SERVFAIL, REFUSED, timeouts, I/O errors.
    Temporary(String),
}

fn classify(err: &ResolveError) -> Failure {
    match err.proto().map(|proto| proto.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => match *response_code {
            ResponseCode::NXDomain => Failure::NxDomain,
            ResponseCode::NoError => Failure::NoData,
            other => Failure::Temporary(format!("name server answered {other}")),
        },
        Some(ProtoErrorKind::Timeout) => Failure::Temporary("DNS query timed out".to_owned()),
        _ => Failure::Temporary(err.to_string()),
    }
}

/// A and AAAA for one name, looked up concurrently. An NXDOMAIN on either means the name does
/// not exist; a temporary failure on one is ignored when the other found addresses.
async fn addresses(resolver: &TokioResolver, name: Name) -> Result<Vec<IpAddr>, Failure> {
    let (v4, v6) = tokio::join!(
        resolver.ipv4_lookup(name.clone()),
        resolver.ipv6_lookup(name)
    );
    let mut addrs = Vec::new();
    let mut failure = None;
    match v4 {
        Ok(lookup) => addrs.extend(lookup.iter().map(|a| IpAddr::V4(a.0))),
        Err(err) => failure = Some(classify(&err)),
    }
    match v6 {
        Ok(lookup) => addrs.extend(lookup.iter().map(|aaaa| IpAddr::V6(aaaa.0))),
        Err(err) => {
            let v6_failure = classify(&err);
            failure = match (failure, v6_failure) {
                (Some(Failure::NxDomain), _) | (_, Failure::NxDomain) => Some(Failure::NxDomain),
                (Some(Failure::Temporary(detail)), _) | (_, Failure::Temporary(detail)) => {
                    Some(Failure::Temporary(detail))
                }
                _ => Some(Failure::NoData),
            };
        }
    }
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    match failure {
        Some(failure) => Err(failure),
        None => Ok(addrs),
    }
}

/// Sorts MX records by preference, shuffles hosts of equal preference (RFC 5321 5.1: spread
/// load), drops "." exchanges and repeated hosts, and caps the list at [`MAX_MX_HOSTS`].
fn order_mx(mut records: Vec<(u16, Name)>, rng: &mut impl rand::Rng) -> Vec<(u16, Name)> {
    use rand::seq::SliceRandom;

    records.retain(|(_, exchange)| !exchange.is_root());
    records.shuffle(rng);
    // Stable sort after a shuffle: equal preferences stay in random order.
    records.sort_by_key(|(preference, _)| *preference);
    let mut ordered: Vec<(u16, Name)> = Vec::with_capacity(records.len());
    for (preference, exchange) in records {
        if !ordered.iter().any(|(_, seen)| seen == &exchange) {
            ordered.push((preference, exchange));
        }
    }
    ordered.truncate(MAX_MX_HOSTS);
    ordered
}

/// The domain as a fully qualified DNS name; IDNs become punycode (via IDNA).
fn fqdn(domain: &str) -> Result<Name, DnsError> {
    let trimmed = domain.trim_end_matches('.');
    let parsed = Name::from_utf8(trimmed).or_else(|err| {
        // IDNA rejects some names DNS allows (an underscore inside a label); plain ASCII
        // names are taken as they are.
        if trimmed.is_ascii() {
            Name::from_ascii(trimmed)
        } else {
            Err(err)
        }
    });
    match parsed {
        Ok(mut name) if !trimmed.is_empty() => {
            name.set_fqdn(true);
            Ok(name)
        }
        Ok(_) => Err(DnsError::NoSuchDomain {
            domain: domain.to_owned(),
            detail: "empty domain name".to_owned(),
        }),
        Err(err) => Err(DnsError::NoSuchDomain {
            domain: domain.to_owned(),
            detail: format!("not a valid domain name: {err}"),
        }),
    }
}

/// A DNS name as a host string: ASCII (punycode) without the trailing root dot.
fn host_string(name: &Name) -> String {
    let mut host = name.to_ascii();
    if host.len() > 1 && host.ends_with('.') {
        host.pop();
    }
    host
}

/// Parses an RFC 5321 4.1.3 address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn parse_address_literal(literal: &str) -> Option<IpAddr> {
    let inner = literal.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner
            .get(5..)?
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(IpAddr::V6),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;

    use hickory_resolver::proto::op::{Message, MessageType};
    use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, SOA};
    use hickory_resolver::proto::rr::{RData, Record, RecordType};
    use tokio::net::UdpSocket;

    use super::*;

    /// What the test name server says for one (name, type).
    #[derive(Clone)]
    enum Answer {
        Records(Vec<RData>),
        ServFail,
        /// Never answers: the resolver times out.
        Silent,
    }

    /// A UDP name server on a loopback port serving a fixed zone. A name listed with some
    /// other type answers NODATA; an unlisted name answers NXDOMAIN (both with an SOA, as
    /// real servers do, so negative answers are cacheable).
    struct TestDns {
        addr: SocketAddr,
        queries: Arc<Mutex<Vec<(String, RecordType)>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestDns {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestDns {
        async fn start(zone: Vec<(&str, RecordType, Answer)>) -> TestDns {
            let zone: Vec<(String, RecordType, Answer)> = zone
                .into_iter()
                .map(|(name, rtype, answer)| (format!("{name}."), rtype, answer))
                .collect();
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let queries = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&queries);
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                        return;
                    };
                    let Ok(request) = Message::from_vec(&buf[..len]) else {
                        continue;
                    };
                    let Some(query) = request.queries().first().cloned() else {
                        continue;
                    };
                    let name = query.name().to_ascii().to_ascii_lowercase();
                    seen.lock()
                        .unwrap()
                        .push((name.clone(), query.query_type()));
                    let mut response = Message::new();
                    response
                        .set_id(request.id())
                        .set_message_type(MessageType::Response)
                        .set_op_code(request.op_code())
                        .set_recursion_desired(request.recursion_desired())
                        .set_recursion_available(true)
                        .set_authoritative(true)
                        .add_query(query.clone());
                    let exact = zone
                        .iter()
                        .find(|(n, t, _)| *n == name && *t == query.query_type());
                    let negative = match exact {
                        Some((_, _, Answer::Silent)) => continue,
                        Some((_, _, Answer::ServFail)) => {
                            response.set_response_code(ResponseCode::ServFail);
                            false
                        }
                        Some((_, _, Answer::Records(records))) => {
                            for rdata in records {
                                response.add_answer(Record::from_rdata(
                                    query.name().clone(),
                                    300,
                                    rdata.clone(),
                                ));
                            }
                            false
                        }
                        None if zone.iter().any(|(n, _, _)| *n == name) => true,
                        None => {
                            response.set_response_code(ResponseCode::NXDomain);
                            true
                        }
                    };
                    if negative {
                        let soa = SOA::new(
                            Name::from_ascii("ns.test.").unwrap(),
                            Name::from_ascii("hostmaster.test.").unwrap(),
                            1,
                            3600,
                            600,
                            86400,
                            300,
                        );
                        response.add_name_server(Record::from_rdata(
                            Name::from_ascii("test.").unwrap(),
                            300,
                            RData::SOA(soa),
                        ));
                    }
                    if let Ok(bytes) = response.to_vec() {
                        let _ = socket.send_to(&bytes, from).await;
                    }
                }
            });
            TestDns {
                addr,
                queries,
                task,
            }
        }

        fn resolver(&self) -> MxResolver {
            MxResolver::new(&DnsSettings {
                nameservers: vec![self.addr],
                timeout: Duration::from_millis(300),
                attempts: 1,
                cache_size: 128,
            })
            .unwrap()
        }

        fn count(&self, name: &str, rtype: RecordType) -> usize {
            let name = format!("{name}.");
            self.queries
                .lock()
                .unwrap()
                .iter()
                .filter(|(n, t)| *n == name && *t == rtype)
                .count()
        }
    }

    fn mx(preference: u16, host: &str) -> RData {
        RData::MX(MX::new(preference, Name::from_ascii(host).unwrap()))
    }

    fn a(ip: [u8; 4]) -> RData {
        RData::A(A(Ipv4Addr::from(ip)))
    }

    fn records(list: Vec<RData>) -> Answer {
        Answer::Records(list)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn mx_hosts_come_in_preference_order_with_their_addresses() {
        let dns = TestDns::start(vec![
            (
                "example.test",
                RecordType::MX,
                records(vec![
                    mx(20, "backup.example.test."),
                    mx(10, "mx.example.test."),
                ]),
            ),
            (
                "mx.example.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 2])]),
            ),
            (
                "mx.example.test",
                RecordType::AAAA,
                records(vec![RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))]),
            ),
            (
                "backup.example.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 3])]),
            ),
        ])
        .await;
        let targets = dns.resolver().targets("example.test").await.unwrap();
        assert_eq!(
            targets,
            vec![
                MxTarget {
                    host: "mx.example.test".into(),
                    preference: 10,
                    addrs: vec![ip("127.0.0.2"), ip("::1")],
                },
                MxTarget {
                    host: "backup.example.test".into(),
                    preference: 20,
                    addrs: vec![ip("127.0.0.3")],
                },
            ]
        );
    }

    #[tokio::test]
    async fn domain_without_mx_falls_back_to_its_own_address() {
        let dns = TestDns::start(vec![(
            "plain.test",
            RecordType::A,
            records(vec![a([127, 0, 0, 9])]),
        )])
        .await;
        let targets = dns.resolver().targets("plain.test").await.unwrap();
        assert_eq!(
            targets,
            vec![MxTarget {
                host: "plain.test".into(),
                preference: 0,
                addrs: vec![ip("127.0.0.9")],
            }]
        );
        assert_eq!(dns.count("plain.test", RecordType::MX), 1);
    }

    #[tokio::test]
    async fn null_mx_is_a_permanent_5_1_10_failure() {
        let dns = TestDns::start(vec![(
            "nomail.test",
            RecordType::MX,
            records(vec![mx(0, ".")]),
        )])
        .await;
        let err = dns.resolver().targets("nomail.test").await.unwrap_err();
        assert_eq!(
            err,
            DnsError::NullMx {
                domain: "nomail.test".into()
            }
        );
        assert!(err.is_permanent());
        assert_eq!(
            err.to_reply().to_string(),
            "550 5.1.10 Recipient address has null MX"
        );
        // The domain's A record is never consulted.
        assert_eq!(dns.count("nomail.test", RecordType::A), 0);
    }

    #[tokio::test]
    async fn root_exchange_among_real_mx_records_is_skipped() {
        let dns = TestDns::start(vec![
            (
                "mixed.test",
                RecordType::MX,
                records(vec![mx(0, "."), mx(10, "mx.mixed.test.")]),
            ),
            (
                "mx.mixed.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 4])]),
            ),
        ])
        .await;
        let targets = dns.resolver().targets("mixed.test").await.unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].host, "mx.mixed.test");
    }

    #[tokio::test]
    async fn nxdomain_is_a_permanent_5_1_2_failure() {
        let dns = TestDns::start(vec![]).await;
        let err = dns.resolver().targets("missing.test").await.unwrap_err();
        assert!(
            matches!(&err, DnsError::NoSuchDomain { domain, .. } if domain == "missing.test"),
            "{err:?}"
        );
        assert!(err.is_permanent());
        let reply = err.to_reply();
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced, Some(EnhancedCode(5, 1, 2)));
    }

    #[tokio::test]
    async fn txt_records_come_with_their_strings_joined() {
        use hickory_resolver::proto::rr::rdata::TXT;
        let key = "s1._domainkey.example.test";
        let dns = TestDns::start(vec![
            (
                key,
                RecordType::TXT,
                records(vec![RData::TXT(TXT::new(vec![
                    "v=DKIM1; k=rsa; ".to_string(),
                    "p=AAAA".to_string(),
                ]))]),
            ),
            (
                "example.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 1])]),
            ),
        ])
        .await;
        let resolver = dns.resolver();
        assert_eq!(
            resolver.txt(key).await.expect("found"),
            vec![b"v=DKIM1; k=rsa; p=AAAA".to_vec()]
        );
        assert_eq!(
            resolver.txt("example.test").await.expect("nodata"),
            Vec::<Vec<u8>>::new()
        );
        let err = resolver
            .txt("s2._domainkey.example.test")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::NoSuchDomain { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn domain_with_neither_mx_nor_address_is_permanent() {
        let dns = TestDns::start(vec![("txtonly.test", RecordType::TXT, records(vec![]))]).await;
        let err = dns.resolver().targets("txtonly.test").await.unwrap_err();
        assert!(matches!(err, DnsError::NoSuchDomain { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn servfail_is_a_temporary_4_4_3_failure() {
        let dns = TestDns::start(vec![("broken.test", RecordType::MX, Answer::ServFail)]).await;
        let err = dns.resolver().targets("broken.test").await.unwrap_err();
        assert!(matches!(err, DnsError::Temporary { .. }), "{err:?}");
        assert!(!err.is_permanent());
        let reply = err.to_reply();
        assert_eq!(
            (reply.code, reply.enhanced),
            (451, Some(EnhancedCode(4, 4, 3)))
        );
    }

    #[tokio::test]
    async fn unanswered_query_is_temporary() {
        let dns = TestDns::start(vec![("slow.test", RecordType::MX, Answer::Silent)]).await;
        let started = std::time::Instant::now();
        let err = dns.resolver().targets("slow.test").await.unwrap_err();
        assert!(matches!(err, DnsError::Temporary { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn mx_whose_hosts_do_not_resolve_is_temporary() {
        let dns = TestDns::start(vec![(
            "dangling.test",
            RecordType::MX,
            records(vec![mx(10, "gone.dangling.test.")]),
        )])
        .await;
        let err = dns.resolver().targets("dangling.test").await.unwrap_err();
        assert!(
            matches!(&err, DnsError::Temporary { detail, .. } if detail.contains("gone.dangling.test")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn unresolvable_mx_host_is_skipped_when_another_resolves() {
        let dns = TestDns::start(vec![
            (
                "half.test",
                RecordType::MX,
                records(vec![mx(5, "gone.half.test."), mx(10, "mx.half.test.")]),
            ),
            (
                "mx.half.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 5])]),
            ),
        ])
        .await;
        let targets = dns.resolver().targets("half.test").await.unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].host, "mx.half.test");
    }

    #[tokio::test]
    async fn equal_preference_hosts_are_shuffled() {
        let dns = TestDns::start(vec![
            (
                "pair.test",
                RecordType::MX,
                records(vec![
                    mx(10, "a.pair.test."),
                    mx(10, "b.pair.test."),
                    mx(20, "c.pair.test."),
                ]),
            ),
            (
                "a.pair.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 10])]),
            ),
            (
                "b.pair.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 11])]),
            ),
            (
                "c.pair.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 12])]),
            ),
        ])
        .await;
        let resolver = dns.resolver();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            let targets = resolver.targets("pair.test").await.unwrap();
            let hosts: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
            assert_eq!(hosts.len(), 3);
            assert_eq!(hosts[2], "c.pair.test", "preference 20 always comes last");
            firsts.insert(hosts[0].to_owned());
        }
        assert_eq!(
            firsts.len(),
            2,
            "both preference-10 hosts should come first sometimes"
        );
    }

    #[test]
    fn order_mx_drops_duplicates_and_caps_the_list() {
        let mut records: Vec<(u16, Name)> = (0..30u16)
            .map(|i| (i, Name::from_ascii(format!("mx{i}.test.")).unwrap()))
            .collect();
        records.push((50, Name::from_ascii("mx0.test.").unwrap()));
        let ordered = order_mx(records, &mut rand::rng());
        assert_eq!(ordered.len(), MAX_MX_HOSTS);
        assert_eq!(ordered[0], (0, Name::from_ascii("mx0.test.").unwrap()));
        assert!(ordered.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[tokio::test]
    async fn answers_are_cached_per_ttl() {
        let dns = TestDns::start(vec![
            (
                "cached.test",
                RecordType::MX,
                records(vec![mx(10, "mx.cached.test.")]),
            ),
            (
                "mx.cached.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 6])]),
            ),
        ])
        .await;
        let resolver = dns.resolver();
        let first = resolver.targets("cached.test").await.unwrap();
        let second = resolver.clone().targets("cached.test").await.unwrap();
        assert_eq!(first, second);
        assert_eq!(dns.count("cached.test", RecordType::MX), 1);
        assert_eq!(dns.count("mx.cached.test", RecordType::A), 1);
    }

    #[tokio::test]
    async fn internationalised_domain_is_queried_as_punycode() {
        let dns = TestDns::start(vec![
            (
                "xn--bcher-kva.test",
                RecordType::MX,
                records(vec![mx(10, "mx.xn--bcher-kva.test.")]),
            ),
            (
                "mx.xn--bcher-kva.test",
                RecordType::A,
                records(vec![a([127, 0, 0, 7])]),
            ),
        ])
        .await;
        let targets = dns.resolver().targets("bücher.test").await.unwrap();
        assert_eq!(targets[0].host, "mx.xn--bcher-kva.test");
        assert_eq!(targets[0].addrs, vec![ip("127.0.0.7")]);
    }

    #[tokio::test]
    async fn address_literals_bypass_dns() {
        let dns = TestDns::start(vec![]).await;
        let resolver = dns.resolver();
        let v4 = resolver.targets("[127.0.0.8]").await.unwrap();
        assert_eq!(v4[0].addrs, vec![ip("127.0.0.8")]);
        let v6 = resolver.targets("[IPv6:::1]").await.unwrap();
        assert_eq!(v6[0].addrs, vec![ip("::1")]);
        assert!(matches!(
            resolver.targets("[not-an-ip]").await,
            Err(DnsError::NoSuchDomain { .. })
        ));
        assert!(dns.queries.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn host_addrs_resolves_names_and_passes_ips_through() {
        let dns = TestDns::start(vec![(
            "smarthost.test",
            RecordType::A,
            records(vec![a([127, 0, 0, 20]), a([127, 0, 0, 21])]),
        )])
        .await;
        let resolver = dns.resolver();
        assert_eq!(
            resolver.host_addrs("smarthost.test").await.unwrap(),
            vec![ip("127.0.0.20"), ip("127.0.0.21")]
        );
        assert_eq!(
            resolver.host_addrs("127.0.0.1").await.unwrap(),
            vec![ip("127.0.0.1")]
        );
        assert_eq!(resolver.host_addrs("[::1]").await.unwrap(), vec![ip("::1")]);
        assert_eq!(
            resolver.host_addrs("[IPv6:::1]").await.unwrap(),
            vec![ip("::1")]
        );
        assert!(matches!(
            resolver.host_addrs("nowhere.test").await,
            Err(DnsError::NoSuchDomain { .. })
        ));
    }
}
