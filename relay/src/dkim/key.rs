//! Signing keys: loading PEM files, the public key and its DNS record, generating new keys.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::der;
use super::DkimError;

/// The smallest RSA key accepted: RFC 8301 3.2 forbids signing with fewer than 1024 bits and
/// receivers increasingly treat 1024 as weak; 2048 is what every guide publishes.
pub const MIN_RSA_BITS: usize = 2048;

/// The largest RSA key accepted: ring signs with keys up to 4096 bits.
pub const MAX_RSA_BITS: usize = 4096;

/// The RSA sizes `relay dkim keygen` makes.
pub const RSA_KEYGEN_BITS: [usize; 3] = [2048, 3072, 4096];

/// The type of a DKIM key: the `k=` tag of its DNS record (RFC 6376 3.6.1, RFC 8463).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// RSA, signing with `rsa-sha256`.
    Rsa,
    /// Ed25519, signing with `ed25519-sha256` (RFC 8463).
    Ed25519,
}

impl KeyAlgorithm {
    /// The `k=` value: `rsa` or `ed25519`.
    pub fn key_type(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa => "rsa",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }

    /// The signature algorithm, the `a=` value: `rsa-sha256` or `ed25519-sha256`.
    pub fn signing_algorithm(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa => "rsa-sha256",
            KeyAlgorithm::Ed25519 => "ed25519-sha256",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key_type())
    }
}

/// A DKIM public key, as a DNS record publishes it.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: KeyAlgorithm,
    /// RSA: the RSAPublicKey DER (RFC 8017 A.1.1); Ed25519: the 32 key bytes (RFC 8032 5.1.5).
    key: Vec<u8>,
}

impl PublicKey {
    /// A public key from its parts: for RSA the RSAPublicKey DER, for Ed25519 the 32 bytes.
    pub(super) fn new(algorithm: KeyAlgorithm, key: Vec<u8>) -> PublicKey {
        PublicKey { algorithm, key }
    }

    /// The key type.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The key bytes compared by [`check`](super::check): for RSA the RSAPublicKey DER, for
    /// Ed25519 the 32 raw bytes.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key
    }

    /// The key size in bits: the RSA modulus, or 256 for Ed25519.
    pub fn bits(&self) -> usize {
        match self.algorithm {
            KeyAlgorithm::Rsa => der::rsa_public_key_bits(&self.key).unwrap_or(0),
            KeyAlgorithm::Ed25519 => 256,
        }
    }

    /// The `p=` value: base64 of the SubjectPublicKeyInfo for RSA (what `openssl rsa -pubout`
    /// and opendkim-genkey publish), of the bare 32 bytes for Ed25519 (RFC 8463 4).
    pub fn p_value(&self) -> String {
        match self.algorithm {
            KeyAlgorithm::Rsa => BASE64.encode(der::rsa_spki(&self.key)),
            KeyAlgorithm::Ed25519 => BASE64.encode(&self.key),
        }
    }

    /// The TXT record value to publish at `SELECTOR._domainkey.DOMAIN`:
    /// `v=DKIM1; k=rsa; p=BASE64` (or `k=ed25519`).
    pub fn txt(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.key_type(),
            self.p_value()
        )
    }

    /// The record as one zone-file line, its text split into quoted strings of at most 255
    /// bytes (RFC 1035 3.3.14; RFC 6376 3.6.2.2 joins them back without spaces):
    /// `S._domainkey.D. IN TXT ( "v=DKIM1; k=rsa; " "p=..." )`.
    pub fn zone_file_line(&self, selector: &str, domain: &str) -> String {
        let head = format!("v=DKIM1; k={}; ", self.algorithm.key_type());
        let p = format!("p={}", self.p_value());
        let mut strings = vec![head];
        // Base64 is ASCII, so byte chunks are character chunks.
        strings.extend(
            p.as_bytes()
                .chunks(255)
                .map(|chunk| String::from_utf8_lossy(chunk).into_owned()),
        );
        let quoted: Vec<String> = strings.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            "{}. IN TXT ( {} )",
            super::record_name(selector, domain.trim_end_matches('.')),
            quoted.join(" ")
        )
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.txt())
    }
}

/// The signing half, as mail-auth wants it.
pub(super) enum Signer {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// A DKIM private key: RSA (2048 to 4096 bits) or Ed25519, loaded from a PEM file.
pub struct DkimKey {
    signer: Signer,
    public: PublicKey,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half.
        f.debug_struct("DkimKey")
            .field("algorithm", &self.public.algorithm)
            .field("bits", &self.public.bits())
            .finish_non_exhaustive()
    }
}

