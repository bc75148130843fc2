//! `X-Hub-Signature-256: sha256=<hex>`: HMAC-SHA256 of the raw body with the app secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::Secret;

type HmacSha256 = Hmac<Sha256>;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

#[derive(Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    /// No header: 401.
    Missing,
    /// Header present but not matching any secret (or not `sha256=<hex>`): 403.
    Invalid,
}

/// Check `header` against the body with each secret (several while rotating).
/// Runs before the body is parsed; the comparison is constant-time.
pub fn check_signature(header: Option<&[u8]>, body: &[u8], secrets: &[Secret]) -> SignatureCheck {
    let Some(header) = header else {
        return SignatureCheck::Missing;
    };
    let Some(hex_digest) = header.strip_prefix(b"sha256=") else {
        return SignatureCheck::Invalid;
    };
    let mut expected = [0u8; 32];
    if hex_digest.len() != 64 || hex::decode_to_slice(hex_digest, &mut expected).is_err() {
        return SignatureCheck::Invalid;
    }
    let any_valid = secrets.iter().fold(false, |found, secret| {
        found | verify_one(secret.expose().as_bytes(), body, &expected)
    });
    if any_valid {
        SignatureCheck::Valid
    } else {
        SignatureCheck::Invalid
    }
}

fn verify_one(key: &[u8], body: &[u8], expected: &[u8; 32]) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(expected).is_ok()
}

/// The header value for `body`: what Meta sends, and what tests and `events/` use.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> Vec<Secret> {
        list.iter().map(|s| Secret::new(*s)).collect()
    }

    #[test]
    fn valid_signature_passes() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let header = sign("s3cret", body);
        assert_eq!(
            check_signature(Some(header.as_bytes()), body, &secrets(&["s3cret"])),
            SignatureCheck::Valid
        );
    }

    #[test]
    fn any_rotated_secret_verifies() {
        let body = b"{}";
        let header = sign("new", body);
        assert_eq!(
            check_signature(Some(header.as_bytes()), body, &secrets(&["old", "new"])),
            SignatureCheck::Valid
        );
    }

    #[test]
    fn tampered_body_or_bad_header_fails() {
        let header = sign("s", b"{}");
        assert_eq!(
            check_signature(Some(header.as_bytes()), b"{ }", &secrets(&["s"])),
            SignatureCheck::Invalid
        );
        assert_eq!(
            check_signature(Some(b"sha1=00"), b"{}", &secrets(&["s"])),
            SignatureCheck::Invalid
        );
        assert_eq!(
            check_signature(Some(b"sha256=zz"), b"{}", &secrets(&["s"])),
            SignatureCheck::Invalid
        );
        assert_eq!(
            check_signature(None, b"{}", &secrets(&["s"])),
            SignatureCheck::Missing
        );
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog")
        assert_eq!(
            sign("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
