//! The SubjectPublicKeyInfo PEM of an RSA public key, both ways: written from the JWK members every
//! published key keeps (push mode's `jwt_validation_pubkeys`), and read back into them (the public
//! key of each version of a Vault transit key).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::PublicJwk;

/// `rsaEncryption` (1.2.840.113549.1.1.1) with its NULL parameters, DER.
const RSA_ALGORITHM: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// Why a JWK could not be written as PEM: a member that is not base64url.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the key's {0} is not base64url")]
pub struct BadJwk(&'static str);

/// `-----BEGIN PUBLIC KEY-----` PEM of `jwk`.
pub fn public_key_pem(jwk: &PublicJwk) -> Result<String, BadJwk> {
    let n = URL_SAFE_NO_PAD.decode(&jwk.n).map_err(|_| BadJwk("n"))?;
    let e = URL_SAFE_NO_PAD.decode(&jwk.e).map_err(|_| BadJwk("e"))?;
    let rsa_key = tlv(0x30, &[integer(&n), integer(&e)].concat());
    let bits = tlv(0x03, &[&[0u8][..], &rsa_key].concat());
    let spki = tlv(0x30, &[&RSA_ALGORITHM[..], &bits].concat());
    let body = STANDARD.encode(spki);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    Ok(format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    ))
}

/// Why a PEM is not an RSA public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RSA public key (SubjectPublicKeyInfo PEM): {0}")]
pub struct NotRsaPublicKey(&'static str);

/// The JWK members of a `-----BEGIN PUBLIC KEY-----` PEM holding an RSA key. Strict DER: the
/// exact algorithm identifier, no unused bits, nothing trailing.
pub fn jwk_from_pem(pem: &str) -> Result<PublicJwk, NotRsaPublicKey> {
    let body: String = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|rest| rest.strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or(NotRsaPublicKey("no PUBLIC KEY block"))?
        .split_whitespace()
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|_| NotRsaPublicKey("not base64"))?;
    let (spki, rest) = read_tlv(&der, 0x30)?;
    if !rest.is_empty() {
        return Err(NotRsaPublicKey("trailing data"));
    }
    let algorithm = spki
        .strip_prefix(&RSA_ALGORITHM[..])
        .ok_or(NotRsaPublicKey("not rsaEncryption"))?;
    let (bits, rest) = read_tlv(algorithm, 0x03)?;
    let key = match (bits.split_first(), rest.is_empty()) {
        (Some((0, key)), true) => key,
        _ => return Err(NotRsaPublicKey("bad bit string")),
    };
    let (sequence, rest) = read_tlv(key, 0x30)?;
    let (n, after_n) = read_tlv(sequence, 0x02)?;
    let (e, after_e) = read_tlv(after_n, 0x02)?;
    if !rest.is_empty() || !after_e.is_empty() {
        return Err(NotRsaPublicKey("trailing data"));
    }
    let unsigned = |v: &[u8]| -> Vec<u8> { v.iter().copied().skip_while(|&b| b == 0).collect() };
    Ok(PublicJwk {
        n: URL_SAFE_NO_PAD.encode(unsigned(n)),
        e: URL_SAFE_NO_PAD.encode(unsigned(e)),
    })
}

/// The content of the DER element with `tag` at the start of `der`, and what follows it.
fn read_tlv(der: &[u8], tag: u8) -> Result<(&[u8], &[u8]), NotRsaPublicKey> {
    let bad = NotRsaPublicKey("malformed DER");
    let (&found, rest) = der.split_first().ok_or(bad.clone())?;
    let (&first, rest) = rest.split_first().ok_or(bad.clone())?;
    if found != tag {
        return Err(bad);
    }
    let (len, rest) = match first {
        l if l < 0x80 => (usize::from(l), rest),
        0x81 => (usize::from(*rest.first().ok_or(bad.clone())?), &rest[1..]),
        0x82 if rest.len() >= 2 => (
            usize::from(u16::from_be_bytes([rest[0], rest[1]])),
            &rest[2..],
        ),
        _ => return Err(bad),
    };
    if rest.len() < len {
        return Err(bad);
    }
    Ok(rest.split_at(len))
}

/// A DER INTEGER of an unsigned big-endian value.
fn integer(value: &[u8]) -> Vec<u8> {
    let trimmed = match value.iter().position(|&b| b != 0) {
        Some(first) => &value[first..],
        None => &[0u8][..],
    };
    let padded = if trimmed[0] & 0x80 != 0 {
        [&[0u8][..], trimmed].concat()
    } else {
        trimmed.to_vec()
    };
    tlv(0x02, &padded)
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;

    #[test]
    fn pem_is_the_spki_aws_lc_writes() {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let jwk = crate::keys::public_jwk(&pair);
        let der: PublicKeyX509Der = pair.public_key().as_der().unwrap();
        let pem = public_key_pem(&jwk).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(STANDARD.decode(body).unwrap(), der.as_ref());
        assert_eq!(jwk_from_pem(&pem).unwrap(), jwk);
    }

    #[test]
    fn what_is_not_an_rsa_spki_is_refused() {
        assert!(
            jwk_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err()
        );
        assert!(jwk_from_pem("hello").is_err());
        let jwk = PublicJwk {
            n: "AQAB".into(),
            e: "AQAB".into(),
        };
        let pem = public_key_pem(&jwk).unwrap();
        assert_eq!(jwk_from_pem(&pem).unwrap(), jwk);
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = STANDARD.decode(body).unwrap();
        der.push(0);
        let trailing = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
            STANDARD.encode(der)
        );
        assert!(jwk_from_pem(&trailing).is_err());
    }
}
