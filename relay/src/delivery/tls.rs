//! Outbound TLS: which STARTTLS policy applies to a destination, the rustls client configs
//! (built once at start), the name a certificate is checked against, and the handshake itself.
//!
//! Policies (`[delivery] tls`, `[[tls_policy]]`): `none` never sends STARTTLS; `opportunistic`
//! uses TLS when offered without checking the certificate (RFC 7435: any encryption beats
//! none, and most MX certificates would not verify anyway) and falls back to plain text when
//! TLS fails; `required` insists on TLS, still unverified; `verify` insists on TLS with a
//! certificate valid for the MX host name. The SMTP side of STARTTLS (RFC 3207) is in
//! [`super::client::Connection::starttls`].

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ClientConnection;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Config, PolicyDomain};
use crate::smtp::{EnhancedCode, Reply};

pub(crate) use crate::config::TlsPolicy;

/// The crypto provider of every outbound TLS session (the same as inbound's).
fn provider() -> Arc<CryptoProvider> {
    crate::tls::crypto_provider()
}

/// The TLS policies and client configs for deliveries, built once when delivery starts.
pub(crate) struct TlsSettings {
    default: TlsPolicy,
    /// `[[tls_policy]]` rules: exact domains are matched before `*.` wildcards.
    rules: Vec<(PolicyDomain, TlsPolicy)>,
    /// For `opportunistic` and `required`: any certificate, handshake signatures still checked.
    unverified: Arc<ClientConfig>,
    /// For `verify`: the web PKI roots plus `[delivery] tls_ca_files`.
    verified: Arc<ClientConfig>,
}

impl TlsSettings {
    /// Builds both client configs from `[delivery]` and the `[[tls_policy]]` rules.
    pub(crate) fn from_config(config: &Config) -> TlsSettings {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for file in &config.delivery.tls_ca_files {
            // Each certificate was checked to be a usable trust anchor when the config loaded.
            roots.add_parsable_certificates(file.certs.iter().cloned());
        }
        let provider = provider();
        let unverified = AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        };
        TlsSettings {
            default: config.delivery.tls,
            rules: config
                .tls_policies
                .iter()
                .map(|rule| (rule.domain.clone(), rule.policy))
                .collect(),
            unverified: Arc::new(
                builder(&provider)
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(unverified))
                    .with_no_client_auth(),
            ),
            verified: Arc::new(
                builder(&provider)
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ),
        }
    }

    /// The policy for a recipient domain: its exact `[[tls_policy]]`, else the longest matching
    /// `*.` rule, else `[delivery] tls`.
    pub(crate) fn policy_for(&self, domain: &str) -> TlsPolicy {
        let domain = domain.trim_end_matches('.').to_lowercase();
        let exact = self
            .rules
            .iter()
            .find(|(rule, _)| matches!(rule, PolicyDomain::Exact(_)) && rule.matches(&domain));
        let wildcard = || {
            self.rules
                .iter()
                .filter(|(rule, _)| rule.matches(&domain))
                .max_by_key(|(rule, _)| match rule {
                    PolicyDomain::Subdomains(parent) => parent.len(),
                    PolicyDomain::Exact(_) => 0,
                })
        };
        exact
            .or_else(wildcard)
            .map_or(self.default, |(_, policy)| *policy)
    }

    /// What STARTTLS should do under `policy` with the MX `host` (a DNS name, an IP address,
    /// or an address literal such as `[192.0.2.1]`) at `ip`; `None` for `none`. Under `verify`
    /// a host that is neither a DNS name nor an IP address cannot be verified: an error.
    pub(crate) fn request(
        &self,
        policy: TlsPolicy,
        host: &str,
        ip: IpAddr,
    ) -> Result<Option<StartTls>, TlsFailure> {
        let peer = describe_peer(host, ip);
        let (config, verified) = match policy {
            TlsPolicy::None => return Ok(None),
            TlsPolicy::Opportunistic | TlsPolicy::Required => (&self.unverified, false),
            TlsPolicy::Verify => (&self.verified, true),
        };
        let name = match server_name(host) {
            Some(name) => name,
            // Without verification the name only goes into SNI; an address sends none.
            None if !verified => ServerName::IpAddress(ip.into()),
            None => {
                return Err(TlsFailure::Certificate {
                    peer,
                    reason: format!("\"{host}\" is neither a DNS name nor an IP address to check the certificate against"),
                })
            }
        };
        Ok(Some(StartTls {
            config: Arc::clone(config),
            name,
            peer,
            verified,
        }))
    }
}

