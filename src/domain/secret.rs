//! A value that must never reach a log line.
//!
//! Kept by hand rather than `secrecy::SecretString`: it is 20 lines, the adapter clones
//! and compares secrets (the app-secret rotation list, config tests), which
//! `SecretString` does not offer without wrapping it again, and zeroising on drop buys
//! little in a process that keeps its secrets in memory until they rotate.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

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

/// A value that may be replaced while the process runs: a secret rotated in Secrets
/// Manager ([`crate::secrets`]). Clones share one cell; every use reads the current
/// value, so a rotation reaches the signature check, the Graph client and the engine
/// at once. A fixed value (env, tests) is a cell nobody replaces.
pub struct Rotating<T>(Arc<RwLock<Arc<T>>>);

impl<T> Rotating<T> {
    pub fn new(value: T) -> Self {
        Rotating(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The value now (a cheap `Arc` clone; held briefly, never across a rotation).
    pub fn current(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Put `value` in place of the current one, for every clone of this cell.
    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

impl<T> Clone for Rotating<T> {
    fn clone(&self) -> Self {
        Rotating(self.0.clone())
    }
}

impl<T> From<T> for Rotating<T> {
    fn from(value: T) -> Self {
        Rotating::new(value)
    }
}

impl<T> fmt::Debug for Rotating<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rotating(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_masked() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
        assert_eq!(
            format!("{:?}", Rotating::new(Secret::new("hunter2"))),
            "Rotating(***)"
        );
    }

    #[test]
    fn a_replaced_value_reaches_every_clone() {
        let cell = Rotating::new(Secret::new("old"));
        let user = cell.clone();
        let before = user.current();
        cell.replace(Secret::new("new"));
        assert_eq!(user.current().expose(), "new");
        assert_eq!(
            before.expose(),
            "old",
            "a value in use is not changed under it"
        );
    }
}
