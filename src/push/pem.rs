//! The SubjectPublicKeyInfo PEM of an RSA public key, as `jwt_validation_pubkeys` takes it, built
//! from the JWK members every published key keeps (a retired key's private part is gone).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::keys::PublicJwk;

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
    }
}
