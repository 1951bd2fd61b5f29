//! Signing: the `DKIM-Signature` header field for a message (RFC 6376 3.5 and 5).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use mail_auth::common::crypto::{Algorithm, SigningKey};
use mail_auth::common::headers::{HeaderStream, Writable, Writer};
use mail_auth::dkim::canonicalize::CanonicalHeaders;
use mail_auth::dkim::{Canonicalization as MailAuthCanon, Signature};

use super::key::{DkimKey, KeyAlgorithm, Signer};
use super::DkimError;

/// The header fields signed by default, each when present. From is always signed, and listed
/// once more than it occurs, so that a second From added on the way cannot pass as signed
/// (RFC 6376 8.15). Received, Return-Path and trace fields are never signed: relays add them.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Sender",
];

/// One canonicalization algorithm (RFC 6376 3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Canon {
    /// Byte for byte (3.4.1, 3.4.3): any change in whitespace or header case breaks it.
    Simple,
    /// Tolerates the whitespace and header-name case changes that relays make (3.4.2, 3.4.4).
    Relaxed,
}

impl Canon {
    /// `simple` or `relaxed`, any case.
    pub fn parse(word: &str) -> Result<Canon, DkimError> {
        match word.trim().to_ascii_lowercase().as_str() {
            "simple" => Ok(Canon::Simple),
            "relaxed" => Ok(Canon::Relaxed),
            _ => Err(DkimError::Canonicalization {
                value: word.to_string(),
            }),
        }
    }

    /// `simple` or `relaxed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Canon::Simple => "simple",
            Canon::Relaxed => "relaxed",
        }
    }

    fn to_mail_auth(self) -> MailAuthCanon {
        match self {
            Canon::Simple => MailAuthCanon::Simple,
            Canon::Relaxed => MailAuthCanon::Relaxed,
        }
    }
}

impl fmt::Display for Canon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header and body canonicalization, the `c=` tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Canonicalization {
    /// For the signed header fields.
    pub header: Canon,
    /// For the body.
    pub body: Canon,
}

impl Default for Canonicalization {
    /// `relaxed/relaxed`: survives the rewrapping and re-encoding mail meets on the way.
    fn default() -> Self {
        Canonicalization {
            header: Canon::Relaxed,
            body: Canon::Relaxed,
        }
    }
}

impl Canonicalization {
    /// Parses a `c=` value: `HEADER/BODY`, each `relaxed` or `simple` (any case), or one word,
    /// which RFC 6376 3.5 reads as that for the header and `simple` for the body.
    pub fn parse(text: &str) -> Result<Canonicalization, DkimError> {
        let invalid = || DkimError::Canonicalization {
            value: text.to_string(),
        };
        let mut parts = text.split('/');
        let header = Canon::parse(parts.next().unwrap_or_default()).map_err(|_| invalid())?;
        let body = match parts.next() {
            Some(body) => Canon::parse(body).map_err(|_| invalid())?,
            None => Canon::Simple,
        };
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Canonicalization { header, body })
    }
}

impl FromStr for Canonicalization {
    type Err = DkimError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Canonicalization::parse(text)
    }
}

impl fmt::Display for Canonicalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.header, self.body)
    }
}

/// What to sign with: one `[[dkim.key]]`, parsed.
#[derive(Clone, Debug)]
pub struct SignerSpec {
    /// The signing domain, `d=`.
    pub domain: String,
    /// The selector, `s=`: the public key is at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The private key; shared by every signature made with it.
    pub key: Arc<DkimKey>,
    /// Header fields to sign, each when present (From always); see [`DEFAULT_HEADERS`].
    pub headers: Vec<String>,
    /// `c=`; relaxed/relaxed by default.
    pub canonicalization: Canonicalization,
    /// `x=`: the signature expires this long after `t=` (whole seconds; at least one).
    pub expire: Option<Duration>,
}

impl SignerSpec {
    /// A spec with the default header list, relaxed/relaxed and no expiry.
    pub fn new(domain: &str, selector: &str, key: Arc<DkimKey>) -> SignerSpec {
        SignerSpec {
            domain: domain.to_string(),
            selector: selector.to_string(),
            key,
            headers: DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
            canonicalization: Canonicalization::default(),
            expire: None,
        }
    }