/// TLS 1.3 and 1.2 only, with *ring*.
fn builder(
    provider: &Arc<CryptoProvider>,
) -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // Only fails when the provider has no suite for these versions; ring has both.
        .expect("the ring provider supports TLS 1.2 and 1.3")
}

/// The name a certificate is checked against: the host as a DNS name, or the IP address of
/// an address literal or a bare IP (which only an IP address SAN matches).
fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_end_matches('.');
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // RFC 5321 4.1.3: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
        let bare = inner
            .strip_prefix("IPv6:")
            .or_else(|| inner.strip_prefix("ipv6:"))
            .unwrap_or(inner);
        return bare
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).ok()
}

/// `mx.example.com [192.0.2.1]`, or just the address when the host is one.
fn describe_peer(host: &str, ip: IpAddr) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || bare.parse::<IpAddr>().is_ok_and(|h| h == ip) {
        ip.to_string()
    } else {
        format!("{host} [{ip}]")
    }
}

/// One STARTTLS to make: the client config of the policy and the name to send and check.
pub(crate) struct StartTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    /// The server as named in failures ("mx.example.com [192.0.2.1]").
    pub(crate) peer: String,
    /// True when the certificate is checked (`verify`).
    verified: bool,
}

/// What protects a TLS session, for logs and for deciding which deliveries may reuse it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub(crate) version: &'static str,
    /// The IANA-style suite name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub(crate) cipher: &'static str,
    /// True when the certificate was verified for the MX host name (`verify`).
    pub(crate) verified: bool,
}

impl TlsInfo {
    fn of(conn: &ClientConnection, verified: bool) -> TlsInfo {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown");
        TlsInfo {
            version,
            cipher,
            verified,
        }
    }
}

/// Why a session could not be protected by TLS.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TlsFailure {
    /// The policy requires TLS and the server's EHLO did not offer STARTTLS.
    #[error("TLS required by policy but {peer} offered no STARTTLS")]
    NotOffered {
        /// The server ("mx.example.com [192.0.2.1]").
        peer: String,
    },
    /// The server answered STARTTLS with something other than 220.
    #[error("{peer} refused STARTTLS: {reply}")]
    Refused {
        /// The server.
        peer: String,
        /// Its reply, on one line.
        reply: String,
    },
    /// Bytes followed the 220 before the handshake: they would be read as if they came over
    /// TLS (the STARTTLS command injection of CVE-2011-0411, from the other side).
    #[error("{peer} sent data after its STARTTLS reply, before the TLS handshake")]
    Injected {
        /// The server.
        peer: String,
    },
    /// The certificate was refused (`verify`), or the name to check it against is unusable.
    #[error("TLS certificate verification failed for {peer}: {reason}")]
    Certificate {
        /// The server.
        peer: String,
        /// Why, from rustls/webpki.
        reason: String,
    },
    /// The handshake failed for another reason (an alert, garbage, a closed connection).
    #[error("TLS handshake with {peer} failed: {reason}")]
    Handshake {
        /// The server.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The handshake did not finish in time.
    #[error("TLS handshake with {peer} timed out")]
    Timeout {
        /// The server.
        peer: String,
    },
}

impl TlsFailure {
    /// The reply recorded for the recipients: temporary (the policy, the certificate or the
    /// server may change), 4.7.5 (RFC 3463: cryptographic failure).
    pub(crate) fn to_reply(&self) -> Reply {
        Reply::new(451, Some(EnhancedCode(4, 7, 5)), self.to_string())
    }
}