impl DkimKey {
    /// Loads a PEM private key: RSA as PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8 (`BEGIN
    /// PRIVATE KEY`), at least 2048 bits; or Ed25519 as PKCS#8 (v1 from OpenSSL, or v2). Errors
    /// name the file and the reason.
    pub fn load(path: &Path) -> Result<DkimKey, DkimError> {
        let file = path.display().to_string();
        let bytes = fs::read(path).map_err(|source| DkimError::Read {
            file: file.clone(),
            source,
        })?;
        DkimKey::from_pem(&bytes, &file)
    }

    /// Parses PEM text as [`DkimKey::load`] does; `origin` names it in errors.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<DkimKey, DkimError> {
        let file = origin.to_string();
        let text = String::from_utf8_lossy(pem);
        // The PEM parser skips blocks it does not know, so an encrypted key would otherwise
        // look like "no key here".
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || text.contains("ENCRYPTED\n") {
            return Err(DkimError::EncryptedKey { file });
        }
        let parsed = match PrivateKeyDer::from_pem_slice(pem) {
            Ok(parsed) => parsed,
            Err(pem::Error::NoItemsFound) => {
                return Err(DkimError::NotPem {
                    file,
                    found: first_pem_label(&text),
                })
            }
            Err(err) => {
                return Err(DkimError::InvalidKey {
                    file,
                    reason: format!("malformed PEM: {err}"),
                })
            }
        };
        match parsed {
            PrivateKeyDer::Pkcs1(der) => rsa_key(file, PrivateKeyDer::Pkcs1(der)),
            PrivateKeyDer::Pkcs8(der) => match der::pkcs8(der.secret_pkcs8_der()) {
                Some(der::Pkcs8::Rsa(_)) => rsa_key(file, PrivateKeyDer::Pkcs8(der)),
                Some(der::Pkcs8::Ed25519(_)) => ed25519_key(file, &der),
                Some(der::Pkcs8::Other(what)) => Err(DkimError::UnsupportedKey { file, what }),
                None => Err(DkimError::InvalidKey {
                    file,
                    reason: "the PRIVATE KEY block is not PKCS#8 (RFC 5208)".to_string(),
                }),
            },
            PrivateKeyDer::Sec1(_) => Err(DkimError::UnsupportedKey {
                file,
                what: "an EC (ECDSA) key".to_string(),
            }),
            _ => Err(DkimError::UnsupportedKey {
                file,
                what: "a key of an unknown format".to_string(),
            }),
        }
    }

    /// The signature algorithm, the `a=` value: `rsa-sha256` or `ed25519-sha256`.
    pub fn algorithm(&self) -> &'static str {
        self.public.algorithm.signing_algorithm()
    }

    /// The key type (`k=`).
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.public.algorithm
    }

    /// The key size in bits: the RSA modulus, or 256 for Ed25519.
    pub fn bits(&self) -> usize {
        self.public.bits()
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The DNS TXT record value to publish: `v=DKIM1; k=rsa; p=BASE64` (or `k=ed25519`).
    pub fn public_key_txt(&self) -> String {
        self.public.txt()
    }

    pub(super) fn signer(&self) -> &Signer {
        &self.signer
    }
}

/// An RSA key after the size check; ring validates the rest.
fn rsa_key(file: String, der: PrivateKeyDer<'_>) -> Result<DkimKey, DkimError> {
    let pkcs1 = match &der {
        PrivateKeyDer::Pkcs1(key) => Some(key.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(key) => match der::pkcs8(key.secret_pkcs8_der()) {
            Some(der::Pkcs8::Rsa(inner)) => Some(inner),
            _ => None,
        },
        _ => None,
    };
    let Some(bits) = pkcs1.and_then(der::rsa_private_key_bits) else {
        return Err(DkimError::InvalidKey {
            file,
            reason: "not a valid RSA private key (RFC 8017 A.1.2)".to_string(),
        });
    };
    if bits < MIN_RSA_BITS {
        return Err(DkimError::RsaKeyTooSmall { file, bits });
    }
    if bits > MAX_RSA_BITS {
        return Err(DkimError::RsaKeyTooLarge { file, bits });
    }
    let key = RsaKey::<Sha256>::from_key_der(der).map_err(|err| DkimError::InvalidKey {
        file,
        reason: format!("not a valid RSA private key: {}", crypto_reason(err)),
    })?;
    let public = PublicKey::new(KeyAlgorithm::Rsa, key.public_key());
    Ok(DkimKey {
        signer: Signer::Rsa(key),
        public,
    })
}

fn ed25519_key(file: String, der: &PrivatePkcs8KeyDer<'_>) -> Result<DkimKey, DkimError> {
    // "maybe unchecked": also PKCS#8 v1 without the public key, which is what
    // `openssl genpkey -algorithm ed25519` writes; v2 keys still have their public key checked.
    let key =
        Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der()).map_err(|err| {
            DkimError::InvalidKey {
                file,
                reason: format!("not a valid Ed25519 private key: {}", crypto_reason(err)),
            }
        })?;
    let public = PublicKey::new(KeyAlgorithm::Ed25519, key.public_key());
    Ok(DkimKey {
        signer: Signer::Ed25519(key),
        public,
    })
}

