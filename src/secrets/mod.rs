//! Secrets read at run time from AWS Secrets Manager (`secrets.secret_id`), so that no
//! secret value sits in the function's configuration and a rotated value is picked up
//! without a redeploy.
//!
//! One secret holds a JSON object of strings with any of the keys [`KEYS`]; a key that
//! is present and not blank takes the place of the value from the environment (or the
//! YAML, for `verify_token`). `app_secret` may be a comma-separated rotation list, as
//! `WHATSAPP_APP_SECRET` may.
//!
//! The values are read once at start (a missing or malformed secret stops the start
//! with one line) and then again when they are older than `secrets.ttl_secs`, at the
//! start of a delivery or an SQS batch ([`SecretsRefresher::refresh_if_due`]). One
//! read at a time; the others go on with the values they have. A failed re-read keeps
//! the last values and is tried again after [`RETRY_AFTER_FAILURE`] at the latest, so
//! an outage costs neither a delivery nor a Secrets Manager call per delivery.
//!
//! Why the SDK ([`secrets_manager`]) and not the AWS Parameters and Secrets Lambda
//! Extension: the extension is a layer with a per-region, per-architecture ARN the
//! template would have to map, it runs as a second process in every sandbox (its init
//! adds to each cold start), and it exists only in Lambda, so `serve` and the tests
//! would need the SDK anyway. The SDK client shares the AWS config, HTTP connector and
//! credentials the DynamoDB and SQS clients already load; what it adds is measured in
//! BENCHMARKS.md (binary size, start-up with one read).

pub mod memory;
pub mod secrets_manager;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::domain::{Rotating, Secret};

pub use memory::MemorySecretSource;
pub use secrets_manager::SecretsManagerSource;

/// The keys a secret may hold.
pub const KEYS: [&str; 5] = [
    "access_token",
    "app_secret",
    "verify_token",
    "engine_token",
    "engine_password",
];
pub const DEFAULT_TTL_SECS: u64 = 300;
/// Longest time between reads: a day.
pub const MAX_TTL_SECS: u64 = 86_400;
/// After a failed re-read, the next try comes after this at the latest.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// A re-read inside a delivery gives up after this and keeps the last values.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the secret could not be used. Never carries a secret value: parse errors name
/// the key, not what it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("could not read secret {secret_id}: {reason}")]
    Read { secret_id: String, reason: String },
    #[error("secret {0} has no SecretString (binary secrets are not read)")]
    NoString(String),
    #[error("the secret is not a JSON object")]
    NotAnObject,
    #[error(
        "the secret's key {0:?} is not one of access_token, app_secret, verify_token, engine_token, engine_password"
    )]
    UnknownKey(String),
    #[error("the secret's key {0:?} does not hold a string")]
    NotAString(String),
    #[error("reading the secret took longer than {0:?}")]
    Timeout(Duration),
}

/// Where the secret's text comes from: Secrets Manager, or memory in tests.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The secret's current text (its `SecretString`).
    async fn read(&self) -> Result<Secret, SecretsError>;
}

/// The values one read of the secret gave; `None`/empty: the key is absent or blank.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretBundle {
    pub access_token: Option<Secret>,
    pub app_secrets: Vec<Secret>,
    pub verify_token: Option<Secret>,
    pub engine_token: Option<Secret>,
    pub engine_password: Option<Secret>,
}

impl SecretBundle {
    /// Read a JSON object of strings with keys from [`KEYS`]; an unknown key is an
    /// error (a misspelt `app_secrets` would otherwise leave the old value in use).
    pub fn parse(text: &Secret) -> Result<SecretBundle, SecretsError> {
        let Ok(serde_json::Value::Object(map)) =
            serde_json::from_str::<serde_json::Value>(text.expose())
        else {
            return Err(SecretsError::NotAnObject);
        };
        let mut bundle = SecretBundle::default();
        for (key, value) in map {
            let serde_json::Value::String(value) = value else {
                return Err(SecretsError::NotAString(key));
            };
            let value = value.trim();
            let single = (!value.is_empty()).then(|| Secret::new(value));
            match key.as_str() {
                "access_token" => bundle.access_token = single,
                "app_secret" => bundle.app_secrets = app_secret_list(value),
                "verify_token" => bundle.verify_token = single,
                "engine_token" => bundle.engine_token = single,
                "engine_password" => bundle.engine_password = single,
                _ => return Err(SecretsError::UnknownKey(key)),
            }
        }
        Ok(bundle)
    }
}

/// The app secret's rotation list: `new,old` while Meta may still sign with either.
pub fn app_secret_list(text: &str) -> Vec<Secret> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .collect()
}

/// The cells the pipeline reads its secrets from; `None`: that part is not in use
/// (dry run, echo engine…), so nothing there is replaced.
#[derive(Debug, Clone)]
pub struct SecretCells {
    pub verify_token: Rotating<Secret>,
    pub app_secrets: Rotating<Vec<Secret>>,
    pub access_token: Option<Rotating<Secret>>,
    pub engine_token: Option<Rotating<Secret>>,
    pub engine_password: Option<Rotating<Secret>>,
}

impl SecretCells {
    /// Put every present value of `bundle` in place; a key that was removed from the
    /// secret leaves its last value in use (an emptied `app_secret` must not turn the
    /// signature check off).
    fn apply(&self, bundle: SecretBundle) {
        if let Some(v) = bundle.verify_token {
            self.verify_token.replace(v);
        }
        if !bundle.app_secrets.is_empty() {
            self.app_secrets.replace(bundle.app_secrets);
        }
        for (cell, value) in [
            (&self.access_token, bundle.access_token),
            (&self.engine_token, bundle.engine_token),
            (&self.engine_password, bundle.engine_password),
        ] {
            if let (Some(cell), Some(value)) = (cell, value) {
                cell.replace(value);
            }
        }
    }
}

/// Re-reads the secret when its values are older than the TTL.
pub struct SecretsRefresher {
    source: Arc<dyn SecretSource>,
    ttl: Duration,
    cells: SecretCells,
    next_read: Mutex<Instant>,
    reading: tokio::sync::Mutex<()>,
}

impl SecretsRefresher {
    /// `cells` hold the values just read at start: the next read is due after `ttl`.
    pub fn new(source: Arc<dyn SecretSource>, ttl: Duration, cells: SecretCells) -> Self {
        SecretsRefresher {
            source,
            ttl,
            cells,
            next_read: Mutex::new(Instant::now() + ttl),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn due(&self) -> bool {
        Instant::now()
            >= *self
                .next_read
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
    }

    /// Read the secret again if the values are older than the TTL. Never fails: a
    /// failed read keeps the last values (logged, without them).
    pub async fn refresh_if_due(&self) {
        if !self.due() {
            return;
        }
        // Another delivery is reading: go on with the values there are.
        let Ok(_reading) = self.reading.try_lock() else {
            return;
        };
        if !self.due() {
            return;
        }
        let read = match tokio::time::timeout(READ_TIMEOUT, self.source.read()).await {
            Ok(read) => read,
            Err(_) => Err(SecretsError::Timeout(READ_TIMEOUT)),
        };
        let next = match read.and_then(|text| SecretBundle::parse(&text)) {
            Ok(bundle) => {
                self.cells.apply(bundle);
                tracing::debug!("secrets read again");
                Instant::now() + self.ttl
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the secrets again; the last values stay in use");
                Instant::now() + self.ttl.min(RETRY_AFTER_FAILURE)
            }
        };
        *self
            .next_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = next;
    }
}

#[cfg(test)]
mod tests;
