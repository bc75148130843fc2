//! Tier 3 approvals asked over WhatsApp: the message the user gets (a body and two reply
//! buttons, Approve / Deny) and the ids of those buttons.
//!
//! A button id is stateless and tamper-proof: `t3:<a|d>:<expires_at>:<action_id>:<mac>`,
//! where `mac` is HMAC-SHA256 (first 16 bytes, lowercase hex) with a configured key over
//! the decision, the expiry, the action id and the owner (the sender's state key). The
//! owner is bound but never written into the id, so a tap forwarded from (or forged by)
//! another number does not verify, and no phone number travels in the id. Any key of the
//! list verifies (rotation); new ids are made with the first.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Reply-button titles (WhatsApp allows at most 20 characters).
pub const APPROVE_TITLE: &str = "Approve";
pub const DENY_TITLE: &str = "Deny";

/// What starts every approval button id.
const PREFIX: &str = "t3:";
/// Binds a MAC to this use and version of the id, apart from any other use of the keys.
const MAC_CONTEXT: &[u8] = b"openparallax-whatsapp/t3-approval-button/v1";
/// Bytes of the HMAC kept in the id (hex: twice as many characters).
const MAC_BYTES: usize = 16;
/// Longest action id accepted (the engine's ids are hex or uuid-like).
const MAX_ACTION_ID: usize = 128;
/// WhatsApp's limit on an interactive message body, in characters.
const MAX_BODY: usize = 1024;
/// Longest tool name shown, in characters.
const MAX_TOOL_NAME: usize = 60;
/// Shown when the tool name is empty once its markup characters are gone.
const UNNAMED_TOOL: &str = "unnamed tool";

/// The engine asking the user to approve one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    pub action_id: String,
    pub tool_name: String,
    pub reasoning: String,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    /// The engine's wire word: `approve` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
        }
    }

    /// The title of this decision's reply button.
    pub fn title(self) -> &'static str {
        match self {
            Decision::Approve => APPROVE_TITLE,
            Decision::Deny => DENY_TITLE,
        }
    }

    fn tag(self) -> char {
        match self {
            Decision::Approve => 'a',
            Decision::Deny => 'd',
        }
    }

    fn from_tag(tag: &str) -> Option<Decision> {
        match tag {
            "a" => Some(Decision::Approve),
            "d" => Some(Decision::Deny),
            _ => None,
        }
    }
}

/// What a tapped reply button's id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ButtonVerdict {
    /// Not an approval button (some other reply button): handle as before.
    NotApproval,
    /// An approval button id that is malformed, altered, made with an unknown key, or
    /// made for another sender.
    Invalid,
    /// Genuine, but tapped after its expiry.
    Expired { action_id: String },
    Valid {
        action_id: String,
        decision: Decision,
    },
}

/// The id of the reply button for `decision` on `action_id`, valid until `expires_at`
/// (unix seconds) when tapped by `owner` (the sender's state key). `None` when there is
/// no key (or the first key is empty) or the action id is empty, longer than 128 bytes
/// or has characters outside `[A-Za-z0-9._-]`. At most 187 characters.
pub fn button_id(
    keys: &[Secret],
    decision: Decision,
    action_id: &str,
    owner: &str,
    expires_at: u64,
) -> Option<String> {
    let key = keys.first().filter(|k| !k.expose().is_empty())?;
    if !valid_action_id(action_id) {
        return None;
    }
    let mac = mac(key, decision, expires_at, action_id, owner)?;
    let tag = mac.finalize().into_bytes();
    Some(format!(
        "{PREFIX}{}:{expires_at}:{action_id}:{}",
        decision.tag(),
        hex_lower(&tag[..MAC_BYTES])
    ))
}

/// Whether a reply button id is an approval button's (a prefix check; not verified).
pub fn is_approval_button(id: &str) -> bool {
    id.starts_with(PREFIX)
}

/// Read and verify a tapped button id (network input: never panics). The MAC is checked
/// (in constant time, against every key) before the expiry: an altered id is `Invalid`
/// however old; a genuine one is `Expired` once `now` is past its expiry.
pub fn read_button(keys: &[Secret], id: &str, owner: &str, now: u64) -> ButtonVerdict {
    let Some(rest) = id.strip_prefix(PREFIX) else {
        return ButtonVerdict::NotApproval;
    };
    let Some(parsed) = parse(rest) else {
        return ButtonVerdict::Invalid;
    };
    let verified = keys
        .iter()
        .filter(|k| !k.expose().is_empty())
        .fold(false, |found, key| {
            found
                | mac(
                    key,
                    parsed.decision,
                    parsed.expires_at,
                    parsed.action_id,
                    owner,
                )
                .is_some_and(|m| m.verify_truncated_left(&parsed.mac).is_ok())
        });
    if !verified {
        return ButtonVerdict::Invalid;
    }
    let action_id = parsed.action_id.to_string();
    if now > parsed.expires_at {
        ButtonVerdict::Expired { action_id }
    } else {
        ButtonVerdict::Valid {
            action_id,
            decision: parsed.decision,
        }
    }
}

