//! A value that must never reach a log line.
//!
//! Kept by hand rather than `secrecy::SecretString`: it is 20 lines, the adapter clones
//! and compares secrets (the app-secret rotation list, config tests), which
//! `SecretString` does not offer without wrapping it again, and zeroising on drop buys
//! little in a process whose secrets live for its whole life.

use std::fmt;

/// `Debug` prints `***`; [`Secret::expose`] is the one way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, at the point of use (a header, an HMAC key); never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_masked() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    }
}