    /// Checks what would break the signature's tag list: the domain and selector are
    /// dot-separated labels of letters, digits, '-' and '_'; header names are printable ASCII
    /// without ':' or ';'. [`sign`] checks this too.
    pub fn validate(&self) -> Result<(), DkimError> {
        let spec_error = |field: &str, reason: String| DkimError::InvalidSpec {
            domain: self.domain.clone(),
            selector: self.selector.clone(),
            field: field.to_string(),
            reason,
        };
        if !is_dns_name(&self.domain) {
            return Err(spec_error(
                "domain",
                format!("{:?} is not a domain name", self.domain),
            ));
        }
        if !is_dns_name(&self.selector) {
            return Err(spec_error(
                "selector",
                format!("{:?} is not a selector", self.selector),
            ));
        }
        if let Some(bad) = self.headers.iter().find(|h| !is_field_name(h)) {
            return Err(spec_error(
                "headers",
                format!("{bad:?} is not a header field name"),
            ));
        }
        Ok(())
    }
}

/// Labels of letters, digits, '-' and '_' (selectors and `_`-prefixed names use it).
pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// RFC 5322 2.2 ftext, less ';' which would end the `h=` tag.
pub(crate) fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (33..=126).contains(&b) && b != b':' && b != b';')
}

/// Signs `message` (header fields, blank line, body; CRLF line ends, as queued) and returns
/// the complete `DKIM-Signature: ...\r\n` field, folded, to put in front of it. `t=` is
/// `now_unix_secs`; `x=` is that plus [`SignerSpec::expire`].
///
/// A message without a From field is refused ([`DkimError::NoFrom`]): RFC 6376 5.4 requires
/// signing it, and a signature without it is worthless to DMARC.
pub fn sign(spec: &SignerSpec, message: &[u8], now_unix_secs: u64) -> Result<String, DkimError> {
    spec.validate()?;
    let template = Signature {
        v: 1,
        a: match spec.key.key_algorithm() {
            KeyAlgorithm::Rsa => Algorithm::RsaSha256,
            KeyAlgorithm::Ed25519 => Algorithm::Ed25519Sha256,
        },
        d: spec.domain.clone(),
        s: spec.selector.clone(),
        h: headers_to_sign(&spec.headers, message)?,
        ch: spec.canonicalization.header.to_mail_auth(),
        cb: spec.canonicalization.body.to_mail_auth(),
        ..Signature::default()
    };
    // Below a second would round to "no expiry".
    let expire = spec.expire.map_or(0, |e| e.as_secs().max(1));
    let signature = match spec.key.signer() {
        Signer::Rsa(key) => finish(key, template, message, now_unix_secs, expire),
        Signer::Ed25519(key) => finish(key, template, message, now_unix_secs, expire),
    }
    .map_err(|err| DkimError::Sign(err.to_string()))?;
    let mut field = Vec::with_capacity(160 + signature.b.len() + signature.bh.len());
    signature.write(&mut field, true);
    String::from_utf8(field).map_err(|_| DkimError::Sign("signature is not ASCII".to_string()))
}

/// The `h=` list to give mail-auth: the configured names present in the message, once each,
/// From among them, then From once more. mail-auth signs every occurrence of each name given,
/// and lists a name given but not found as an extra, empty entry (RFC 6376 5.4.2): that is the
/// From oversigning. Names not present are left out, so that a list or forwarder adding, say,
/// `List-Unsubscribe` does not break the signature.
fn headers_to_sign(configured: &[String], message: &[u8]) -> Result<Vec<String>, DkimError> {
    let present: Vec<&[u8]> = HeaderFields::new(message).map(|(name, _)| name).collect();
    let is_present = |name: &str| {
        present
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name.as_bytes()))
    };
    if !is_present("From") {
        return Err(DkimError::NoFrom);
    }
    let mut names: Vec<String> = vec!["From".to_string()];
    for name in configured {
        if is_present(name) && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.clone());
        }
    }
    names.push("From".to_string());
    Ok(names)
}

