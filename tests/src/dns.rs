//! A real DNS server (UDP and TCP on one loopback port) answering from an in-memory zone tests can change.
//!
//! It speaks the wire protocol through hickory-proto's message codec, so the
//! relay's resolver is exercised for real: no resolver override, no system
//! resolver. It counts the questions it is asked, per name and type, so tests
//! can check caching and that a route did not cause a lookup.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

pub use hickory_proto::rr::RecordType;

/// The payload size this server announces (RFC 8914-era default for EDNS over UDP).
const EDNS_PAYLOAD: u16 = 1232;

/// The data of one resource record in a [`Zone`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    /// A mail exchanger; `exchange` "." is a null MX (RFC 7505).
    Mx {
        /// Lower is preferred.
        preference: u16,
        /// The MX host name, or "." for a null MX.
        exchange: String,
    },
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// One TXT record; longer than 255 bytes is split into several character-strings.
    Txt(String),
    /// An alias to another name.
    Cname(String),
}

impl RecordData {
    /// The DNS type of this record.
    pub fn record_type(&self) -> RecordType {
        match self {
            RecordData::Mx { .. } => RecordType::MX,
            RecordData::A(_) => RecordType::A,
            RecordData::Aaaa(_) => RecordType::AAAA,
            RecordData::Txt(_) => RecordType::TXT,
            RecordData::Cname(_) => RecordType::CNAME,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    record: Record,
}

/// The records the server answers from.
///
/// Names are case-insensitive and written without a trailing dot. A name that
/// owns no record gets NXDOMAIN; a name that owns records of other types gets
/// NOERROR with an empty answer (both with an SOA for negative caching).
#[derive(Clone, Debug)]
pub struct Zone {
    entries: Vec<Entry>,
    servfail: HashSet<String>,
    ttl: u32,
    negative_ttl: u32,
}

impl Default for Zone {
    fn default() -> Self {
        Zone::new()
    }
}

impl Zone {
    /// An empty zone; records get a TTL of 300 s, negative answers 60 s.
    pub fn new() -> Zone {
        Zone {
            entries: Vec::new(),
            servfail: HashSet::new(),
            ttl: 300,
            negative_ttl: 60,
        }
    }

    /// Sets the TTL of records added after this call.
    pub fn ttl(mut self, seconds: u32) -> Zone {
        self.ttl = seconds;
        self
    }

    /// Sets the TTL (SOA minimum) of NXDOMAIN and empty answers.
    pub fn negative_ttl(mut self, seconds: u32) -> Zone {
        self.negative_ttl = seconds;
        self
    }

    /// Adds an MX record.
    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Zone {
        self.insert(
            domain,
            None,
            RecordData::Mx {
                preference,
                exchange: exchange.to_string(),
            },
        );
        self
    }

    /// Adds a null MX (`0 .`, RFC 7505): the domain accepts no mail.
    pub fn null_mx(self, domain: &str) -> Zone {
        self.mx(domain, 0, ".")
    }

    /// Adds an A record.
    pub fn a(mut self, name: &str, ip: Ipv4Addr) -> Zone {
        self.insert(name, None, RecordData::A(ip));
        self
    }

    /// Adds an AAAA record.
    pub fn aaaa(mut self, name: &str, ip: Ipv6Addr) -> Zone {
        self.insert(name, None, RecordData::Aaaa(ip));
        self
    }

    /// Adds a TXT record.
    pub fn txt(mut self, name: &str, text: &str) -> Zone {
        self.insert(name, None, RecordData::Txt(text.to_string()));
        self
    }

    /// Adds a CNAME record.
    pub fn cname(mut self, name: &str, target: &str) -> Zone {
        self.insert(name, None, RecordData::Cname(target.to_string()));
        self
    }

    /// Makes every question about `name` get SERVFAIL.
    pub fn servfail(mut self, name: &str) -> Zone {
        self.set_servfail(name, true);
        self
    }

    /// Adds a record with an explicit TTL (or the zone's current one for `None`).
    ///
    /// Panics on a name that is not a valid DNS name: that is a bug in the test.
    pub fn insert(&mut self, name: &str, ttl: Option<u32>, data: RecordData) {
        let owner = normalize(name);
        let rdata = match &data {
            RecordData::Mx {
                preference,
                exchange,
            } => RData::MX(MX::new(*preference, dns_name(exchange))),
            RecordData::A(ip) => RData::A(A(*ip)),
            RecordData::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            RecordData::Txt(text) => RData::TXT(TXT::new(split_txt(text))),
            RecordData::Cname(target) => RData::CNAME(CNAME(dns_name(target))),
        };
        let record = Record::from_rdata(dns_name(&owner), ttl.unwrap_or(self.ttl), rdata);
        self.entries.push(Entry {
            name: owner,
            record,
        });
    }

    /// Removes all records of `record_type` owned by `name`.
    pub fn remove(&mut self, name: &str, record_type: RecordType) {
        let owner = normalize(name);
        self.entries
            .retain(|e| !(e.name == owner && e.record.record_type() == record_type));
    }

    /// Turns SERVFAIL for `name` on or off.
    pub fn set_servfail(&mut self, name: &str, on: bool) {
        let owner = normalize(name);
        if on {
            self.servfail.insert(owner);
        } else {
            self.servfail.remove(&owner);
        }
    }

    fn lookup(&self, qname: &str, qtype: RecordType) -> Lookup {
        let mut answers: Vec<Record> = Vec::new();
        let mut name = qname.to_string();
        // Follow CNAME chains a few steps; a loop in a test zone must not hang the server.
        for _ in 0..8 {
            if self.servfail.contains(&name) {
                return Lookup::ServFail;
            }
            let owned: Vec<&Entry> = self.entries.iter().filter(|e| e.name == name).collect();
            if owned.is_empty() {
                return if answers.is_empty() {
                    Lookup::NxDomain
                } else {
                    Lookup::Answer(answers)
                };
            }
            let matching: Vec<Record> = owned
                .iter()
                .filter(|e| e.record.record_type() == qtype)
                .map(|e| e.record.clone())
                .collect();
            if !matching.is_empty() {
                answers.extend(matching);
                return Lookup::Answer(answers);
            }
            let cname = owned
                .iter()
                .find(|e| e.record.record_type() == RecordType::CNAME);
            match cname {
                Some(e) if qtype != RecordType::CNAME => {
                    answers.push(e.record.clone());
                    name = match e.record.data() {
                        RData::CNAME(target) => normalize(&target.0.to_ascii()),
                        _ => return Lookup::Answer(answers),
                    };
                }
                _ => break,
            }
        }
        if answers.is_empty() {
            Lookup::NoData
        } else {
            Lookup::Answer(answers)
        }
    }
}

enum Lookup {
    Answer(Vec<Record>),
    NoData,
    NxDomain,
    ServFail,
}

/// How a question reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// A length-prefixed message on a TCP connection.
    Tcp,
}

/// One question the server was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Lower-cased, without the trailing dot.
    pub name: String,
    /// The question type.
    pub record_type: RecordType,
    /// UDP or TCP.
    pub transport: Transport,
}