/// ring's reason without mail-auth's "Cryptography layer error: " prefix.
fn crypto_reason(err: mail_auth::Error) -> String {
    match err {
        mail_auth::Error::CryptoError(reason) => reason,
        other => other.to_string(),
    }
}

/// The label of the first PEM block ("CERTIFICATE", "PUBLIC KEY"), to say what the file is.
fn first_pem_label(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let end = text[start..].find("-----")?;
    Some(text[start..start + end].to_string())
}

/// A freshly generated key: the PEM to store and the loaded key.
pub struct GeneratedKey {
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`; v1 for Ed25519), which OpenSSL and
    /// [`DkimKey::load`] read.
    pub pem: String,
    /// The same key, loaded.
    pub key: DkimKey,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Generates a key: Ed25519 (ring), or RSA of `rsa_bits` (one of [`RSA_KEYGEN_BITS`]; the
/// RustCrypto `rsa` crate, since ring cannot generate RSA keys). The randomness comes from the
/// operating system.
pub fn generate_key(algorithm: KeyAlgorithm, rsa_bits: usize) -> Result<GeneratedKey, DkimError> {
    let pkcs8 = match algorithm {
        KeyAlgorithm::Ed25519 => {
            let v2 = Ed25519Key::generate_pkcs8()
                .map_err(|err| DkimError::KeyGeneration(crypto_reason(err)))?;
            let seed = match der::pkcs8(&v2) {
                Some(der::Pkcs8::Ed25519(inner)) => der::ed25519_seed(inner),
                _ => None,
            };
            let Some(seed) = seed else {
                return Err(DkimError::KeyGeneration(
                    "ring returned an Ed25519 key in an unexpected form".to_string(),
                ));
            };
            der::ed25519_pkcs8_v1(seed)
        }
        KeyAlgorithm::Rsa => {
            if !RSA_KEYGEN_BITS.contains(&rsa_bits) {
                return Err(DkimError::KeyBits { bits: rsa_bits });
            }
            generate_rsa_pkcs8(rsa_bits)?
        }
    };
    let pem = pem_encode("PRIVATE KEY", &pkcs8);
    // Loading what we wrote proves the file will load in the relay.
    let key = DkimKey::from_pem(pem.as_bytes(), "the generated key")?;
    Ok(GeneratedKey { pem, key })
}

fn generate_rsa_pkcs8(bits: usize) -> Result<Vec<u8>, DkimError> {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|err| DkimError::KeyGeneration(err.to_string()))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|err| DkimError::KeyGeneration(err.to_string()))?;
    Ok(der.as_bytes().to_vec())
}

/// RFC 7468 text: base64 in lines of 64 characters between BEGIN and END lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Writes a private key file with mode 0600. Without `replace`, an existing file is an error
/// ([`DkimError::KeyFileExists`]) and is left alone; with it, the new file is written beside
/// the old one and renamed over it, so a reader never sees half a key.
pub fn write_key_file(path: &Path, pem: &str, replace: bool) -> Result<(), DkimError> {
    let file = path.display().to_string();
    let fail = |action: &str, source: io::Error| DkimError::Write {
        file: file.clone(),
        action: action.to_string(),
        source,
    };
    if !replace {
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    DkimError::KeyFileExists { file: file.clone() }
                } else {
                    fail("cannot create the file", source)
                }
            })?;
        return out
            .write_all(pem.as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(|source| fail("cannot write the file", source));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|source| fail("cannot create a temporary file beside it", source))?;
        // The umask cannot widen 0600, but it could narrow it to something unreadable by us.
        out.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|source| fail("cannot set the mode", source))?;
        out.write_all(pem.as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(|source| fail("cannot write the temporary file", source))?;
        fs::rename(&temp, path).map_err(|source| fail("cannot replace the file", source))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Test keys, shared by the module's tests.
#[cfg(test)]
pub(super) mod fixtures {
    use std::sync::{Arc, OnceLock};

    use super::*;

    /// PKCS#1 and PKCS#8 PEM of one RSA key of `bits`, generated with the `rsa` crate.
    pub fn rsa_pems(bits: usize) -> (String, String) {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::EncodePrivateKey as _;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).expect("rsa keygen");
        let pkcs1 = key.to_pkcs1_der().expect("pkcs1");
        let pkcs8 = key.to_pkcs8_der().expect("pkcs8");
        (
            pem_encode("RSA PRIVATE KEY", pkcs1.as_bytes()),
            pem_encode("PRIVATE KEY", pkcs8.as_bytes()),
        )
    }

    /// One 2048-bit RSA key for the whole test run (generating one takes a while).
    pub fn rsa() -> Arc<DkimKey> {
        static KEY: OnceLock<String> = OnceLock::new();
        let pem = KEY.get_or_init(|| rsa_pems(2048).1);
        Arc::new(DkimKey::from_pem(pem.as_bytes(), "rsa test key").expect("rsa key"))
    }

    /// A new Ed25519 key.
    pub fn ed25519() -> Arc<DkimKey> {
        Arc::new(
            generate_key(KeyAlgorithm::Ed25519, 0)
                .expect("ed25519 keygen")
                .key,
        )
    }

    /// PEM text of any DER block.
    pub fn pem(label: &str, der: &[u8]) -> String {
        pem_encode(label, der)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).expect("write test key");
        path
    }

    #[test]
    fn rsa_keys_load_from_pkcs1_and_pkcs8_pem_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (pkcs1, pkcs8) = rsa_pems(2048);
        let one = DkimKey::load(&write(dir.path(), "pkcs1.pem", &pkcs1)).expect("pkcs1 loads");
        let eight = DkimKey::load(&write(dir.path(), "pkcs8.pem", &pkcs8)).expect("pkcs8 loads");
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert_eq!(one.algorithm(), "rsa-sha256");
        assert_eq!(one.key_algorithm(), KeyAlgorithm::Rsa);
        assert_eq!(one.bits(), 2048);
        assert_eq!(one.public_key(), eight.public_key());
        let txt = one.public_key_txt();
        assert!(txt.starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
    }

    #[test]
    fn rsa_public_record_is_the_spki_that_the_rsa_crate_derives() {
        use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
        let theirs = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa keygen");
        let pkcs8 = theirs.to_pkcs8_der().expect("pkcs8");
        let ours =
            DkimKey::from_pem(pem("PRIVATE KEY", pkcs8.as_bytes()).as_bytes(), "k").expect("loads");
        let spki = theirs
            .to_public_key()
            .to_public_key_der()
            .expect("spki der");
        assert_eq!(ours.public_key().p_value(), BASE64.encode(spki.as_bytes()));
    }

    #[test]
    fn ed25519_keys_load_from_pkcs8_v2_and_openssl_style_v1() {
        let dir = tempfile::tempdir().expect("temp dir");
        // ring writes PKCS#8 v2 (RFC 5958, with the public key).
        let ring_v2 = pem(
            "PRIVATE KEY",
            &Ed25519Key::generate_pkcs8().expect("keygen"),
        );
        let v2 = DkimKey::load(&write(dir.path(), "ed.pem", &ring_v2)).expect("v2 loads");
        assert_eq!(v2.algorithm(), "ed25519-sha256");
        assert_eq!(v2.bits(), 256);
        let txt = v2.public_key_txt();
        assert!(txt.starts_with("v=DKIM1; k=ed25519; p="), "{txt}");
        // RFC 8463: p= is the bare 32-byte key, 44 characters of base64.
        assert_eq!(txt.len(), "v=DKIM1; k=ed25519; p=".len() + 44);

        // RFC 8410 10.3's example key, as `openssl genpkey -algorithm ed25519` writes it
        // (PKCS#8 v1, no public key inside).
        let v1 = "-----BEGIN PRIVATE KEY-----\n\
                  MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                  -----END PRIVATE KEY-----\n";
        let key = DkimKey::load(&write(dir.path(), "v1.pem", v1)).expect("v1 loads");
        assert_eq!(
            key.public_key().p_value(),
            // RFC 8410 10.1's public key for that private key.
            "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
        );
    }

    #[test]
    fn keys_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<DkimKey>();
    }

    #[test]
    fn debug_output_never_shows_the_private_key() {
        let generated = generate_key(KeyAlgorithm::Ed25519, 0).expect("keygen");
        let shown = format!("{:?} {:?}", generated, generated.key);
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(shown.contains("Ed25519"), "{shown}");
    }

    #[test]
    fn generated_ed25519_key_is_pkcs8_v1_as_openssl_writes_it() {
        let generated = generate_key(KeyAlgorithm::Ed25519, 0).expect("keygen");
        let body: String = generated
            .pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        // 302e020100300506032b657004220420 + seed: RFC 8410 7 without the public key.
        assert!(
            body.starts_with("MC4CAQAwBQYDK2VwBCIEI"),
            "{}",
            generated.pem
        );
        let again = DkimKey::from_pem(generated.pem.as_bytes(), "again").expect("reloads");
        assert_eq!(again.public_key(), generated.key.public_key());
    }

    #[test]
    fn small_rsa_key_is_refused_naming_the_file_and_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (pkcs1, _) = rsa_pems(1024);
        let path = write(dir.path(), "weak.key", &pkcs1);
        let err = DkimKey::load(&path).expect_err("1024 bits refused");
        assert!(
            matches!(err, DkimError::RsaKeyTooSmall { bits: 1024, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        assert!(
            text.contains("1024 bits") && text.contains("2048"),
            "{text}"
        );
    }

    #[test]
    fn garbage_file_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "junk.key", "hello, I am not a key\n");
        let err = DkimKey::load(&path).expect_err("garbage refused");
        let text = err.to_string();
        assert!(
            matches!(err, DkimError::NotPem { found: None, .. }),
            "{err:?}"
        );
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        assert!(text.contains("BEGIN PRIVATE KEY"), "{text}");

        let broken = "-----BEGIN PRIVATE KEY-----\nnot base64!!\n-----END PRIVATE KEY-----\n";
        let err = DkimKey::from_pem(broken.as_bytes(), "b.key").expect_err("bad base64");
        assert!(err.to_string().starts_with("b.key: "), "{err}");
    }

    #[test]
    fn missing_file_error_names_it() {
        let err = DkimKey::load(Path::new("/nonexistent/dkim.key")).expect_err("missing");
        assert!(matches!(err, DkimError::Read { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("/nonexistent/dkim.key: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn other_key_kinds_are_refused_with_what_they_are() {
        let cert = pem("CERTIFICATE", &[0x30, 0x00]);
        let err = DkimKey::from_pem(cert.as_bytes(), "c.pem").expect_err("cert");
        assert!(err.to_string().contains("CERTIFICATE"), "{err}");

        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
        let err = DkimKey::from_pem(ec.serialize_pem().as_bytes(), "ec.pem").expect_err("ec");
        assert!(matches!(err, DkimError::UnsupportedKey { .. }), "{err:?}");
        assert!(err.to_string().contains("EC (ECDSA)"), "{err}");

        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = DkimKey::from_pem(encrypted.as_bytes(), "e.pem").expect_err("encrypted");
        assert!(matches!(err, DkimError::EncryptedKey { .. }), "{err:?}");
    }

    #[test]
    fn generated_keys_have_the_asked_size_and_reload() {
        let rsa = generate_key(KeyAlgorithm::Rsa, 2048).expect("rsa keygen");
        assert_eq!(rsa.key.bits(), 2048);
        assert!(rsa.pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = DkimKey::from_pem(rsa.pem.as_bytes(), "again").expect("reloads");
        assert_eq!(again.public_key(), rsa.key.public_key());
        let err = generate_key(KeyAlgorithm::Rsa, 1024).expect_err("1024 refused");
        assert!(err.to_string().contains("2048, 3072 or 4096"), "{err}");
    }

    #[test]
    fn key_file_is_private_and_not_overwritten_unless_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("d.s.key");
        write_key_file(&path, "first", false).expect("created");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = write_key_file(&path, "second", false).expect_err("exists");
        assert!(matches!(err, DkimError::KeyFileExists { .. }), "{err:?}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "first");
        write_key_file(&path, "third", true).expect("replaced");
        assert_eq!(fs::read_to_string(&path).expect("read"), "third");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers = fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[test]
    fn zone_file_line_splits_the_key_into_255_byte_strings() {
        let key = rsa();
        let line = key.public_key().zone_file_line("s1", "example.com");
        assert!(
            line.starts_with("s1._domainkey.example.com. IN TXT ( \"v=DKIM1; k=rsa; \" \"p="),
            "{line}"
        );
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(strings.iter().all(|s| s.len() <= 255), "{strings:?}");
        assert_eq!(strings.concat(), key.public_key_txt());
        assert!(line.ends_with("\" )"));
    }
}