/// mail-auth's `DkimSigner::sign`, with the clock passed in rather than read: `t=` comes from
/// the caller, so one time is used for the whole message and tests are exact.
fn finish<K: SigningKey>(
    key: &K,
    mut signature: Signature,
    message: &[u8],
    now: u64,
    expire: u64,
) -> mail_auth::Result<Signature> {
    let (_, headers, signed_headers, body) = signature.canonicalize(HeaderFields::new(message));
    signature.bh = BASE64
        .encode(key.hash(Buffered(body)).as_ref())
        .into_bytes();
    signature.t = now;
    signature.x = if expire > 0 {
        now.saturating_add(expire)
    } else {
        0
    };
    signature.h = signed_headers;
    let b = key.sign(Signed {
        headers,
        signature: &signature,
    })?;
    signature.b = BASE64.encode(b).into_bytes();
    Ok(signature)
}

/// The header fields of a message, then its body, split exactly as mail-auth's own (private)
/// `HeaderIterator` does for `DkimSigner::sign`: a field runs to the LF not followed by a space
/// or tab; a blank line, or a colon-less line ending in CRLF, ends the header section; without
/// one the body is empty. `matches_mail_auths_own_signer` holds the two to the same result.
struct HeaderFields<'x> {
    message: &'x [u8],
    /// The next byte to read.
    next: usize,
    /// Where the current field starts.
    start: usize,
}

impl<'x> HeaderFields<'x> {
    fn new(message: &'x [u8]) -> HeaderFields<'x> {
        HeaderFields {
            message,
            next: 0,
            start: 0,
        }
    }
}

impl<'x> Iterator for HeaderFields<'x> {
    /// Name (without the colon) and value (after the colon, through the final CRLF).
    type Item = (&'x [u8], &'x [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let message = self.message;
        let mut colon = None;
        let mut last = 0u8;
        while let Some(&ch) = message.get(self.next) {
            let pos = self.next;
            self.next += 1;
            let folded = matches!(message.get(self.next), Some(b' ' | b'\t'));
            match colon {
                None => match ch {
                    b':' => colon = Some(pos),
                    b'\n' if last == b'\r' || self.start == pos => return None,
                    b'\n' if !folded => {
                        // A line without a colon: passed on as a nameless field, as mail-auth does.
                        let line = message.get(self.start..=pos).unwrap_or_default();
                        self.start = self.next;
                        return Some((line, b""));
                    }
                    _ => {}
                },
                Some(colon) if ch == b'\n' && !folded => {
                    let name = message.get(self.start..colon).unwrap_or_default();
                    let value = message.get(colon + 1..=pos).unwrap_or_default();
                    self.start = self.next;
                    return Some((name, value));
                }
                Some(_) => {}
            }
            last = ch;
        }
        None
    }
}

impl<'x> HeaderStream<'x> for HeaderFields<'x> {
    fn next_header(&mut self) -> Option<(&'x [u8], &'x [u8])> {
        self.next()
    }

    fn body(&mut self) -> &'x [u8] {
        self.message.get(self.next..).unwrap_or_default()
    }
}

/// mail-auth canonicalizes the body into the hasher a byte at a time, and a hasher update per
/// byte costs more than the hashing (100 KB: 0.5 ms instead of 0.1 ms). This collects the
/// output into 16 KB chunks first; the digest is the same.
struct Buffered<W>(W);

impl<W: Writable> Writable for Buffered<W> {
    fn write(self, writer: &mut impl Writer) {
        let mut chunks = Chunks {
            out: writer,
            buf: Vec::with_capacity(CHUNK),
        };
        self.0.write(&mut chunks);
        if !chunks.buf.is_empty() {
            chunks.out.write(&chunks.buf);
        }
    }
}

/// The chunk size of [`Buffered`].
const CHUNK: usize = 16 * 1024;

struct Chunks<'a, W> {
    out: &'a mut W,
    buf: Vec<u8>,
}

impl<W: Writer> Writer for Chunks<'_, W> {
    fn write(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.out.write(&self.buf);
            self.buf.clear();
        }
    }
}