/// Runs the TLS handshake on a session that has just had its 220 to STARTTLS, within `limit`.
pub(crate) async fn handshake<IO>(
    io: IO,
    request: &StartTls,
    limit: Duration,
) -> Result<(TlsStream<IO>, TlsInfo), TlsFailure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(Arc::clone(&request.config));
    let connect = connector.connect(request.name.clone(), io);
    match tokio::time::timeout(limit, connect).await {
        Ok(Ok(stream)) => {
            let info = TlsInfo::of(stream.get_ref().1, request.verified);
            Ok((stream, info))
        }
        Ok(Err(err)) => Err(classify(&err, &request.peer)),
        Err(_) => Err(TlsFailure::Timeout {
            peer: request.peer.clone(),
        }),
    }
}

/// Turns tokio-rustls' I/O error into a failure that says what went wrong.
fn classify(err: &io::Error, peer: &str) -> TlsFailure {
    let peer = peer.to_owned();
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(cert)) => TlsFailure::Certificate {
            peer,
            reason: describe_certificate_error(cert),
        },
        Some(other) => TlsFailure::Handshake {
            peer,
            reason: other.to_string(),
        },
        None if err.kind() == io::ErrorKind::UnexpectedEof => TlsFailure::Handshake {
            peer,
            reason: "the server closed the connection".to_owned(),
        },
        None => TlsFailure::Handshake {
            peer,
            reason: err.to_string(),
        },
    }
}

/// rustls' words, with the common cases spelt out for people reading a bounce.
fn describe_certificate_error(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => {
            "the certificate is not issued by a trusted CA (unknown issuer)".to_owned()
        }
        CertificateError::NotValidForName => {
            "the certificate is not valid for the host name".to_owned()
        }
        CertificateError::BadSignature => "the certificate's signature is invalid".to_owned(),
        other => other.to_string(),
    }
}

