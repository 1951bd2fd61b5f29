//! Inbound TLS: the server certificate, reloaded when its files change, and the rustls server
//! configuration that STARTTLS and implicit-TLS listeners share.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CommonState, ProtocolVersion, ServerConfig};

/// How often the certificate files are checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// A certificate or key that cannot be used, naming the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("{path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("{key} is not the private key of the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Reads a PEM certificate chain and private key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Certificate {
            path: cert.to_path_buf(),
            reason: format!("not a valid PEM certificate chain: {err}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_path_buf(),
            reason: "no certificate found (expected -----BEGIN CERTIFICATE-----)".to_string(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| TlsError::Key {
        path: key.to_path_buf(),
        reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {err}"),
    })?;
    let signing_key = ring::sign::any_supported_type(&key_der).map_err(|err| TlsError::Key {
        path: key.to_path_buf(),
        reason: format!("unsupported private key: {err}"),
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    })?;
    Ok(certified)
}

/// What a file looked like when it was last loaded: a change of either means a reload.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The certificate the listeners present, replaced when its files change.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<Stamps>,
}

/// The certificate and key files as last loaded, and as last refused (so that a bad pair is
/// logged once, not every second).
struct Stamps {
    loaded: (Stamp, Stamp),
    refused: Option<(Stamp, Stamp)>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the certificate and key; an error here stops the relay from starting.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let stamps = (stamp(cert), stamp(key));
        let certified = load_certified_key(cert, key)?;
        Ok(Arc::new(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(certified)),
            stamps: Mutex::new(Stamps {
                loaded: stamps,
                refused: None,
            }),
        }))
    }

    /// Reloads the pair if either file changed since it was loaded. A pair that does not load
    /// (a half-written renewal, a key that does not match yet) leaves the current certificate
    /// in use and is tried again at the next change. Returns true when a new one took over.
    pub fn reload_if_changed(&self) -> bool {
        let now = (stamp(&self.cert), stamp(&self.key));
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if stamps.loaded == now || stamps.refused == Some(now) {
            return false;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
                *stamps = Stamps {
                    loaded: now,
                    refused: None,
                };
                tracing::info!(event = "tls_certificate_reloaded", cert = %self.cert.display(), "using the changed certificate for new connections");
                true
            }
            Err(err) => {
                stamps.refused = Some(now);
                tracing::error!(event = "tls_certificate_refused", error = %err, "the changed certificate files cannot be used; keeping the previous certificate");
                false
            }
        }
    }

    /// Checks the files about once a second for as long as the relay runs.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let store = Arc::clone(&store);
                // Reading files is blocking I/O.
                let _ = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
            }
        })
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// The crypto provider of every TLS connection, inbound and outbound: ring, which builds with
/// the C compiler alone (aws-lc-rs would also need cmake). rustls marks ring's provider
/// deprecated because it lacks the post-quantum key exchange, which SMTP peers do not use yet.
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The server configuration: TLS 1.2 and 1.3 only, the ring provider, the store's
/// certificate, and session tickets so that returning clients skip the full handshake.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.ticketer = ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// `TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256`, for logs and the Received header.
pub fn describe(state: &CommonState) -> String {
    let version = match state.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    match state.negotiated_cipher_suite() {
        Some(suite) => {
            let name = suite.suite();
            let name = name
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{name:?}"));
            format!("{version} with cipher {name}")
        }
        None => version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    #[test]
    fn a_matching_pair_loads_and_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), &["mx.test"]);
        assert!(load_certified_key(&cert, &key).is_ok());

        let missing = dir.path().join("nope.pem");
        let err = load_certified_key(&missing, &key).expect_err("missing file");
        assert!(err.to_string().contains("nope.pem: cannot read"), "{err}");

        std::fs::write(dir.path().join("empty.pem"), "hello\n").expect("write");
        let err = load_certified_key(&dir.path().join("empty.pem"), &key).expect_err("no cert");
        assert!(err.to_string().contains("no certificate found"), "{err}");
        let err = load_certified_key(&cert, &dir.path().join("empty.pem")).expect_err("no key");
        assert!(err.to_string().contains("no usable private key"), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        let (cert, _) = write_pair(one.path(), &["a.test"]);
        let (_, other_key) = write_pair(two.path(), &["b.test"]);
        let err = load_certified_key(&cert, &other_key).expect_err("mismatch");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn a_changed_pair_replaces_the_certificate_and_a_bad_one_is_kept_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), &["old.test"]);
        let store = CertStore::open(&cert, &key).expect("open");
        let first = store.current.read().unwrap().cert[0].clone();
        assert!(!store.reload_if_changed(), "nothing changed");

        // A renewal that wrote the certificate but not yet its key: refused, old one kept.
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let (new_cert, new_key) = write_pair(elsewhere.path(), &["new.test"]);
        std::fs::copy(&new_cert, &cert).expect("copy");
        bump_mtime(&cert);
        assert!(!store.reload_if_changed());
        assert_eq!(store.current.read().unwrap().cert[0], first);

        std::fs::copy(&new_key, &key).expect("copy");
        bump_mtime(&key);
        assert!(store.reload_if_changed(), "the complete pair is taken");
        assert_ne!(store.current.read().unwrap().cert[0], first);
    }

    /// Moves a file's mtime forward, so a change within the same clock tick is seen.
    fn bump_mtime(path: &Path) {
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        let later = SystemTime::now() + Duration::from_secs(5);
        file.set_modified(later).expect("set mtime");
    }
}