struct Shared {
    zone: Mutex<Zone>,
    questions: Mutex<Vec<Question>>,
}

/// A running DNS server on `127.0.0.1:PORT` (UDP and TCP). Dropping it stops it.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts a server for `zone` on a free loopback port.
    ///
    /// Panics if no port can be bound (the test cannot run without it).
    pub async fn start(zone: Zone) -> DnsServer {
        let shared = Arc::new(Shared {
            zone: Mutex::new(zone),
            questions: Mutex::new(Vec::new()),
        });
        let mut last_error = None;
        for _ in 0..100 {
            let udp = match UdpSocket::bind(("127.0.0.1", 0)).await {
                Ok(s) => s,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let addr = match udp.local_addr() {
                Ok(a) => a,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let tcp = match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let tasks = vec![
                tokio::spawn(serve_udp(udp, Arc::clone(&shared))),
                tokio::spawn(serve_tcp(tcp, Arc::clone(&shared))),
            ];
            return DnsServer {
                addr,
                shared,
                tasks,
            };
        }
        panic!("DNS server: could not bind UDP and TCP on one loopback port: {last_error:?}");
    }

    /// The address to put in `[dns] nameservers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the zone while the server runs.
    pub fn update(&self, change: impl FnOnce(&mut Zone)) {
        change(&mut lock(&self.shared.zone));
    }

    /// Every question asked so far, in order.
    pub fn questions(&self) -> Vec<Question> {
        lock(&self.shared.questions).clone()
    }

    /// How many times (`name`, `record_type`) was asked, over UDP and TCP.
    pub fn query_count(&self, name: &str, record_type: RecordType) -> usize {
        let name = normalize(name);
        lock(&self.shared.questions)
            .iter()
            .filter(|q| q.name == name && q.record_type == record_type)
            .count()
    }

    /// How many questions about `name` (any type) were asked.
    pub fn queries_for(&self, name: &str) -> usize {
        let name = normalize(name);
        lock(&self.shared.questions)
            .iter()
            .filter(|q| q.name == name)
            .count()
    }

    /// How many questions were asked in all.
    pub fn total_queries(&self) -> usize {
        lock(&self.shared.questions).len()
    }

    /// Stops the server (also done on drop).
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn dns_name(name: &str) -> Name {
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() {
        return Name::root();
    }
    match Name::from_utf8(format!("{trimmed}.")) {
        Ok(n) => n,
        Err(e) => panic!("test zone: {name:?} is not a DNS name: {e}"),
    }
}

fn split_txt(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if current.len() + c.len_utf8() > 255 {
            parts.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

/// The zone apex used for the SOA of negative answers: the last label ("test").
fn apex(name: &str) -> String {
    name.rsplit('.').next().unwrap_or(name).to_string()
}

fn soa(zone: &Zone, qname: &str) -> Record {
    let apex = apex(qname);
    let rdata = SOA::new(
        dns_name(&format!("ns.{apex}")),
        dns_name(&format!("hostmaster.{apex}")),
        1,
        3600,
        600,
        86400,
        zone.negative_ttl,
    );
    Record::from_rdata(dns_name(&apex), zone.negative_ttl, RData::SOA(rdata))
}

/// Builds the answer to one request; `None` for bytes that are not a DNS query.
fn respond(shared: &Shared, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true);
    if let Some(edns) = request.extensions() {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_PAYLOAD)
            .set_version(edns.version());
        response.set_edns(ours);
    }
    let queries = request.queries();
    if request.op_code() != OpCode::Query || queries.len() != 1 {
        response.set_response_code(ResponseCode::NotImp);
        return response.to_vec().ok();
    }
    let query = &queries[0];
    response.add_query(query.clone());
    let qname = normalize(&query.name().to_ascii());
    let qtype = query.query_type();
    lock(&shared.questions).push(Question {
        name: qname.clone(),
        record_type: qtype,
        transport,
    });
    {
        let zone = lock(&shared.zone);
        match zone.lookup(&qname, qtype) {
            Lookup::Answer(records) => {
                response.add_answers(records);
            }
            Lookup::NoData => {
                response.add_name_server(soa(&zone, &qname));
            }
            Lookup::NxDomain => {
                response.set_response_code(ResponseCode::NXDomain);
                response.add_name_server(soa(&zone, &qname));
            }
            Lookup::ServFail => {
                response.set_response_code(ResponseCode::ServFail);
            }
        }
    }
    let bytes = response.to_vec().ok()?;
    let limit = usize::from(request.max_payload().min(EDNS_PAYLOAD));
    if transport == Transport::Udp && bytes.len() > limit {
        // RFC 1035 4.2.1: too big for UDP, set TC and let the client retry over TCP.
        response.answers_mut().clear();
        response.name_servers_mut().clear();
        response.set_truncated(true);
        return response.to_vec().ok();
    }
    Some(bytes)
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = respond(&shared, &buf[..n], Transport::Udp) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in this set, so aborting the server aborts them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve_tcp_connection(stream, Arc::clone(&shared)));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        let Some(reply) = respond(&shared, &request, Transport::Tcp) else {
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = reply_len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::xfer::Protocol;
    use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use hickory_resolver::name_server::TokioConnectionProvider;
    use hickory_resolver::{Resolver, TokioResolver};
    use std::time::Duration;

    fn resolver(addr: SocketAddr, protocols: &[Protocol]) -> TokioResolver {
        let mut config = ResolverConfig::new();
        for p in protocols {
            config.add_name_server(NameServerConfig::new(addr, *p));
        }
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.attempts = 1;
        opts.timeout = Duration::from_secs(2);
        Resolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(opts)
            .build()
    }

    fn zone() -> Zone {
        Zone::new()
            .mx("example.test", 20, "mx2.example.test")
            .mx("example.test", 10, "mx1.example.test")
            .a("mx1.example.test", Ipv4Addr::new(127, 0, 9, 1))
            .a("mx2.example.test", Ipv4Addr::new(127, 0, 9, 2))
            .aaaa("mx2.example.test", Ipv6Addr::LOCALHOST)
            .null_mx("nomail.test")
            .txt("sel._domainkey.example.test", "v=DKIM1; k=rsa; p=abc")
            .cname("alias.example.test", "mx1.example.test")
            .servfail("broken.test")
    }

    async fn raw_query(addr: SocketAddr, name: &str, rtype: RecordType) -> Message {
        let mut request = Message::new();
        request
            .set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(dns_name(name), rtype));
        let socket = UdpSocket::bind(("127.0.0.1", 0)).await.expect("bind");
        socket
            .send_to(&request.to_vec().expect("encode"), addr)
            .await
            .expect("send");
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("answer in time")
            .expect("recv");
        Message::from_vec(&buf[..n]).expect("decode")
    }

    #[tokio::test]
    async fn resolver_gets_mx_records_over_udp() {
        let dns = DnsServer::start(zone()).await;
        let r = resolver(dns.addr(), &[Protocol::Udp]);
        let mx = r.mx_lookup("example.test.").await.expect("mx lookup");
        let mut got: Vec<(u16, String)> = mx
            .iter()
            .map(|m| (m.preference(), m.exchange().to_ascii()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (10, "mx1.example.test.".to_string()),
                (20, "mx2.example.test.".to_string())
            ]
        );
        assert_eq!(dns.query_count("example.test", RecordType::MX), 1);
        assert_eq!(dns.questions()[0].transport, Transport::Udp);
    }

    #[tokio::test]
    async fn resolver_gets_a_and_aaaa_over_tcp() {
        let dns = DnsServer::start(zone()).await;
        let r = resolver(dns.addr(), &[Protocol::Tcp]);
        let v4: Vec<_> = r
            .ipv4_lookup("mx2.example.test.")
            .await
            .expect("A lookup")
            .iter()
            .map(|a| a.0)
            .collect();
        assert_eq!(v4, vec![Ipv4Addr::new(127, 0, 9, 2)]);
        let v6: Vec<_> = r
            .ipv6_lookup("mx2.example.test.")
            .await
            .expect("AAAA lookup")
            .iter()
            .map(|a| a.0)
            .collect();
        assert_eq!(v6, vec![Ipv6Addr::LOCALHOST]);
        assert!(dns
            .questions()
            .iter()
            .all(|q| q.transport == Transport::Tcp));
    }

    #[tokio::test]
    async fn null_mx_is_served_as_root_exchange() {
        let dns = DnsServer::start(zone()).await;
        let r = resolver(dns.addr(), &[Protocol::Udp]);
        let mx = r.mx_lookup("nomail.test.").await.expect("mx lookup");
        let records: Vec<_> = mx.iter().collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].preference(), 0);
        assert!(records[0].exchange().is_root());
    }

    #[tokio::test]
    async fn unknown_name_is_nxdomain_and_known_name_without_type_is_empty() {
        let dns = DnsServer::start(zone()).await;
        let nx = raw_query(dns.addr(), "nothere.example.test", RecordType::MX).await;
        assert_eq!(nx.id(), 4242);
        assert_eq!(nx.response_code(), ResponseCode::NXDomain);
        assert_eq!(nx.name_servers()[0].record_type(), RecordType::SOA);
        let empty = raw_query(dns.addr(), "mx1.example.test", RecordType::MX).await;
        assert_eq!(empty.response_code(), ResponseCode::NoError);
        assert!(empty.answers().is_empty());
        assert_eq!(empty.name_servers()[0].record_type(), RecordType::SOA);
        let r = resolver(dns.addr(), &[Protocol::Udp]);
        let e = r
            .mx_lookup("nothere.example.test.")
            .await
            .expect_err("nxdomain");
        assert!(e.is_nx_domain(), "{e}");
        let e = r.mx_lookup("mx1.example.test.").await.expect_err("nodata");
        assert!(e.is_no_records_found() && !e.is_nx_domain(), "{e}");
    }

    #[tokio::test]
    async fn servfail_name_gets_servfail() {
        let dns = DnsServer::start(zone()).await;
        let m = raw_query(dns.addr(), "broken.test", RecordType::MX).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        dns.update(|z| z.set_servfail("broken.test", false));
        let m = raw_query(dns.addr(), "broken.test", RecordType::MX).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn ttl_is_configurable_and_records_can_change_while_running() {
        let dns =
            DnsServer::start(Zone::new().ttl(7).a("h.test", Ipv4Addr::new(127, 0, 9, 7))).await;
        let m = raw_query(dns.addr(), "h.test", RecordType::A).await;
        assert_eq!(m.answers()[0].ttl(), 7);
        dns.update(|z| {
            z.remove("h.test", RecordType::A);
            z.insert(
                "h.test",
                Some(99),
                RecordData::A(Ipv4Addr::new(127, 0, 9, 8)),
            );
        });
        let m = raw_query(dns.addr(), "H.Test", RecordType::A).await;
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].ttl(), 99);
        assert_eq!(
            m.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(127, 0, 9, 8)))
        );
        assert_eq!(dns.query_count("h.test", RecordType::A), 2);
        assert_eq!(dns.total_queries(), 2);
    }

    #[tokio::test]
    async fn cname_is_followed_within_the_zone() {
        let dns = DnsServer::start(zone()).await;
        let m = raw_query(dns.addr(), "alias.example.test", RecordType::A).await;
        let types: Vec<_> = m.answers().iter().map(|r| r.record_type()).collect();
        assert_eq!(types, vec![RecordType::CNAME, RecordType::A]);
    }

    #[tokio::test]
    async fn long_txt_is_truncated_over_udp_and_fetched_over_tcp() {
        let key = "k".repeat(1500);
        let dns = DnsServer::start(Zone::new().txt("big.test", &format!("v=DKIM1; p={key}"))).await;
        let r = resolver(dns.addr(), &[Protocol::Udp, Protocol::Tcp]);
        let txt = r.txt_lookup("big.test.").await.expect("txt lookup");
        let joined: Vec<u8> = txt
            .iter()
            .flat_map(|t| t.txt_data().iter().flat_map(|s| s.to_vec()))
            .collect();
        assert_eq!(joined, format!("v=DKIM1; p={key}").into_bytes());
        let transports: Vec<_> = dns.questions().iter().map(|q| q.transport).collect();
        assert!(transports.contains(&Transport::Udp), "{transports:?}");
        assert!(transports.contains(&Transport::Tcp), "{transports:?}");
    }

    #[tokio::test]
    async fn dropped_server_stops_answering() {
        let dns = DnsServer::start(zone()).await;
        let addr = dns.addr();
        drop(dns);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
