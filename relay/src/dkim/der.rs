//! The few DER (X.690) structures DKIM keys need: which algorithm a PKCS#8 key is for, an RSA
//! modulus's size, and the SubjectPublicKeyInfo wrapping of an RSA public key (RFC 5280 4.1).
//!
//! ring parses and validates the keys themselves; this only looks far enough to give a clear
//! reason ("RSA key of 1024 bits", "an EC key") before ring would say "InvalidEncoding".

/// DER tags used here.
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;

/// rsaEncryption, 1.2.840.113549.1.1.1 (RFC 8017 A.1).
pub(super) const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-Ed25519, 1.3.101.112 (RFC 8410 3).
pub(super) const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Names of key algorithms DKIM cannot sign with, for error messages.
const OTHER_ALGORITHMS: &[(&[u8], &str)] = &[
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
        "an EC (ECDSA) key",
    ),
    (&[0x2b, 0x65, 0x71], "an Ed448 key"),
    (&[0x2b, 0x65, 0x6e], "an X25519 key"),
    (&[0x2b, 0x65, 0x6f], "an X448 key"),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a],
        "an RSA-PSS key",
    ),
    (&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01], "a DSA key"),
];

/// One tag-length-value: the tag, the contents, and what follows.
fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form; 0x80 (indefinite) is BER, not DER. Four length bytes cover any key.
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Reads one element that must have `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match read(input)? {
        (found, contents, rest) if found == tag => Some((contents, rest)),
        _ => None,
    }
}

/// A length in DER.
fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// One element.
fn write(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    write_len(out, contents.len());
    out.extend_from_slice(contents);
}

/// What a PKCS#8 PrivateKeyInfo (RFC 5208 5, RFC 5958 2) holds.
pub(super) enum Pkcs8<'a> {
    /// An RSA key; the RSAPrivateKey (PKCS#1) inside.
    Rsa(&'a [u8]),
    /// An Ed25519 key; the CurvePrivateKey (RFC 8410 7) inside.
    Ed25519(&'a [u8]),
    /// Another algorithm, described for a person ("an EC (ECDSA) key").
    Other(String),
}

/// Looks at a PKCS#8 key's algorithm; `None` when it is not PKCS#8 DER.
pub(super) fn pkcs8(der: &[u8]) -> Option<Pkcs8<'_>> {
    let (info, _) = expect(der, SEQUENCE)?;
    let (_version, rest) = expect(info, INTEGER)?;
    let (algorithm, rest) = expect(rest, SEQUENCE)?;
    let (oid, _parameters) = expect(algorithm, OID)?;
    let (private_key, _) = expect(rest, OCTET_STRING)?;
    Some(if oid == OID_RSA {
        Pkcs8::Rsa(private_key)
    } else if oid == OID_ED25519 {
        Pkcs8::Ed25519(private_key)
    } else {
        Pkcs8::Other(
            OTHER_ALGORITHMS
                .iter()
                .find(|(known, _)| *known == oid)
                .map(|(_, name)| (*name).to_string())
                .unwrap_or_else(|| format!("a key of algorithm {}", oid_text(oid))),
        )
    })
}

/// The 32-byte seed in an Ed25519 CurvePrivateKey (an OCTET STRING, RFC 8410 7).
pub(super) fn ed25519_seed(curve_private_key: &[u8]) -> Option<&[u8]> {
    match expect(curve_private_key, OCTET_STRING)? {
        (seed, []) if seed.len() == 32 => Some(seed),
        _ => None,
    }
}

/// An Ed25519 seed as PKCS#8 v1 (RFC 8410 7, without the public key): what OpenSSL writes and
/// reads. ring generates v2, which OpenSSL 3.0 cannot load.
pub(super) fn ed25519_pkcs8_v1(seed: &[u8]) -> Vec<u8> {
    let mut algorithm = Vec::with_capacity(5);
    write(&mut algorithm, OID, OID_ED25519);
    let mut curve_private_key = Vec::with_capacity(34);
    write(&mut curve_private_key, OCTET_STRING, seed);
    let mut body = Vec::with_capacity(46);
    write(&mut body, INTEGER, &[0]);
    write(&mut body, SEQUENCE, &algorithm);
    write(&mut body, OCTET_STRING, &curve_private_key);
    let mut out = Vec::with_capacity(48);
    write(&mut out, SEQUENCE, &body);
    out
}

/// The modulus size in bits of an RSAPrivateKey (RFC 8017 A.1.2); `None` when it is not one.
pub(super) fn rsa_private_key_bits(der: &[u8]) -> Option<usize> {
    let (key, _) = expect(der, SEQUENCE)?;
    let (_version, rest) = expect(key, INTEGER)?;
    let (modulus, _) = expect(rest, INTEGER)?;
    Some(integer_bits(modulus))
}

/// The modulus size in bits of an RSAPublicKey (RFC 8017 A.1.1); `None` when it is not one.
pub(super) fn rsa_public_key_bits(der: &[u8]) -> Option<usize> {
    let (key, rest) = expect(der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (modulus, rest) = expect(key, INTEGER)?;
    let (_exponent, rest) = expect(rest, INTEGER)?;
    rest.is_empty().then(|| integer_bits(modulus))
}

/// Bits in a positive INTEGER's contents (leading zero bytes are padding).
fn integer_bits(contents: &[u8]) -> usize {
    let significant: &[u8] = match contents.iter().position(|&b| b != 0) {
        Some(start) => &contents[start..],
        None => &[],
    };
    match significant.first() {
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// An RSAPublicKey wrapped as SubjectPublicKeyInfo: what `p=` carries for `k=rsa` in practice
/// (RFC 6376 3.6.1 says RSAPublicKey, but its own example and every signer publish this form,
/// and every verifier accepts it).
pub(super) fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    let mut algorithm = Vec::with_capacity(15);
    write(&mut algorithm, OID, OID_RSA);
    write(&mut algorithm, NULL, &[]);
    let mut bits = Vec::with_capacity(rsa_public_key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(rsa_public_key);
    let mut body = Vec::with_capacity(rsa_public_key.len() + 24);
    write(&mut body, SEQUENCE, &algorithm);
    write(&mut body, BIT_STRING, &bits);
    let mut out = Vec::with_capacity(body.len() + 4);
    write(&mut out, SEQUENCE, &body);
    out
}

/// A SubjectPublicKeyInfo's algorithm OID and key bits; `None` when it is not one.
pub(super) fn spki(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (info, rest) = expect(der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (algorithm, rest) = expect(info, SEQUENCE)?;
    let (oid, _parameters) = expect(algorithm, OID)?;
    let (bits, rest) = expect(rest, BIT_STRING)?;
    if !rest.is_empty() {
        return None;
    }
    match bits.split_first() {
        Some((0, key)) => Some((oid, key)),
        _ => None,
    }
}

/// Dotted text of an OID, for messages about algorithms we do not know by name.
fn oid_text(oid: &[u8]) -> String {
    let Some((&first, rest)) = oid.split_first() else {
        return "(empty)".to_string();
    };
    let (x, y) = if first < 80 {
        (first / 40, first % 40)
    } else {
        (2, first - 80)
    };
    let mut arcs = vec![u64::from(x), u64::from(y)];
    let mut value: u64 = 0;
    for &b in rest {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_in_short_and_long_form() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let contents = vec![7u8; len];
            let mut out = Vec::new();
            write(&mut out, OCTET_STRING, &contents);
            let (tag, read_back, rest) = read(&out).expect("readable");
            assert_eq!((tag, read_back.len(), rest.len()), (OCTET_STRING, len, 0));
        }
    }

    #[test]
    fn truncated_or_indefinite_lengths_are_refused() {
        assert!(read(&[SEQUENCE, 0x05, 1, 2]).is_none());
        assert!(read(&[SEQUENCE, 0x80, 0, 0]).is_none());
        assert!(read(&[SEQUENCE, 0x82, 0x01]).is_none());
        assert!(read(&[]).is_none());
    }

    #[test]
    fn integer_bits_ignores_the_sign_padding_byte() {
        assert_eq!(integer_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(integer_bits(&[0x01, 0x00]), 9);
        assert_eq!(integer_bits(&[0x00]), 0);
    }

    #[test]
    fn spki_unwraps_what_rsa_spki_wraps() {
        let mut key = Vec::new();
        let mut inner = Vec::new();
        write(&mut inner, INTEGER, &[0x00, 0xc1, 0x02]);
        write(&mut inner, INTEGER, &[0x01, 0x00, 0x01]);
        write(&mut key, SEQUENCE, &inner);
        let wrapped = rsa_spki(&key);
        let (oid, bits) = spki(&wrapped).expect("spki");
        assert_eq!(oid, OID_RSA);
        assert_eq!(bits, key.as_slice());
        assert_eq!(rsa_public_key_bits(bits), Some(16));
    }

    #[test]
    fn ed25519_v1_encoding_is_rfc_8410s() {
        // RFC 8410 10.3: the example private key, byte for byte.
        let seed = [
            0xd4, 0xee, 0x72, 0xdb, 0xf9, 0x13, 0x58, 0x4a, 0xd5, 0xb6, 0xd8, 0xf1, 0xf7, 0x69,
            0xf8, 0xad, 0x3a, 0xfe, 0x7c, 0x28, 0xcb, 0xf1, 0xd4, 0xfb, 0xe0, 0x97, 0xa8, 0x8f,
            0x44, 0x75, 0x58, 0x42,
        ];
        let der = ed25519_pkcs8_v1(&seed);
        use base64::Engine as _;
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(&der),
            "MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC"
        );
        match pkcs8(&der) {
            Some(Pkcs8::Ed25519(inner)) => assert_eq!(ed25519_seed(inner), Some(&seed[..])),
            _ => panic!("not read back as Ed25519"),
        }
    }

    #[test]
    fn unknown_oids_are_shown_dotted() {
        assert_eq!(oid_text(OID_RSA), "1.2.840.113549.1.1.1");
        assert_eq!(oid_text(OID_ED25519), "1.3.101.112");
    }
}
