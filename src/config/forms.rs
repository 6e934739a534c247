//! The forms single values must have: addresses, loopback, audience globs, RSA key sizes. The
//! issuer's form is `issuer.rs`'s.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

pub use crate::glob::glob_match;
pub use crate::keys::RsaBits;

/// Why a value does not have its form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// Neither an IP address nor a CIDR block.
    #[error("{0:?} is not an address or CIDR block such as 10.0.7.0/24")]
    Cidr(String),
    /// An RSA key size other than 2048, 3072 or 4096 bits.
    #[error("must be 2048, 3072 or 4096")]
    RsaBits(i64),
}

impl TryFrom<i64> for RsaBits {
    type Error = FormError;

    fn try_from(bits: i64) -> Result<RsaBits, FormError> {
        match bits {
            2048 => Ok(RsaBits::Rsa2048),
            3072 => Ok(RsaBits::Rsa3072),
            4096 => Ok(RsaBits::Rsa4096),
            other => Err(FormError::RsaBits(other)),
        }
    }
}

impl fmt::Display for RsaBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bits())
    }
}

pub(super) fn parse_cidr(text: &str) -> Result<IpNet, FormError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| FormError::Cidr(text.to_owned()))
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_bits_are_the_three_sizes_only() {
        for (n, bits) in [
            (2048, RsaBits::Rsa2048),
            (3072, RsaBits::Rsa3072),
            (4096, RsaBits::Rsa4096),
        ] {
            assert_eq!(RsaBits::try_from(n), Ok(bits));
            assert_eq!(i64::from(bits.bits()), n);
            assert_eq!(bits.to_string(), n.to_string());
        }
        for n in [0, -2048, 1024, 2047, 2049, 4097, 8192] {
            let error = RsaBits::try_from(n).unwrap_err();
            assert_eq!(error, FormError::RsaBits(n));
            assert_eq!(error.to_string(), "must be 2048, 3072 or 4096");
        }
        assert_eq!(RsaBits::default(), RsaBits::Rsa2048);
    }

    #[test]
    fn cidr_takes_blocks_and_single_addresses() {
        assert_eq!(
            parse_cidr("10.0.7.0/24").unwrap().to_string(),
            "10.0.7.0/24"
        );
        assert_eq!(parse_cidr("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert_eq!(
            parse_cidr("10.0.0.0/33").unwrap_err().to_string(),
            "\"10.0.0.0/33\" is not an address or CIDR block such as 10.0.7.0/24"
        );
    }
}
