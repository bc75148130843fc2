//! A secret held in memory: the in-process [`SecretSource`] for tests and local runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use super::{SecretSource, SecretsError};
use crate::domain::Secret;

/// Holds the secret's text (`None`: reading fails, as when the secret is gone) and
/// counts the reads.
#[derive(Default)]
pub struct MemorySecretSource {
    text: Mutex<Option<Secret>>,
    reads: AtomicUsize,
}

impl MemorySecretSource {
    pub fn new(text: &str) -> Self {
        MemorySecretSource {
            text: Mutex::new(Some(Secret::new(text))),
            reads: AtomicUsize::new(0),
        }
    }

    /// Rotate: later reads get `text` (`None`: they fail).
    pub fn set(&self, text: Option<&str>) {
        *self.text.lock().unwrap_or_else(PoisonError::into_inner) = text.map(Secret::new);
    }

    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl SecretSource for MemorySecretSource {
    async fn read(&self) -> Result<Secret, SecretsError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| SecretsError::Read {
                secret_id: "memory".into(),
                reason: "no secret".into(),
            })
    }
}
