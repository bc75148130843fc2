//! Meta's subscription handshake: `GET ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`.

use subtle::ConstantTimeEq;

#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    /// Answer 200 with exactly this challenge.
    Accepted(String),
    /// A `hub.*` parameter is missing: 400.
    Missing(&'static str),
    /// Wrong mode or token: 403.
    Refused,
}

/// Check the query string of a verification request against the configured token.
pub fn verify_subscription(query: Option<&str>, verify_token: &str) -> Verification {
    let (mut mode, mut token, mut challenge) = (None, None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "hub.mode" => mode = Some(value.into_owned()),
            "hub.verify_token" => token = Some(value.into_owned()),
            "hub.challenge" => challenge = Some(value.into_owned()),
            _ => {}
        }
    }
    let Some(mode) = mode else {
        return Verification::Missing("hub.mode");
    };
    let Some(token) = token else {
        return Verification::Missing("hub.verify_token");
    };
    let Some(challenge) = challenge else {
        return Verification::Missing("hub.challenge");
    };
    let token_ok: bool = token.as_bytes().ct_eq(verify_token.as_bytes()).into();
    if mode == "subscribe" && token_ok {
        Verification::Accepted(challenge)
    } else {
        Verification::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_matching_token() {
        assert_eq!(
            verify_subscription(
                Some("hub.mode=subscribe&hub.verify_token=t%20k&hub.challenge=123"),
                "t k"
            ),
            Verification::Accepted("123".into())
        );
    }

    #[test]
    fn refuses_wrong_token_or_mode() {
        assert_eq!(
            verify_subscription(
                Some("hub.mode=subscribe&hub.verify_token=x&hub.challenge=1"),
                "t"
            ),
            Verification::Refused
        );
        assert_eq!(
            verify_subscription(
                Some("hub.mode=unsubscribe&hub.verify_token=t&hub.challenge=1"),
                "t"
            ),
            Verification::Refused
        );
        assert_eq!(
            verify_subscription(
                Some("hub.mode=subscribe&hub.verify_token=tt&hub.challenge=1"),
                "t"
            ),
            Verification::Refused
        );
    }

    #[test]
    fn names_missing_parameter() {
        assert_eq!(
            verify_subscription(None, "t"),
            Verification::Missing("hub.mode")
        );
        assert_eq!(
            verify_subscription(Some("hub.mode=subscribe&hub.verify_token=t"), "t"),
            Verification::Missing("hub.challenge")
        );
    }
}
