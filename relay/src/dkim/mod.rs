//! DKIM (RFC 6376; Ed25519 keys per RFC 8463) on top of mail-auth: signing keys and their DNS
//! records ([`DkimKey`], [`generate_key`]), signatures ([`sign`] with a [`SignerSpec`]), and
//! checking what DNS publishes ([`check`], [`lookup_key_record`]) for `relay dkim`.
//!
//! Signing is pure: bytes and a clock value in, a header field out. The relay calls [`sign`]
//! when it accepts a message and prepends the field before queueing it, so retries send the
//! same signed bytes.

mod check;
mod der;
mod key;
mod sign;

pub use check::{check, lookup_key_record, record_name, TxtAnswer, Verdict};
pub use key::{
    generate_key, write_key_file, DkimKey, GeneratedKey, KeyAlgorithm, PublicKey, MAX_RSA_BITS,
    MIN_RSA_BITS, RSA_KEYGEN_BITS,
};
pub(crate) use sign::{is_dns_name, is_field_name};
pub use sign::{sign, Canon, Canonicalization, SignerSpec, DEFAULT_HEADERS};

/// Why a key could not be loaded, generated or written, or a message not signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The key file.
        file: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file holds no PEM private key.
    #[error(
        "{file}: not a PEM private key{}; expected -----BEGIN PRIVATE KEY----- (PKCS#8) or \
         -----BEGIN RSA PRIVATE KEY----- (PKCS#1), as `relay dkim keygen` writes",
        found.as_ref().map(|label| format!(" (it holds a {label})")).unwrap_or_default()
    )]
    NotPem {
        /// The key file.
        file: String,
        /// The label of the PEM block found instead (`CERTIFICATE`, `PUBLIC KEY`), if any.
        found: Option<String>,
    },
    /// The key is encrypted with a passphrase.
    #[error(
        "{file}: the private key is encrypted; the relay needs it unencrypted (e.g. `openssl \
         pkey -in {file} -out NEW.key`), in a file only the relay's user can read"
    )]
    EncryptedKey {
        /// The key file.
        file: String,
    },
    /// A key of a type DKIM does not sign with.
    #[error("{file}: {what}; DKIM signs with RSA (rsa-sha256) or Ed25519 (ed25519-sha256) keys")]
    UnsupportedKey {
        /// The key file.
        file: String,
        /// What it holds, for a person ("an EC (ECDSA) key").
        what: String,
    },
    /// An RSA key below [`MIN_RSA_BITS`].
    #[error(
        "{file}: the RSA key has {bits} bits; at least 2048 are required (RFC 8301 and receivers \
         that treat 1024 as weak); make a new one with `relay dkim keygen`"
    )]
    RsaKeyTooSmall {
        /// The key file.
        file: String,
        /// The modulus size.
        bits: usize,
    },
    /// An RSA key above [`MAX_RSA_BITS`].
    #[error("{file}: the RSA key has {bits} bits; at most 4096 are supported")]
    RsaKeyTooLarge {
        /// The key file.
        file: String,
        /// The modulus size.
        bits: usize,
    },
    /// The key is damaged or not what its PEM label says.
    #[error("{file}: {reason}")]
    InvalidKey {
        /// The key file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// An RSA size `relay dkim keygen` does not make.
    #[error("RSA keys are 2048, 3072 or 4096 bits, not {bits}")]
    KeyBits {
        /// The size asked for.
        bits: usize,
    },
    /// Key generation failed (no randomness from the operating system).
    #[error("cannot generate the key: {0}")]
    KeyGeneration(String),
    /// The key file exists and was not to be replaced.
    #[error("{file}: already exists; it was left as it is")]
    KeyFileExists {
        /// The key file.
        file: String,
    },
    /// Writing the key file failed.
    #[error("{file}: {action}: {source}")]
    Write {
        /// The key file.
        file: String,
        /// The step that failed.
        action: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A `c=` value that is not one of the canonicalizations.
    #[error(
        "{value:?} is not a canonicalization: expected HEADER/BODY, each \"relaxed\" or \
         \"simple\" (e.g. \"relaxed/relaxed\")"
    )]
    Canonicalization {
        /// The text given.
        value: String,
    },
    /// A signer setting that would make a broken signature.
    #[error("DKIM key {selector} for {domain}: {field}: {reason}")]
    InvalidSpec {
        /// The signing domain.
        domain: String,
        /// The selector.
        selector: String,
        /// `domain`, `selector` or `headers`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The message has no From field, which a DKIM signature must cover (RFC 6376 5.4).
    #[error("the message has no From header field, which DKIM must sign (RFC 6376 5.4)")]
    NoFrom,
    /// The signing operation failed.
    #[error("DKIM signing failed: {0}")]
    Sign(String),
}