/// The fields of an id after `t3:`, in their one canonical spelling.
struct Parsed<'a> {
    decision: Decision,
    expires_at: u64,
    action_id: &'a str,
    mac: [u8; MAC_BYTES],
}

fn parse(rest: &str) -> Option<Parsed<'_>> {
    let (tag, rest) = rest.split_once(':')?;
    let (expires, rest) = rest.split_once(':')?;
    let (action_id, mac_hex) = rest.rsplit_once(':')?;
    let decision = Decision::from_tag(tag)?;
    let expires_at = canonical_u64(expires)?;
    if !valid_action_id(action_id) {
        return None;
    }
    Some(Parsed {
        decision,
        expires_at,
        action_id,
        mac: decode_mac(mac_hex)?,
    })
}

/// Decimal digits without a sign or leading zeros (so one number has one spelling).
fn canonical_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

fn valid_action_id(action_id: &str) -> bool {
    !action_id.is_empty()
        && action_id.len() <= MAX_ACTION_ID
        && action_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The HMAC state over the canonical string of a button: context, decision, expiry,
/// action id and owner, one per line (only the owner, last, may hold any character).
fn mac(
    key: &Secret,
    decision: Decision,
    expires_at: u64,
    action_id: &str,
    owner: &str,
) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key.expose().as_bytes()).ok()?;
    let canonical = format!("\n{}\n{expires_at}\n{action_id}\n{owner}", decision.tag());
    mac.update(MAC_CONTEXT);
    mac.update(canonical.as_bytes());
    Some(mac)
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Exactly `2 * MAC_BYTES` lowercase hex digits (uppercase would be a second spelling).
fn decode_mac(text: &str) -> Option<[u8; MAC_BYTES]> {
    let bytes = text.as_bytes();
    if bytes.len() != MAC_BYTES * 2 {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; MAC_BYTES];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The body of the approval message: the tool in bold, the engine's reasoning, and the
/// time left to answer. At most 1024 characters and 1024 UTF-16 units (WhatsApp's limit
/// for an interactive body): the reasoning is shortened, with "…", to fit.
pub fn approval_body(request: &ApprovalRequest) -> String {
    let minutes = request.timeout_secs.div_ceil(60).max(1);
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    let head = format!("Approval needed: *{}*", tool_label(&request.tool_name));
    let tail = format!("Tap {APPROVE_TITLE} or {DENY_TITLE} within {minutes} {unit}.");
    let reasoning = request.reasoning.trim();
    if reasoning.is_empty() {
        return format!("{head}\n\n{tail}");
    }
    let fixed = utf16_len(&head) + utf16_len(&tail) + 4; // two "\n\n"
    let reasoning = shorten(reasoning, MAX_BODY.saturating_sub(fixed));
    format!("{head}\n\n{reasoning}\n\n{tail}")
}

/// The tool name on one line, without the characters that would end its bold span
/// or strike it through (`_` stays: tool names are snake_case), at most 60 characters.
fn tool_label(tool_name: &str) -> String {
    let cleaned: String = tool_name
        .chars()
        .filter(|c| !matches!(c, '*' | '~' | '`'))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.is_empty() {
        return UNNAMED_TOOL.to_string();
    }
    if cleaned.chars().count() <= MAX_TOOL_NAME {
        return cleaned;
    }
    let mut cut: String = cleaned.chars().take(MAX_TOOL_NAME - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// `text` whole when it fits in `max_units` UTF-16 units, else its longest prefix (on a
/// character boundary, trailing whitespace dropped) that fits with "…" after it.
fn shorten(text: &str, max_units: usize) -> String {
    if utf16_len(text) <= max_units {
        return text.to_string();
    }
    let budget = max_units.saturating_sub(1); // "…" is one unit
    let mut used = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        end = i + c.len_utf8();
    }
    let mut cut = text[..end].trim_end().to_string();
    cut.push('…');
    cut
}

fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OWNER: &str = "15557654321";
    const NOW: u64 = 1_795_795_200;

    fn keys(list: &[&str]) -> Vec<Secret> {
        list.iter().map(|k| Secret::new(*k)).collect()
    }

    fn id(decision: Decision, action_id: &str, expires_at: u64) -> String {
        button_id(&keys(&["k1"]), decision, action_id, OWNER, expires_at).expect("an id")
    }

    fn request(tool_name: &str, reasoning: &str, timeout_secs: u64) -> ApprovalRequest {
        ApprovalRequest {
            action_id: "a1".into(),
            tool_name: tool_name.into(),
            reasoning: reasoning.into(),
            timeout_secs,
        }
    }

    #[test]
    fn decisions_speak_the_engines_words_and_fit_a_button() {
        assert_eq!(Decision::Approve.as_str(), "approve");
        assert_eq!(Decision::Deny.as_str(), "deny");
        assert_eq!(Decision::Approve.title(), "Approve");
        assert_eq!(Decision::Deny.title(), "Deny");
        assert!(APPROVE_TITLE.chars().count() <= 20 && DENY_TITLE.chars().count() <= 20);
    }

    #[test]
    fn a_button_id_has_the_documented_shape_and_no_owner() {
        let id = id(Decision::Approve, "act-0f.9_Z", NOW + 300);
        let parts: Vec<&str> = id.split(':').collect();
        assert_eq!(parts[..4], ["t3", "a", "1795795500", "act-0f.9_Z"]);
        assert_eq!(parts[4].len(), 32);
        assert!(
            parts[4]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(!id.contains(OWNER), "the owner is bound, never written");
        assert!(is_approval_button(&id));
        let deny = self::id(Decision::Deny, "act-0f.9_Z", NOW + 300);
        assert!(deny.starts_with("t3:d:"));
        assert_ne!(id[id.len() - 32..], deny[deny.len() - 32..]);
    }

    #[test]
    fn the_longest_id_is_within_whatsapps_limit() {
        let id = id(Decision::Approve, &"x".repeat(128), u64::MAX);
        assert!(id.len() <= 256, "{}", id.len());
        assert_eq!(
            read_button(&keys(&["k1"]), &id, OWNER, NOW),
            ButtonVerdict::Valid {
                action_id: "x".repeat(128),
                decision: Decision::Approve
            }
        );
    }

    #[test]
    fn no_id_without_a_key_or_for_a_bad_action_id() {
        let k = keys(&["k1"]);
        assert_eq!(button_id(&[], Decision::Approve, "a1", OWNER, NOW), None);
        assert_eq!(
            button_id(&keys(&[""]), Decision::Approve, "a1", OWNER, NOW),
            None
        );
        for bad in ["", "a:b", "a b", "é", "a/b", "a\n", &"x".repeat(129)] {
            assert_eq!(
                button_id(&k, Decision::Approve, bad, OWNER, NOW),
                None,
                "{bad:?}"
            );
        }
        assert!(button_id(&k, Decision::Approve, &"x".repeat(128), OWNER, NOW).is_some());
        let uuid = "123e4567-e89b-12d3-a456-426614174000";
        assert!(button_id(&k, Decision::Deny, uuid, OWNER, NOW).is_some());
    }

    #[test]
    fn a_genuine_tap_reads_as_its_decision_until_it_expires() {
        let k = keys(&["k1"]);
        let approve = id(Decision::Approve, "a1", NOW + 60);
        let deny = id(Decision::Deny, "a1", NOW + 60);
        let valid = |decision| ButtonVerdict::Valid {
            action_id: "a1".into(),
            decision,
        };
        assert_eq!(
            read_button(&k, &approve, OWNER, NOW),
            valid(Decision::Approve)
        );
        assert_eq!(read_button(&k, &deny, OWNER, NOW), valid(Decision::Deny));
        assert_eq!(
            read_button(&k, &approve, OWNER, NOW + 60),
            valid(Decision::Approve),
            "valid up to and including the expiry second"
        );
        assert_eq!(
            read_button(&k, &approve, OWNER, NOW + 61),
            ButtonVerdict::Expired {
                action_id: "a1".into()
            }
        );
    }

    #[test]
    fn another_owner_or_key_makes_a_tap_invalid() {
        let approve = id(Decision::Approve, "a1", NOW + 60);
        assert_eq!(
            read_button(&keys(&["k1"]), &approve, "15557654322", NOW),
            ButtonVerdict::Invalid
        );
        assert_eq!(
            read_button(&keys(&["k2"]), &approve, OWNER, NOW),
            ButtonVerdict::Invalid
        );
        assert_eq!(
            read_button(&[], &approve, OWNER, NOW),
            ButtonVerdict::Invalid
        );
        assert_eq!(
            read_button(&keys(&["", "k2"]), &approve, OWNER, NOW),
            ButtonVerdict::Invalid
        );
    }

    #[test]
    fn any_rotated_key_verifies() {
        let approve = id(Decision::Approve, "a1", NOW + 60);
        assert!(matches!(
            read_button(&keys(&["k2", "k1"]), &approve, OWNER, NOW),
            ButtonVerdict::Valid { .. }
        ));
    }

    #[test]
    fn an_altered_id_is_invalid_even_when_old() {
        let k = keys(&["k1"]);
        let approve = id(Decision::Approve, "a1", NOW - 10);
        let forged_decision = approve.replacen("t3:a:", "t3:d:", 1);
        assert_eq!(
            read_button(&k, &forged_decision, OWNER, NOW),
            ButtonVerdict::Invalid
        );
        let later = approve.replacen(&(NOW - 10).to_string(), &(NOW + 10).to_string(), 1);
        assert_eq!(read_button(&k, &later, OWNER, NOW), ButtonVerdict::Invalid);
        let other_action = approve.replacen(":a1:", ":a2:", 1);
        assert_eq!(
            read_button(&k, &other_action, OWNER, NOW),
            ButtonVerdict::Invalid
        );
    }

    #[test]
    fn only_the_canonical_spelling_verifies() {
        let k = keys(&["k1"]);
        let approve = id(Decision::Approve, "a1", NOW + 60);
        let upper = format!(
            "{}{}",
            &approve[..approve.len() - 32],
            approve[approve.len() - 32..].to_uppercase()
        );
        let padded = approve.replacen(":1795", ":01795", 1);
        let signed = approve.replacen(":1795", ":+1795", 1);
        for variant in [
            upper,
            padded,
            signed,
            format!("{approve}:"),
            format!("{approve}0"),
        ] {
            assert_eq!(
                read_button(&k, &variant, OWNER, NOW),
                ButtonVerdict::Invalid,
                "{variant}"
            );
        }
    }

    #[test]
    fn other_ids_are_not_approvals_and_broken_ones_are_invalid() {
        let k = keys(&["k1"]);
        for other in ["", "yes-1", "T3:a:1:a1:00", "t3", "x t3:a"] {
            assert!(!is_approval_button(other));
            assert_eq!(
                read_button(&k, other, OWNER, NOW),
                ButtonVerdict::NotApproval
            );
        }
        let zeros = "0".repeat(32);
        for broken in [
            "t3:".to_string(),
            "t3:a".to_string(),
            "t3:a:1:a1".to_string(),
            format!("t3:x:1:a1:{zeros}"),
            format!("t3:a:99999999999999999999:a1:{zeros}"),
            format!("t3:a:1::{zeros}"),
            format!("t3:a:1:a1:{}", "0".repeat(31)),
            format!("t3:a:1:a:1:{zeros}"),
        ] {
            assert_eq!(
                read_button(&k, &broken, OWNER, NOW),
                ButtonVerdict::Invalid,
                "{broken}"
            );
        }
    }

    #[test]
    fn the_body_names_the_tool_the_reasoning_and_the_time() {
        assert_eq!(
            approval_body(&request("shell_exec", "Deletes /tmp/x.", 300)),
            "Approval needed: *shell_exec*\n\nDeletes /tmp/x.\n\nTap Approve or Deny within 5 minutes."
        );
        assert_eq!(
            approval_body(&request("read", "  ", 60)),
            "Approval needed: *read*\n\nTap Approve or Deny within 1 minute."
        );
        let minutes = |secs| approval_body(&request("t", "", secs));
        assert!(minutes(0).ends_with("within 1 minute."));
        assert!(minutes(1).ends_with("within 1 minute."));
        assert!(minutes(61).ends_with("within 2 minutes."));
        assert!(minutes(u64::MAX).ends_with(&format!("within {} minutes.", u64::MAX.div_ceil(60))));
    }

    #[test]
    fn the_tool_name_cannot_break_the_markup() {
        let body = approval_body(&request("*a*_b_~c~`d`\ne\t\u{7}f", "", 60));
        assert!(
            body.starts_with("Approval needed: *a_b_cd e f*\n\n"),
            "{body}"
        );
        let body = approval_body(&request("*~`", "", 60));
        assert!(
            body.starts_with("Approval needed: *unnamed tool*"),
            "{body}"
        );
        let long = "é".repeat(100);
        let body = approval_body(&request(&long, "", 60));
        let name = body
            .strip_prefix("Approval needed: *")
            .and_then(|b| b.split_once("*\n\n"))
            .map(|(name, _)| name)
            .expect("bold name");
        assert_eq!(name.chars().count(), 60);
        assert!(name.ends_with('…'));
    }

    #[test]
    fn a_long_reasoning_is_shortened_to_fit_1024() {
        for unit in ["a", "é", "😀", "a😀"] {
            let body = approval_body(&request("tool", &unit.repeat(2000), 120));
            assert!(
                body.chars().count() <= 1024,
                "{unit}: {}",
                body.chars().count()
            );
            assert!(body.encode_utf16().count() <= 1024, "{unit}");
            assert!(body.encode_utf16().count() >= 1022, "{unit}: nearly full");
            assert!(
                body.contains("…\n\nTap Approve or Deny within 2 minutes."),
                "{unit}"
            );
        }
        let fits = "b".repeat(900);
        assert!(approval_body(&request("tool", &fits, 60)).contains(&format!("\n{fits}\n")));
    }

    fn action_id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,128}"
    }

    fn decision() -> impl Strategy<Value = Decision> {
        prop_oneof![Just(Decision::Approve), Just(Decision::Deny)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_input_reads_without_panicking(
            text in prop_oneof![
                any::<String>(),
                "t3:[ad:0-9a-fx.\\-]{0,80}",
                any::<String>().prop_map(|s| format!("t3:{s}")),
            ],
            owner in any::<String>(),
            now in any::<u64>(),
        ) {
            let verdict = read_button(&keys(&["k1", "k2"]), &text, &owner, now);
            prop_assert_eq!(verdict == ButtonVerdict::NotApproval, !is_approval_button(&text));
            prop_assert!(
                !matches!(verdict, ButtonVerdict::Valid { .. } | ButtonVerdict::Expired { .. }),
                "{:?}",
                verdict
            );
        }

        #[test]
        fn ids_verify_for_their_owner_and_keys_only(
            decision in decision(),
            action_id in action_id(),
            owner in any::<String>(),
            other_owner in any::<String>(),
            expires_at in any::<u64>(),
            now in any::<u64>(),
        ) {
            let k = keys(&["k1"]);
            let id = button_id(&k, decision, &action_id, &owner, expires_at).expect("an id");
            prop_assert!(id.len() <= 256);
            prop_assert!(is_approval_button(&id));
            let want = if now > expires_at {
                ButtonVerdict::Expired { action_id: action_id.clone() }
            } else {
                ButtonVerdict::Valid { action_id: action_id.clone(), decision }
            };
            prop_assert_eq!(read_button(&k, &id, &owner, now), want.clone());
            prop_assert_eq!(read_button(&keys(&["k0", "k1"]), &id, &owner, now), want);
            prop_assert_eq!(read_button(&keys(&["k2"]), &id, &owner, now), ButtonVerdict::Invalid);
            if other_owner != owner {
                prop_assert_eq!(read_button(&k, &id, &other_owner, now), ButtonVerdict::Invalid);
            }
        }

        #[test]
        fn changing_any_character_of_an_id_invalidates_it(
            decision in decision(),
            action_id in action_id(),
            expires_at in any::<u64>(),
            at in any::<prop::sample::Index>(),
            replacement in prop_oneof![
                prop::sample::select(b"0123456789abcdefdt:._-AZ".to_vec()).prop_map(char::from),
                any::<char>(),
            ],
            delete in any::<bool>(),
        ) {
            let k = keys(&["k1"]);
            let id = button_id(&k, decision, &action_id, OWNER, expires_at).expect("an id");
            let mut chars: Vec<char> = id.chars().collect();
            let i = at.index(chars.len());
            if delete {
                chars.remove(i);
            } else {
                prop_assume!(chars[i] != replacement);
                chars[i] = replacement;
            }
            let changed: String = chars.into_iter().collect();
            let verdict = read_button(&k, &changed, OWNER, expires_at);
            prop_assert!(
                !matches!(verdict, ButtonVerdict::Valid { .. } | ButtonVerdict::Expired { .. }),
                "{} -> {}: {:?}", id, changed, verdict
            );
        }

        #[test]
        fn every_body_fits_a_whatsapp_interactive_message(
            tool_name in any::<String>(),
            reasoning in prop_oneof![any::<String>(), "\\PC{0,3000}"],
            timeout_secs in any::<u64>(),
        ) {
            let body = approval_body(&ApprovalRequest {
                action_id: "a1".into(),
                tool_name,
                reasoning,
                timeout_secs,
            });
            prop_assert!(body.chars().count() <= 1024);
            prop_assert!(body.encode_utf16().count() <= 1024);
            let head = body.lines().next().unwrap_or_default();
            prop_assert_eq!(head.matches('*').count(), 2, "{}", head);
        }
    }
}
