//! Does DNS publish our key? The `S._domainkey.D` TXT record (RFC 6376 3.6.1, 3.6.2) parsed
//! and compared with a key, for `relay dkim check`; and the lookup itself.

use std::fmt;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;

use super::der;
use super::key::{KeyAlgorithm, PublicKey};
use crate::config::DnsConfig;
use crate::delivery::mx::{DnsError, DnsSettings, MxResolver};

/// Base64 as records are written in the wild: padding or not.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The TXT records found at a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxtAnswer {
    /// The records, each with its strings joined (RFC 6376 3.6.2.2); empty when the name
    /// exists but has no TXT record.
    Records(Vec<Vec<u8>>),
    /// The name does not exist (NXDOMAIN).
    NoSuchName,
    /// The lookup failed (SERVFAIL, timeout, unreachable servers); the resolver's reason.
    Failed(String),
}

/// How a published record compares with a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The record publishes this key, in a form verifiers accept.
    Match,
    /// There is no TXT record at the name; `nxdomain` when the name does not exist at all.
    NoRecord {
        /// NXDOMAIN rather than a name without TXT records.
        nxdomain: bool,
    },
    /// The lookup failed; the answer says nothing about the record.
    LookupFailed(String),
    /// Several TXT records at the name: verifiers may use any of them.
    Multiple(usize),
    /// The record is not a valid DKIM key record; what is wrong.
    Syntax(String),
    /// The record has no `p=` tag.
    NoKey,
    /// `p=` is empty: the key is revoked (RFC 6376 3.6.1).
    Revoked,
    /// The record is for another key type (`k=`).
    DifferentAlgorithm {
        /// The `k=` value published (`rsa` when absent).
        published: String,
        /// This key's type.
        expected: KeyAlgorithm,
    },
    /// The record publishes another key of the same type.
    DifferentKey,
    /// The key matches, but verifiers will not use the record for our signatures (`h=` or
    /// `s=` rule them out); why.
    Unusable(String),
}

impl Verdict {
    /// True only for [`Verdict::Match`].
    pub fn is_match(&self) -> bool {
        matches!(self, Verdict::Match)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Match => f.write_str("the published record matches the key"),
            Verdict::NoRecord { nxdomain: true } => {
                f.write_str("no record: the name does not exist (NXDOMAIN)")
            }
            Verdict::NoRecord { nxdomain: false } => {
                f.write_str("no record: the name has no TXT record")
            }
            Verdict::LookupFailed(reason) => write!(f, "the DNS lookup failed: {reason}"),
            Verdict::Multiple(count) => write!(
                f,
                "{count} TXT records at one name: publish exactly one, verifiers may pick any"
            ),
            Verdict::Syntax(reason) => write!(f, "the record is not a valid DKIM key: {reason}"),
            Verdict::NoKey => f.write_str("the record has no p= tag (no public key)"),
            Verdict::Revoked => f.write_str("the key is revoked: the record's p= is empty"),
            Verdict::DifferentAlgorithm {
                published,
                expected,
            } => write!(
                f,
                "the record is for a k={published} key, but this key is {expected}"
            ),
            Verdict::DifferentKey => {
                f.write_str("the record publishes a different key (an older one?)")
            }
            Verdict::Unusable(reason) => f.write_str(reason),
        }
    }
}

/// The name of a key record: `SELECTOR._domainkey.DOMAIN` (RFC 6376 3.6.2.1).
pub fn record_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

/// Compares the answer to a `SELECTOR._domainkey.DOMAIN` TXT lookup with `expected`.
pub fn check(expected: &PublicKey, answer: &TxtAnswer) -> Verdict {
    let records = match answer {
        TxtAnswer::NoSuchName => return Verdict::NoRecord { nxdomain: true },
        TxtAnswer::Failed(reason) => return Verdict::LookupFailed(reason.clone()),
        TxtAnswer::Records(records) => records,
    };
    let record = match records.as_slice() {
        [] => return Verdict::NoRecord { nxdomain: false },
        [one] => one,
        more => return Verdict::Multiple(more.len()),
    };
    let published = match parse_record(record) {
        Ok(published) => published,
        Err(verdict) => return verdict,
    };
    let algorithm = match published.algorithm {
        Some(algorithm) if algorithm == expected.algorithm() => algorithm,
        _ => {
            return Verdict::DifferentAlgorithm {
                published: published.key_type,
                expected: expected.algorithm(),
            }
        }
    };
    let key = match normalize_key(algorithm, &published.p) {
        Ok(key) => key,
        Err(reason) => return Verdict::Syntax(reason),
    };
    if key != expected.key_bytes() {
        return Verdict::DifferentKey;
    }
    if let Some(hashes) = &published.hashes {
        if !hashes.iter().any(|h| h.eq_ignore_ascii_case("sha256")) {
            return Verdict::Unusable(format!(
                "the record's h={} does not allow sha256, so verifiers refuse {} signatures",
                hashes.join(":"),
                algorithm.signing_algorithm()
            ));
        }
    }
    if let Some(services) = &published.services {
        if !services
            .iter()
            .any(|s| s == "*" || s.eq_ignore_ascii_case("email"))
        {
            return Verdict::Unusable(format!(
                "the record's s={} does not include email or *, so it is not for mail",
                services.join(":")
            ));
        }
    }
    // What a verifier built on mail-auth makes of it (the relay's own library).
    if let Err(err) = DomainKey::parse(record) {
        return Verdict::Syntax(format!("mail-auth refuses it: {err}"));
    }
    Verdict::Match
}