/// What the signature covers (RFC 6376 3.7): the canonical signed fields, then the
/// DKIM-Signature field itself with an empty `b=` and no final CRLF.
struct Signed<'a> {
    headers: CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for Signed<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use mail_auth::common::parse::TxtRecordParser as _;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
    use mail_auth::{
        AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
    };

    use super::super::key::fixtures;
    use super::*;

    /// TXT records handed to mail-auth's verifier instead of DNS.
    struct Records(HashMap<String, Txt>);

    impl ResolverCache<String, Txt> for Records {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            String: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            self.0.get(name).cloned()
        }

        fn remove<Q>(&self, _: &Q) -> Option<Txt>
        where
            String: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            None
        }

        fn insert(&self, _: String, _: Txt, _: Instant) {}
    }

    /// mail-auth's verdicts on every DKIM-Signature of `message`, with `record` published at
    /// `selector._domainkey.domain` and nothing else in "DNS".
    pub(in crate::dkim) async fn verify(
        message: &[u8],
        selector: &str,
        domain: &str,
        record: &str,
    ) -> Vec<DkimResult> {
        let mut records = HashMap::new();
        if let Ok(key) = DomainKey::parse(record.as_bytes()) {
            records.insert(
                format!("{selector}._domainkey.{domain}.").to_lowercase(),
                Txt::DomainKey(Arc::new(key)),
            );
        }
        let records = Records(records);
        // Never asked: every lookup is answered from `records`.
        let authenticator =
            MessageAuthenticator::new(ResolverConfig::default(), ResolverOpts::default())
                .expect("resolver");
        let parsed = AuthenticatedMessage::parse(message).expect("message parses");
        let outputs = authenticator
            .verify_dkim(Parameters::new(&parsed).with_txt_cache(&records))
            .await;
        outputs.iter().map(|o| o.result().clone()).collect()
    }

    pub(in crate::dkim) fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    pub(in crate::dkim) const MESSAGE: &str = concat!(
        "From: Alice <alice@example.com>\r\n",
        "To: bob@example.net\r\n",
        "Subject: Quarterly  report\r\n",
        "Date: Sat, 06 Dec 2026 10:00:00 +0000\r\n",
        "Message-ID: <q3@example.com>\r\n",
        "X-Mailer: test\r\n",
        "\r\n",
        "Numbers attached.\r\n",
        "\r\n",
        "Alice\r\n",
    );

    /// The signature field in front of the message.
    pub(in crate::dkim) fn signed(spec: &SignerSpec, message: &str) -> String {
        let field = sign(spec, message.as_bytes(), now()).expect("signs");
        format!("{field}{message}")
    }

    /// One tag's value in a DKIM-Signature field (folding removed).
    fn tag(field: &str, name: &str) -> Option<String> {
        let unfolded: String = field
            .trim_start_matches("DKIM-Signature:")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        unfolded.split(';').find_map(|t| {
            t.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    fn passes(results: &[DkimResult]) -> bool {
        !results.is_empty() && results.iter().all(|r| *r == DkimResult::Pass)
    }

    #[tokio::test]
    async fn rsa_signature_verifies_with_mail_auth() {
        let key = fixtures::rsa();
        let spec = SignerSpec::new("example.com", "s1", key.clone());
        let message = signed(&spec, MESSAGE);
        let results = verify(
            message.as_bytes(),
            "s1",
            "example.com",
            &key.public_key_txt(),
        )
        .await;
        assert!(passes(&results), "{results:?}\n{message}");
        assert!(message.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=s1; d=example.com;"));
    }

    #[tokio::test]
    async fn ed25519_signature_verifies_with_mail_auth() {
        let key = fixtures::ed25519();
        let spec = SignerSpec::new("example.com", "ed", key.clone());
        let message = signed(&spec, MESSAGE);
        let results = verify(
            message.as_bytes(),
            "ed",
            "example.com",
            &key.public_key_txt(),
        )
        .await;
        assert!(passes(&results), "{results:?}\n{message}");
        assert!(message.contains("a=ed25519-sha256"), "{message}");
    }

    #[tokio::test]
    async fn every_canonicalization_verifies() {
        let key = fixtures::ed25519();
        for c in [
            "relaxed/relaxed",
            "relaxed/simple",
            "simple/relaxed",
            "simple/simple",
        ] {
            let mut spec = SignerSpec::new("example.com", "s", key.clone());
            spec.canonicalization = Canonicalization::parse(c).expect("valid");
            let message = signed(&spec, MESSAGE);
            assert_eq!(tag(&message, "c").as_deref(), Some(c));
            let results = verify(
                message.as_bytes(),
                "s",
                "example.com",
                &key.public_key_txt(),
            )
            .await;
            assert!(passes(&results), "{c}: {results:?}");
        }
    }

    #[tokio::test]
    async fn changed_body_fails_verification() {
        let key = fixtures::rsa();
        let spec = SignerSpec::new("example.com", "s1", key.clone());
        let message = signed(&spec, MESSAGE).replace("Numbers attached.", "Numbers attachd.");
        let results = verify(
            message.as_bytes(),
            "s1",
            "example.com",
            &key.public_key_txt(),
        )
        .await;
        assert!(
            matches!(
                results.as_slice(),
                [DkimResult::Neutral(mail_auth::Error::FailedBodyHashMatch)]
            ),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn changed_signed_header_fails_verification() {
        let key = fixtures::ed25519();
        let spec = SignerSpec::new("example.com", "s", key.clone());
        let message = signed(&spec, MESSAGE).replace("Subject: Quarterly", "Subject: Annual");
        let results = verify(
            message.as_bytes(),
            "s",
            "example.com",
            &key.public_key_txt(),
        )
        .await;
        assert!(!passes(&results), "{results:?}");
        assert!(
            matches!(results.as_slice(), [DkimResult::Fail(_)]),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn unsigned_header_may_change_but_a_second_from_may_not_be_added() {
        let key = fixtures::rsa();
        let spec = SignerSpec::new("example.com", "s1", key.clone());
        let message = signed(&spec, MESSAGE);
        let record = key.public_key_txt();

        let mailer = message.replace("X-Mailer: test", "X-Mailer: changed");
        assert!(passes(
            &verify(mailer.as_bytes(), "s1", "example.com", &record).await
        ));

        let added_from = message.replace("X-Mailer: test\r\n", "From: mallory@evil.test\r\n");
        let results = verify(added_from.as_bytes(), "s1", "example.com", &record).await;
        assert!(!passes(&results), "{results:?}");

        let added_cc = message.replace("X-Mailer: test\r\n", "Cc: list@example.org\r\n");
        assert!(
            passes(&verify(added_cc.as_bytes(), "s1", "example.com", &record).await),
            "a header that was absent when signing is not signed"
        );
    }

    #[tokio::test]
    async fn relaxed_survives_rewrapping_that_breaks_simple() {
        let key = fixtures::ed25519();
        let record = key.public_key_txt();
        let mut relaxed = SignerSpec::new("example.com", "s", key.clone());
        relaxed.canonicalization = Canonicalization::parse("relaxed/relaxed").expect("valid");
        let mut simple = relaxed.clone();
        simple.canonicalization = Canonicalization::parse("simple/simple").expect("valid");
        let rewrap =
            |m: String| m.replace("Subject: Quarterly  report", "subject:  Quarterly report ");
        let relaxed_msg = rewrap(signed(&relaxed, MESSAGE));
        let simple_msg = rewrap(signed(&simple, MESSAGE));
        assert!(passes(
            &verify(relaxed_msg.as_bytes(), "s", "example.com", &record).await
        ));
        assert!(!passes(
            &verify(simple_msg.as_bytes(), "s", "example.com", &record).await
        ));
    }

    #[tokio::test]
    async fn expire_sets_x_and_an_expired_signature_does_not_pass() {
        let key = fixtures::ed25519();
        let mut spec = SignerSpec::new("example.com", "s", key.clone());
        spec.expire = Some(Duration::from_secs(3600));
        let field = sign(&spec, MESSAGE.as_bytes(), 1_700_000_000).expect("signs");
        assert_eq!(tag(&field, "t").as_deref(), Some("1700000000"));
        assert_eq!(tag(&field, "x").as_deref(), Some("1700003600"));
        // Signed in 2023, expired an hour later: no longer valid today.
        let message = format!("{field}{MESSAGE}");
        let results = verify(
            message.as_bytes(),
            "s",
            "example.com",
            &key.public_key_txt(),
        )
        .await;
        assert!(
            matches!(
                results.as_slice(),
                [DkimResult::Neutral(mail_auth::Error::SignatureExpired)]
            ),
            "{results:?}"
        );

        spec.expire = None;
        let field = sign(&spec, MESSAGE.as_bytes(), 1_700_000_000).expect("signs");
        assert_eq!(tag(&field, "x"), None);
    }

    #[test]
    fn signed_headers_are_those_present_with_from_oversigned() {
        let key = fixtures::ed25519();
        let spec = SignerSpec::new("example.com", "s", key);
        let field = sign(&spec, MESSAGE.as_bytes(), 1).expect("signs");
        let h = tag(&field, "h").expect("h=");
        let mut names: Vec<String> = h.split(':').map(str::to_ascii_lowercase).collect();
        names.sort();
        assert_eq!(
            names,
            ["date", "from", "from", "message-id", "subject", "to"],
            "{field}"
        );
    }

    #[test]
    fn from_is_signed_even_when_not_listed_and_a_message_without_one_is_refused() {
        let key = fixtures::ed25519();
        let mut spec = SignerSpec::new("example.com", "s", key);
        spec.headers = vec!["Subject".to_string()];
        let field = sign(&spec, MESSAGE.as_bytes(), 1).expect("signs");
        let h = tag(&field, "h").expect("h=").to_ascii_lowercase();
        assert_eq!(h.matches("from").count(), 2, "{h}");
        let no_from = MESSAGE.replace("From: Alice <alice@example.com>\r\n", "");
        let err = sign(&spec, no_from.as_bytes(), 1).expect_err("no From");
        assert!(matches!(err, DkimError::NoFrom), "{err:?}");
    }

    #[test]
    fn signature_field_is_folded_and_ends_with_crlf() {
        let key = fixtures::rsa();
        let field = sign(
            &SignerSpec::new("example.com", "s1", key),
            MESSAGE.as_bytes(),
            1,
        )
        .expect("signs");
        assert!(field.ends_with(";\r\n"), "{field:?}");
        let lines: Vec<&str> = field.split("\r\n").collect();
        assert!(lines.len() > 3, "{field}");
        for line in &lines[1..lines.len() - 1] {
            assert!(
                line.starts_with('\t'),
                "continuation lines start with a tab: {line:?}"
            );
        }
        assert!(lines.iter().all(|l| l.len() <= 80), "{field}");
        assert!(!field.contains('\n') || !field.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn matches_mail_auths_own_signer() {
        use mail_auth::common::crypto::Ed25519Key;
        use mail_auth::dkim::DkimSigner;
        // Ed25519 signatures are deterministic: with the same t= the fields must be equal.
        let pkcs8 = Ed25519Key::generate_pkcs8().expect("keygen");
        let pem = fixtures::pem("PRIVATE KEY", &pkcs8);
        let key = Arc::new(DkimKey::from_pem(pem.as_bytes(), "k").expect("loads"));
        let spec = SignerSpec::new("example.com", "s", key);
        let odd = [
            MESSAGE.to_string(),
            MESSAGE.replace("\r\n", "\n"),
            "From: a@example.com\r\nSubject: folded\r\n  over\r\n\tlines\r\n\r\nbody".to_string(),
            "From: a@example.com\r\nTo: b@example.net\r\n".to_string(),
            "From: a@example.com\r\nno colon here\r\nTo: b@example.net\r\n\r\nbody\r\n".to_string(),
            "From: a@example.com\nbare lf line\nTo: b\n\nbody\n".to_string(),
            "From:a@example.com\r\nFROM: again@example.com\r\n\r\n\r\n\r\n".to_string(),
        ];
        for message in &odd {
            let h = headers_to_sign(&spec.headers, message.as_bytes()).expect("headers");
            let mut compared = false;
            for _ in 0..3 {
                let before = now();
                let theirs = DkimSigner::from_key(Ed25519Key::from_pkcs8_der(&pkcs8).expect("key"))
                    .domain("example.com")
                    .selector("s")
                    .headers(h.clone())
                    .sign(message.as_bytes())
                    .expect("mail-auth signs");
                let ours = sign(&spec, message.as_bytes(), before).expect("signs");
                if now() != before {
                    continue; // a second boundary passed, so t= differs
                }
                let mut field = Vec::new();
                theirs.write(&mut field, true);
                assert_eq!(
                    String::from_utf8(field).expect("ascii"),
                    ours,
                    "{message:?}"
                );
                compared = true;
                break;
            }
            assert!(compared, "could not sign twice within one second");
        }
    }

    #[test]
    fn canonicalization_parses_c_values_and_says_what_is_valid() {
        let parse = |s| Canonicalization::parse(s).map(|c| c.to_string());
        assert_eq!(parse("relaxed/simple").expect("ok"), "relaxed/simple");
        assert_eq!(parse("Simple/Relaxed").expect("ok"), "simple/relaxed");
        assert_eq!(parse("relaxed").expect("ok"), "relaxed/simple");
        assert_eq!(Canonicalization::default().to_string(), "relaxed/relaxed");
        for bad in [
            "",
            "relaxed/",
            "fast/relaxed",
            "relaxed/simple/simple",
            "relaxed simple",
        ] {
            let err = Canonicalization::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("relaxed") && err.contains("simple"), "{err}");
        }
        assert_eq!(Canon::parse(" RELAXED ").expect("ok"), Canon::Relaxed);
    }

    #[test]
    fn spec_with_a_broken_name_is_refused() {
        let key = fixtures::ed25519();
        let mut spec = SignerSpec::new("example.com", "s; x=1", key.clone());
        let err = sign(&spec, MESSAGE.as_bytes(), 1).expect_err("bad selector");
        assert!(err.to_string().contains("selector"), "{err}");
        spec.selector = "s".to_string();
        spec.headers.push("Bad:Name".to_string());
        let err = sign(&spec, MESSAGE.as_bytes(), 1).expect_err("bad header");
        assert!(err.to_string().contains("Bad:Name"), "{err}");
    }

    #[test]
    fn odd_messages_never_panic() {
        let key = fixtures::ed25519();
        let spec = SignerSpec::new("example.com", "s", key);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"From: \r\n\t:ab;=\xff\x00";
        for len in 0..400 {
            let message: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = sign(&spec, &message, 1);
        }
        for message in [
            &b""[..],
            b"From: a@b\n\nbody",
            b"From: a@b",
            b"\r\n\r\n",
            b"From:\r\n",
        ] {
            let _ = sign(&spec, message, 1);
        }
    }

    /// Messages per second, in a release build:
    /// `cargo test --release -p relay --lib dkim::sign::tests::signing_throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; run in release"]
    fn signing_throughput() {
        fn message(size: usize) -> Vec<u8> {
            let mut m = MESSAGE
                .split("\r\n\r\n")
                .next()
                .unwrap_or_default()
                .to_string();
            m.push_str("\r\n\r\n");
            let line =
                "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\r\n";
            while m.len() < size {
                m.push_str(line);
            }
            m.into_bytes()
        }
        for (name, key) in [
            ("rsa-2048", fixtures::rsa()),
            ("ed25519", fixtures::ed25519()),
        ] {
            for c in ["relaxed/relaxed", "simple/simple"] {
                let mut spec = SignerSpec::new("example.com", "s", key.clone());
                spec.canonicalization = Canonicalization::parse(c).expect("valid");
                for size in [2 * 1024, 100 * 1024] {
                    let m = message(size);
                    let started = Instant::now();
                    let mut count = 0u32;
                    while started.elapsed() < Duration::from_secs(2) {
                        sign(&spec, &m, 1).expect("signs");
                        count += 1;
                    }
                    let rate = f64::from(count) / started.elapsed().as_secs_f64();
                    println!(
                        "{name:>8} {c:<15} {:>4} KB: {rate:>8.0} messages/s ({:.1} µs each)",
                        size / 1024,
                        1e6 / rate
                    );
                }
            }
        }
    }
}
