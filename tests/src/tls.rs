//! TLS for tests: a certificate authority made at test time (no key is ever committed), the
//! server certificates it issues, PEM files of them in a temp dir, and rustls configs for
//! sinks (servers) and test clients.
//!
//! ```no_run
//! # use relay_tests::tls::TestCa;
//! let ca = TestCa::new();
//! // A sink (or any rustls server) presenting a certificate for its MX name.
//! let server = ca.server_config(&["mx.example.test"]);
//! // Files for the relay's config: `[delivery] tls_ca_files = [ca]`, `[tls] cert/key`.
//! let files = ca.write_files(&["relay.test", "127.0.0.1"]);
//! println!("{} {} {}", files.ca.display(), files.cert.display(), files.key.display());
//! // A client that trusts only this CA (for the relay's inbound TLS).
//! let client = ca.client_config();
//! # let _ = (server, client);
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tempfile::TempDir;

/// The crypto provider of every test TLS config: *ring*, named explicitly, as the relay does.
#[allow(
    deprecated,
    reason = "ring is the workspace's provider; the deprecation is about post-quantum key exchange"
)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority for one test. Certificates it issues are valid from 1975 to 4096,
/// so no test depends on the clock.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

impl TestCa {
    /// A new CA ("relay test CA") with a fresh key.
    pub fn new() -> TestCa {
        TestCa::named("relay test CA")
    }

    /// A new CA with `common_name` as its subject (to tell several apart).
    pub fn named(common_name: &str) -> TestCa {
        let key = generate_key();
        let mut params = match CertificateParams::new(Vec::<String>::new()) {
            Ok(p) => p,
            Err(e) => panic!("CA parameters: {e}"),
        };
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = match params.self_signed(&key) {
            Ok(c) => c,
            Err(e) => panic!("cannot make the test CA: {e}"),
        };
        TestCa { cert, key }
    }

    /// The CA certificate as PEM (what `tls_ca_files` or a client's trust store takes).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `names`, signed by this CA: `(cert_chain_pem, key_pem)`.
    ///
    /// Each name becomes a subjectAltName: an IP address (`"127.0.0.1"`, `"::1"`) as an IP
    /// address SAN, anything else as a DNS name (`"mx.example.test"`, `"*.example.test"`).
    /// The chain is the server certificate alone (the CA is the trust anchor); the key is
    /// PKCS#8 ECDSA P-256.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = generate_key();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = match CertificateParams::new(names.clone()) {
            Ok(p) => p,
            Err(e) => panic!("certificate names {names:?}: {e}"),
        };
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        let cert = match params.signed_by(&key, &self.cert, &self.key) {
            Ok(c) => c,
            Err(e) => panic!("cannot issue a certificate for {names:?}: {e}"),
        };
        (cert.pem(), key.serialize_pem())
    }

    /// A rustls server config (TLS 1.2 and 1.3) presenting a fresh certificate for `names`.
    pub fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
        let (chain, key) = self.issue(names);
        server_config(&chain, &key)
    }

    /// A rustls client config (TLS 1.2 and 1.3) that trusts this CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        if let Err(e) = roots.add(self.cert_der()) {
            panic!("the test CA is not a usable trust anchor: {e}");
        }
        let builder = match ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        {
            Ok(b) => b,
            Err(e) => panic!("client config: {e}"),
        };
        Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
    }

    /// Writes `ca.pem` (this CA), `cert.pem` and `key.pem` (a certificate for `names`) into a
    /// new temp dir, removed when the returned [`TlsFiles`] is dropped.
    pub fn write_files(&self, names: &[&str]) -> TlsFiles {
        let dir = match tempfile::Builder::new().prefix("relay-tls-").tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir: {e}"),
        };
        let (chain, key) = self.issue(names);
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            dir,
        };
        for (path, text) in [
            (&files.ca, self.cert_pem()),
            (&files.cert, chain),
            (&files.key, key),
        ] {
            if let Err(e) = std::fs::write(path, text) {
                panic!("cannot write {}: {e}", path.display());
            }
        }
        files
    }
}

/// PEM files in a temp dir (see [`TestCa::write_files`]); dropping this removes them.
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    dir: TempDir,
}

impl TlsFiles {
    /// The directory holding the files (more may be written there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path as a TOML string, for configs (`tls_ca_files = [..]`, `cert = ..`).
    pub fn toml(path: &Path) -> String {
        crate::config::toml_str(&path.display().to_string())
    }
}

/// A rustls server config (TLS 1.2 and 1.3, *ring*) from PEM text: the certificate chain
/// (server certificate first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert_chain_pem: &str, key_pem: &str) -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes()).collect() {
            Ok(c) => c,
            Err(e) => panic!("certificate chain PEM: {e}"),
        };
    let key = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) {
        Ok(k) => k,
        Err(e) => panic!("private key PEM: {e}"),
    };
    let builder = match ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    {
        Ok(b) => b,
        Err(e) => panic!("server config: {e}"),
    };
    match builder.with_no_client_auth().with_single_cert(chain, key) {
        Ok(config) => Arc::new(config),
        Err(e) => panic!("server config: {e}"),
    }
}

fn generate_key() -> KeyPair {
    match KeyPair::generate() {
        Ok(k) => k,
        Err(e) => panic!("cannot generate a key: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Handshakes `client` with a server presenting `server`, as `name`; returns the error text.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<(), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let serving = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.ok()?;
            let mut tls = tokio_rustls::TlsAcceptor::from(server)
                .accept(stream)
                .await
                .ok()?;
            tls.write_all(b"hello").await.ok()?;
            tls.shutdown().await.ok()
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, stream)
            .await
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
        assert_eq!(got, b"hello");
        let _ = serving.await;
        Ok(())
    }

    #[tokio::test]
    async fn issued_certificates_verify_for_their_names_only() {
        let ca = TestCa::new();
        let server = ca.server_config(&["mx.one.test", "127.0.0.1"]);
        handshake(server.clone(), ca.client_config(), "mx.one.test")
            .await
            .expect("DNS name");
        handshake(server.clone(), ca.client_config(), "127.0.0.1")
            .await
            .expect("IP address");
        let err = handshake(server, ca.client_config(), "mx.two.test")
            .await
            .expect_err("another name");
        assert!(err.contains("not valid for name"), "{err}");
        let stranger = TestCa::named("stranger");
        let err = handshake(
            ca.server_config(&["mx.one.test"]),
            stranger.client_config(),
            "mx.one.test",
        )
        .await
        .expect_err("another CA");
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[test]
    fn written_files_hold_pem_that_parses_back() {
        let ca = TestCa::new();
        let files = ca.write_files(&["relay.test"]);
        assert!(files.ca.starts_with(files.dir()));
        let ca_pem = std::fs::read_to_string(&files.ca).expect("ca");
        assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let chain = std::fs::read_to_string(&files.cert).expect("cert");
        let key = std::fs::read_to_string(&files.key).expect("key");
        assert!(key.contains("PRIVATE KEY"));
        let _ = server_config(&chain, &key);
        assert!(TlsFiles::toml(&files.ca).starts_with('"'));
        let dir = files.dir().to_path_buf();
        drop(files);
        assert!(!dir.exists(), "the temp dir goes with the files");
    }
}