impl PublicKey {
    /// The key a TXT record value publishes (`v=DKIM1; k=ed25519; p=...`); the [`Verdict`]
    /// saying why when it publishes none.
    pub fn from_txt(record: &str) -> Result<PublicKey, Verdict> {
        let published = parse_record(record.as_bytes())?;
        let Some(algorithm) = published.algorithm else {
            return Err(Verdict::Syntax(format!(
                "k={} is not a key type DKIM signs with (rsa or ed25519)",
                published.key_type
            )));
        };
        let key = normalize_key(algorithm, &published.p).map_err(Verdict::Syntax)?;
        Ok(PublicKey::new(algorithm, key))
    }
}

/// The tags of a key record that matter here.
struct Published {
    /// `k=`, `rsa` when absent.
    key_type: String,
    /// The key type, when it is one we know.
    algorithm: Option<KeyAlgorithm>,
    /// `p=`, decoded; never empty (that is [`Verdict::Revoked`]).
    p: Vec<u8>,
    /// `h=`: acceptable hash algorithms, when given.
    hashes: Option<Vec<String>>,
    /// `s=`: service types, when given.
    services: Option<Vec<String>>,
}

/// Parses a key record's tag-list (RFC 6376 3.2, 3.6.1).
fn parse_record(record: &[u8]) -> Result<Published, Verdict> {
    let Ok(text) = std::str::from_utf8(record) else {
        return Err(Verdict::Syntax("the record is not text".to_string()));
    };
    let mut tags: Vec<(&str, &str)> = Vec::new();
    for spec in text.split(';') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        let Some((name, value)) = spec.split_once('=') else {
            return Err(Verdict::Syntax(format!("{spec:?} is not a tag=value pair")));
        };
        let (name, value) = (name.trim(), value.trim());
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(Verdict::Syntax(format!("{name:?} is not a tag name")));
        }
        if tags.iter().any(|(seen, _)| *seen == name) {
            // RFC 6376 3.2: a repeated tag makes the whole tag-list invalid.
            return Err(Verdict::Syntax(format!("the {name}= tag appears twice")));
        }
        tags.push((name, value));
    }
    if tags.is_empty() {
        return Err(Verdict::Syntax("the record is empty".to_string()));
    }
    let get = |name: &str| tags.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    if let Some(version) = get("v") {
        if tags.first().map(|(n, _)| *n) != Some("v") || version != "DKIM1" {
            return Err(Verdict::Syntax(format!(
                "v={version}: when present, v= must be DKIM1 and the first tag"
            )));
        }
    }
    let Some(p) = get("p") else {
        return Err(Verdict::NoKey);
    };
    let p: String = p.chars().filter(|c| !c.is_whitespace()).collect();
    if p.is_empty() {
        return Err(Verdict::Revoked);
    }
    let p = LENIENT_BASE64
        .decode(&p)
        .map_err(|err| Verdict::Syntax(format!("p= is not base64: {err}")))?;
    let key_type = get("k").unwrap_or("rsa").to_string();
    let algorithm = match key_type.to_ascii_lowercase().as_str() {
        "rsa" => Some(KeyAlgorithm::Rsa),
        "ed25519" => Some(KeyAlgorithm::Ed25519),
        _ => None,
    };
    let list = |name: &str| {
        get(name).map(|v| {
            v.split(':')
                .map(|item| item.trim().to_string())
                .collect::<Vec<_>>()
        })
    };
    Ok(Published {
        key_type,
        algorithm,
        p,
        hashes: list("h"),
        services: list("s"),
    })
}

