//! Who a message is from or goes to: phone numbers (canonical form, masking for
//! logs), business-scoped user ids, and the allow-list of numbers.
//!
//! Numbers are compared by their digits only, so `+1 650-555-1234`, `+16505551234`
//! and the webhook's `16505551234` are the same number.

use std::collections::HashSet;

/// Who a message comes from or goes to: a phone number (`to`) or, for username users
/// without a phone number, the business-scoped user id (`recipient`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Phone(String),
    UserId(String),
}

impl Recipient {
    /// The address as Meta gave it (what logs mask).
    pub fn key(&self) -> &str {
        match self {
            Recipient::Phone(d) | Recipient::UserId(d) => d,
        }
    }

    /// The key state is kept under: one per person, so the two forms of a Brazilian
    /// or Mexican number share a session.
    pub fn state_key(&self) -> String {
        match self {
            Recipient::Phone(d) => canonical_number(d),
            Recipient::UserId(id) => id.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AllowList {
    numbers: HashSet<String>,
}

impl AllowList {
    /// Parse configured entries; `Err(entry)` for an entry without any digit.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut numbers = HashSet::with_capacity(entries.len());
        for entry in entries {
            if entry.trim().is_empty() {
                continue;
            }
            let d = digits(entry);
            if d.is_empty() {
                return Err(entry.clone());
            }
            numbers.insert(canonical_number(&d));
        }
        Ok(AllowList { numbers })
    }

    /// An empty list lets everyone in.
    pub fn is_open(&self) -> bool {
        self.numbers.is_empty()
    }

    pub fn allows(&self, number: &str) -> bool {
        self.is_open() || self.contains(number)
    }

    /// Whether `number` is listed (an empty list lists no one).
    pub fn contains(&self, number: &str) -> bool {
        self.numbers.contains(&canonical_number(&digits(number)))
    }

    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }
}

/// The ASCII digits of `s`, in order.
pub fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// One form per subscriber for numbers that WhatsApp reports in two forms: Brazil's
/// mobile numbers with and without the ninth digit (`55 DD 9XXXXXXXX` / `55 DD XXXXXXXX`)
/// and Mexico's with and without the `1` after the country code (`52 1 …` / `52 …`).
/// The shorter form is canonical. Takes digits only.
pub fn canonical_number(digits: &str) -> String {
    let b = digits.as_bytes();
    if b.len() == 13 && digits.starts_with("55") && b[4] == b'9' {
        return format!("{}{}", &digits[..4], &digits[5..]);
    }
    if b.len() == 13 && digits.starts_with("521") {
        return format!("52{}", &digits[3..]);
    }
    digits.to_string()
}

/// A number safe to log: the first four and last four characters with `***` between
/// (`16505551234` → `1650***1234`); short values are masked whole.
pub fn mask(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() < 9 {
        return "***".to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_digits_only() {
        let list = AllowList::parse(&["+1 650-555-1234".into()]).unwrap();
        assert!(list.allows("16505551234"));
        assert!(list.allows("+1 (650) 555-1234"));
        assert!(!list.allows("16505551235"));
        assert!(!list.allows("6505551234"));
    }

    #[test]
    fn empty_list_allows_everyone() {
        let list = AllowList::parse(&[]).unwrap();
        assert!(list.allows("447700900555"));
        let blank = AllowList::parse(&["  ".into()]).unwrap();
        assert!(blank.is_open());
    }

    #[test]
    fn entry_without_digits_is_rejected() {
        assert_eq!(AllowList::parse(&["abc".into()]).unwrap_err(), "abc");
    }

    #[test]
    fn brazil_and_mexico_numbers_match_with_and_without_the_extra_digit() {
        assert_eq!(canonical_number("5511987654321"), "551187654321");
        assert_eq!(canonical_number("551187654321"), "551187654321");
        assert_eq!(canonical_number("5215512345678"), "525512345678");
        assert_eq!(canonical_number("525512345678"), "525512345678");
        assert_eq!(canonical_number("16505551234"), "16505551234");
        let list =
            AllowList::parse(&["+55 11 98765-4321".into(), "+52 55 1234 5678".into()]).unwrap();
        assert!(list.allows("551187654321"));
        assert!(list.allows("5511987654321"));
        assert!(list.allows("5215512345678"));
        assert!(!list.allows("5511987654320"));
    }

    #[test]
    fn masks_numbers() {
        assert_eq!(mask("16505551234"), "1650***1234");
        assert_eq!(mask("1234"), "***");
        assert_eq!(mask("US.11112222333344445555"), "US.1***5555");
    }
}