/// Accepts any certificate chain, but still checks that the server holds the key of the
/// certificate it sent (the handshake signatures): without the latter, the session would not
/// even be bound to one peer. For `opportunistic` and `required`, whose point is encryption
/// against passive observers, not authentication.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Certificates made at test time (no keys in the repository), and TLS servers to talk to.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ServerConfig, SupportedProtocolVersion};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::{provider, TlsSettings};
    use crate::config::Config;

    /// A certificate authority that issues server certificates.
    pub(crate) struct TestCa {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            TestCa { cert, key }
        }

        /// The CA certificate as PEM.
        pub(crate) fn pem(&self) -> String {
            self.cert.pem()
        }

        /// A server config (TLS 1.2 and 1.3) with a certificate for `names` (DNS names or IPs).
        pub(crate) fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
            self.server_config_for(names, &[&rustls::version::TLS13, &rustls::version::TLS12])
        }

        /// Like [`TestCa::server_config`], limited to `versions`.
        pub(crate) fn server_config_for(
            &self,
            names: &[&str],
            versions: &[&'static SupportedProtocolVersion],
        ) -> Arc<ServerConfig> {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            Arc::new(
                ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(versions)
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(vec![cert.der().clone()], key)
                    .unwrap(),
            )
        }
    }

    /// TLS settings from a `[delivery]` section body (and any further TOML after it).
    pub(crate) fn settings(delivery: &str) -> TlsSettings {
        let config = Config::parse(&format!("[delivery]\n{delivery}\n"), "t.toml").unwrap();
        TlsSettings::from_config(&config)
    }

    /// TLS settings whose `verify` trusts `ca` (its PEM written into `dir`).
    pub(crate) fn settings_trusting(ca: &TestCa, dir: &std::path::Path) -> TlsSettings {
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.pem()).unwrap();
        settings(&format!(
            "tls_ca_files = [{:?}]",
            path.display().to_string()
        ))
    }

    /// Accepts one connection and runs the server side of a handshake; the task ends with the
    /// handshake's result (then reads until the client closes).
    pub(crate) async fn tls_server(
        config: Arc<ServerConfig>,
    ) -> (SocketAddr, JoinHandle<Result<(), std::io::Error>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            let mut tls = tokio_rustls::TlsAcceptor::from(config)
                .accept(stream)
                .await?;
            let mut rest = Vec::new();
            let _ = tls.read_to_end(&mut rest).await;
            Ok(())
        });
        (addr, task)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::testing::{settings, settings_trusting, tls_server, TestCa};
    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);
    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    async fn connect(
        tls: &TlsSettings,
        policy: TlsPolicy,
        host: &str,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<TlsInfo, TlsFailure> {
        let (addr, _server) = tls_server(server).await;
        let request = tls.request(policy, host, addr.ip())?.expect("a TLS policy");
        let stream = TcpStream::connect(addr).await.unwrap();
        handshake(stream, &request, LIMIT)
            .await
            .map(|(_, info)| info)
    }

    #[test]
    fn policy_is_the_exact_rule_then_the_longest_wildcard_then_the_default() {
        let tls = settings(
            r#"tls = "none"
[[tls_policy]]
domain = "*.example.com"
policy = "required"
[[tls_policy]]
domain = "*.mail.example.com"
policy = "opportunistic"
[[tls_policy]]
domain = "bank.mail.example.com"
policy = "verify"
[[tls_policy]]
domain = "example.com"
policy = "verify""#,
        );
        assert_eq!(tls.policy_for("example.com"), TlsPolicy::Verify);
        assert_eq!(tls.policy_for("EXAMPLE.com."), TlsPolicy::Verify);
        assert_eq!(tls.policy_for("a.example.com"), TlsPolicy::Required);
        assert_eq!(
            tls.policy_for("x.mail.example.com"),
            TlsPolicy::Opportunistic
        );
        assert_eq!(tls.policy_for("bank.mail.example.com"), TlsPolicy::Verify);
        assert_eq!(tls.policy_for("notexample.com"), TlsPolicy::None);
        assert_eq!(tls.policy_for("other.test"), TlsPolicy::None);
        assert_eq!(
            settings("").policy_for("any.test"),
            TlsPolicy::Opportunistic
        );
    }

    #[test]
    fn certificates_are_checked_against_names_and_address_literals() {
        let name = |host| server_name(host).map(|n| n.to_str().into_owned());
        assert_eq!(name("mx.example.com").as_deref(), Some("mx.example.com"));
        assert_eq!(name("mx.example.com.").as_deref(), Some("mx.example.com"));
        assert_eq!(name("192.0.2.1").as_deref(), Some("192.0.2.1"));
        assert_eq!(name("[192.0.2.1]").as_deref(), Some("192.0.2.1"));
        assert_eq!(name("[IPv6:2001:db8::1]").as_deref(), Some("2001:db8::1"));
        assert_eq!(name("[not an address]"), None);
        assert!(matches!(
            server_name("[IPv6:2001:db8::1]"),
            Some(ServerName::IpAddress(_))
        ));
    }

    #[test]
    fn none_asks_for_no_starttls_and_verify_refuses_a_host_it_cannot_check() {
        let tls = settings("");
        assert!(tls
            .request(TlsPolicy::None, "mx.test", LOCALHOST)
            .unwrap()
            .is_none());
        let request = tls
            .request(TlsPolicy::Opportunistic, "[bogus]", LOCALHOST)
            .unwrap()
            .unwrap();
        assert_eq!(request.peer, "[bogus] [127.0.0.1]");
        match tls.request(TlsPolicy::Verify, "[bogus]", LOCALHOST) {
            Err(TlsFailure::Certificate { reason, .. }) => {
                assert!(reason.contains("neither a DNS name"), "{reason}")
            }
            other => panic!("{:?}", other.map(|r| r.map(|r| r.peer))),
        }
    }

    #[tokio::test]
    async fn opportunistic_takes_any_certificate_and_reports_the_session() {
        let untrusted = TestCa::new("Untrusted CA");
        let info = connect(
            &settings(""),
            TlsPolicy::Opportunistic,
            "mx.test",
            untrusted.server_config(&["someone-else.test"]),
        )
        .await
        .unwrap();
        assert_eq!(info.version, "TLSv1.3");
        assert!(info.cipher.starts_with("TLS13_"), "{}", info.cipher);
        assert!(!info.verified);
    }

    #[tokio::test]
    async fn a_tls12_only_server_is_reported_as_tls12() {
        let ca = TestCa::new("CA");
        let server = ca.server_config_for(&["mx.test"], &[&rustls::version::TLS12]);
        let info = connect(&settings(""), TlsPolicy::Required, "mx.test", server)
            .await
            .unwrap();
        assert_eq!(info.version, "TLSv1.2");
        assert!(info.cipher.starts_with("TLS_ECDHE_"), "{}", info.cipher);
    }

    #[tokio::test]
    async fn verify_accepts_a_certificate_for_the_mx_name_from_a_configured_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Test CA");
        let tls = settings_trusting(&ca, dir.path());
        let info = connect(
            &tls,
            TlsPolicy::Verify,
            "mx.test",
            ca.server_config(&["mx.test"]),
        )
        .await
        .unwrap();
        assert!(info.verified);
    }

    #[tokio::test]
    async fn verify_refuses_a_certificate_for_another_name_and_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Test CA");
        let tls = settings_trusting(&ca, dir.path());
        let failure = connect(
            &tls,
            TlsPolicy::Verify,
            "mx.test",
            ca.server_config(&["wrong.test"]),
        )
        .await
        .unwrap_err();
        let TlsFailure::Certificate { peer, reason } = &failure else {
            panic!("{failure:?}");
        };
        assert!(peer.starts_with("mx.test [127.0.0.1]"), "{peer}");
        assert!(
            reason.contains("mx.test") && reason.contains("wrong.test"),
            "{reason}"
        );
        let reply = failure.to_reply();
        assert_eq!(
            (reply.code, reply.enhanced),
            (451, Some(EnhancedCode(4, 7, 5)))
        );
        assert!(reply.lines[0].starts_with("TLS certificate verification failed for mx.test"));
    }

    #[tokio::test]
    async fn verify_refuses_a_certificate_from_an_unknown_ca() {
        let stranger = TestCa::new("Stranger CA");
        let failure = connect(
            &settings(""),
            TlsPolicy::Verify,
            "mx.test",
            stranger.server_config(&["mx.test"]),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&failure, TlsFailure::Certificate { reason, .. } if reason.contains("unknown issuer")),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn verify_of_a_bare_ip_needs_an_ip_address_in_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Test CA");
        let tls = settings_trusting(&ca, dir.path());
        let info = connect(
            &tls,
            TlsPolicy::Verify,
            "127.0.0.1",
            ca.server_config(&["mx.test", "127.0.0.1"]),
        )
        .await
        .unwrap();
        assert!(info.verified);
        let failure = connect(
            &tls,
            TlsPolicy::Verify,
            "127.0.0.1",
            ca.server_config(&["mx.test"]),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&failure, TlsFailure::Certificate { peer, .. } if peer == "127.0.0.1"),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_a_handshake_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.write_all(b"250 this is not TLS\r\n").await;
        });
        let request = settings("")
            .request(TlsPolicy::Opportunistic, "mx.test", addr.ip())
            .unwrap()
            .unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let failure = handshake(stream, &request, LIMIT).await.unwrap_err();
        assert!(
            matches!(&failure, TlsFailure::Handshake { .. }),
            "{failure:?}"
        );
        assert!(failure
            .to_string()
            .starts_with("TLS handshake with mx.test"));
    }

    #[tokio::test]
    async fn a_silent_server_times_the_handshake_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        });
        let request = settings("")
            .request(TlsPolicy::Required, "mx.test", addr.ip())
            .unwrap()
            .unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let failure = handshake(stream, &request, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(failure, TlsFailure::Timeout { .. }), "{failure:?}");
    }
}