/// The published key in the form [`PublicKey::key_bytes`] uses, or what is wrong with it.
fn normalize_key(algorithm: KeyAlgorithm, p: &[u8]) -> Result<Vec<u8>, String> {
    match algorithm {
        KeyAlgorithm::Rsa => {
            // Usually SubjectPublicKeyInfo; RFC 6376's text allows the bare RSAPublicKey.
            let inner = match der::spki(p) {
                Some((oid, inner)) if oid == der::OID_RSA => inner,
                Some(_) => return Err("p= holds a public key that is not RSA".to_string()),
                None => p,
            };
            match der::rsa_public_key_bits(inner) {
                Some(_) => Ok(inner.to_vec()),
                None => Err("p= is not an RSA public key".to_string()),
            }
        }
        KeyAlgorithm::Ed25519 => match der::spki(p) {
            Some((oid, _)) if oid == der::OID_ED25519 => Err(
                "p= holds the key as SubjectPublicKeyInfo; RFC 8463 publishes the bare 32 bytes"
                    .to_string(),
            ),
            _ if p.len() == 32 => Ok(p.to_vec()),
            _ => Err(format!("p= is {} bytes; an Ed25519 key is 32", p.len())),
        },
    }
}

/// Looks up the TXT records at `SELECTOR._domainkey.DOMAIN` with the relay's resolver settings
/// (`[dns]`: its name servers, else the system's). Needs a tokio runtime.
pub async fn lookup_key_record(dns: &DnsConfig, selector: &str, domain: &str) -> TxtAnswer {
    let settings = DnsSettings {
        nameservers: dns.nameservers.clone(),
        timeout: dns.timeout.0,
        attempts: dns.attempts,
        cache_size: dns.cache_size,
    };
    let resolver = match MxResolver::new(&settings) {
        Ok(resolver) => resolver,
        Err(err) => return TxtAnswer::Failed(err.to_string()),
    };
    match resolver.txt(&record_name(selector, domain)).await {
        Ok(records) => TxtAnswer::Records(records),
        Err(DnsError::NoSuchDomain { .. }) => TxtAnswer::NoSuchName,
        Err(err) => TxtAnswer::Failed(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::key::fixtures;
    use super::*;

    fn found(record: &str) -> TxtAnswer {
        TxtAnswer::Records(vec![record.as_bytes().to_vec()])
    }

    #[test]
    fn the_keys_own_record_matches() {
        for key in [fixtures::rsa(), fixtures::ed25519()] {
            let public = key.public_key();
            assert_eq!(check(public, &found(&public.txt())), Verdict::Match);
            assert!(check(public, &found(&public.txt())).is_match());
        }
    }

    #[test]
    fn folded_unpadded_and_reordered_records_still_match() {
        let key = fixtures::rsa();
        let p = key.public_key().p_value();
        let (a, b) = p.split_at(100);
        let record = format!("k=rsa;\r\n\tp={a} {}; t=s", b.trim_end_matches('='));
        assert_eq!(check(key.public_key(), &found(&record)), Verdict::Match);
        // No k= means rsa.
        let bare = format!("v=DKIM1; p={p}");
        assert_eq!(check(key.public_key(), &found(&bare)), Verdict::Match);
    }

    #[test]
    fn bare_rsa_public_key_in_p_matches() {
        use base64::engine::general_purpose::STANDARD;
        let key = fixtures::rsa();
        let record = format!(
            "v=DKIM1; k=rsa; p={}",
            STANDARD.encode(key.public_key().key_bytes())
        );
        assert_eq!(check(key.public_key(), &found(&record)), Verdict::Match);
    }

    #[test]
    fn missing_record_is_reported() {
        let key = fixtures::ed25519();
        assert_eq!(
            check(key.public_key(), &TxtAnswer::NoSuchName),
            Verdict::NoRecord { nxdomain: true }
        );
        let verdict = check(key.public_key(), &TxtAnswer::Records(vec![]));
        assert_eq!(verdict, Verdict::NoRecord { nxdomain: false });
        assert!(!verdict.is_match());
        assert!(verdict.to_string().contains("no TXT record"), "{verdict}");
    }

    #[test]
    fn record_without_p_and_revoked_record_are_told_apart() {
        let key = fixtures::ed25519();
        assert_eq!(
            check(key.public_key(), &found("v=DKIM1; k=ed25519")),
            Verdict::NoKey
        );
        let revoked = check(key.public_key(), &found("v=DKIM1; k=ed25519; p="));
        assert_eq!(revoked, Verdict::Revoked);
        assert!(revoked.to_string().contains("revoked"), "{revoked}");
    }

    #[test]
    fn another_key_is_a_different_key() {
        let ours = fixtures::ed25519();
        let theirs = fixtures::ed25519();
        assert_eq!(
            check(ours.public_key(), &found(&theirs.public_key_txt())),
            Verdict::DifferentKey
        );
    }

    #[test]
    fn another_key_type_is_a_different_algorithm() {
        let rsa = fixtures::rsa();
        let ed = fixtures::ed25519();
        let verdict = check(rsa.public_key(), &found(&ed.public_key_txt()));
        assert_eq!(
            verdict,
            Verdict::DifferentAlgorithm {
                published: "ed25519".to_string(),
                expected: KeyAlgorithm::Rsa
            }
        );
        assert!(verdict.to_string().contains("k=ed25519"), "{verdict}");
        let unknown = check(ed.public_key(), &found("v=DKIM1; k=dsa; p=AAAA"));
        assert!(
            matches!(unknown, Verdict::DifferentAlgorithm { .. }),
            "{unknown:?}"
        );
    }

    #[test]
    fn malformed_records_are_syntax_errors_saying_what_is_wrong() {
        let key = fixtures::ed25519();
        let p = key.public_key().p_value();
        for (record, expect) in [
            (format!("v=DKIM1; k=ed25519; p={p}; p={p}"), "twice"),
            (format!("k=ed25519; v=DKIM1; p={p}"), "first tag"),
            (format!("v=DKIM2; k=ed25519; p={p}"), "DKIM1"),
            ("v=DKIM1; k=ed25519; p=!!!!".to_string(), "base64"),
            ("v=DKIM1; k=ed25519; p=AAAA".to_string(), "32"),
            (format!("v=DKIM1; k=ed25519; oops; p={p}"), "tag=value"),
            (format!("v=DKIM1; 1k=ed25519; p={p}"), "tag name"),
            ("  ;  ".to_string(), "empty"),
        ] {
            match check(key.public_key(), &found(&record)) {
                Verdict::Syntax(reason) => assert!(reason.contains(expect), "{record}: {reason}"),
                other => panic!("{record}: {other:?}"),
            }
        }
        let binary = TxtAnswer::Records(vec![vec![0xff, 0xfe]]);
        assert!(matches!(
            check(key.public_key(), &binary),
            Verdict::Syntax(_)
        ));
    }

    #[test]
    fn records_verifiers_would_not_use_are_unusable() {
        let key = fixtures::rsa();
        let p = key.public_key().p_value();
        let sha1 = check(key.public_key(), &found(&format!("v=DKIM1; h=sha1; p={p}")));
        assert!(
            matches!(sha1, Verdict::Unusable(ref r) if r.contains("sha256")),
            "{sha1:?}"
        );
        let web = check(key.public_key(), &found(&format!("v=DKIM1; s=web; p={p}")));
        assert!(
            matches!(web, Verdict::Unusable(ref r) if r.contains("email")),
            "{web:?}"
        );
        let both = format!("v=DKIM1; h=sha1:sha256; s=email; p={p}");
        assert_eq!(check(key.public_key(), &found(&both)), Verdict::Match);
    }

    #[test]
    fn several_records_and_failed_lookups_are_not_matches() {
        let key = fixtures::ed25519();
        let txt = key.public_key_txt().into_bytes();
        let two = TxtAnswer::Records(vec![txt.clone(), txt]);
        assert_eq!(check(key.public_key(), &two), Verdict::Multiple(2));
        let failed = TxtAnswer::Failed("SERVFAIL".to_string());
        assert_eq!(
            check(key.public_key(), &failed),
            Verdict::LookupFailed("SERVFAIL".to_string())
        );
    }

    #[test]
    fn public_key_from_txt_reads_what_txt_writes() {
        for key in [fixtures::rsa(), fixtures::ed25519()] {
            let public = PublicKey::from_txt(&key.public_key_txt()).expect("parses");
            assert_eq!(&public, key.public_key());
        }
        assert_eq!(PublicKey::from_txt("v=DKIM1; p="), Err(Verdict::Revoked));
    }

    #[test]
    fn ed25519_key_in_spki_form_is_explained() {
        // RFC 8410 10.1's key as SubjectPublicKeyInfo: a common mistake for k=ed25519.
        let record =
            "v=DKIM1; k=ed25519; p=MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=";
        match PublicKey::from_txt(record) {
            Err(Verdict::Syntax(reason)) => assert!(reason.contains("RFC 8463"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
