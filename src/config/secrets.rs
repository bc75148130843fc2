//! `secrets:`: where the secrets come from at run time ([`crate::secrets`]).

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::fields::{check_url, in_range, non_empty};
use crate::secrets::{DEFAULT_TTL_SECS, MAX_TTL_SECS};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    pub secret_id: Option<String>,
    pub ttl_secs: Option<u64>,
    pub endpoint_url: Option<String>,
}

/// A Secrets Manager secret whose keys take the place of the environment's secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsConfig {
    /// Name or ARN.
    pub secret_id: String,
    /// How old the values may get before the next delivery reads them again.
    pub ttl: Duration,
    /// Another Secrets Manager endpoint (local tests); else `AWS_ENDPOINT_URL` or AWS's.
    pub endpoint_url: Option<String>,
}

impl RawSecrets {
    /// `None` without a `secret_id`: every secret comes from the environment.
    pub fn validate(&self) -> Result<Option<SecretsConfig>, ConfigError> {
        let Some(secret_id) = non_empty(self.secret_id.clone()) else {
            return Ok(None);
        };
        let ttl = in_range(
            "secrets.ttl_secs",
            self.ttl_secs.unwrap_or(DEFAULT_TTL_SECS),
            0..=MAX_TTL_SECS,
            "use e.g. 300: a rotated value is in use within that many seconds (0: read at every delivery)",
        )?;
        let endpoint_url = non_empty(self.endpoint_url.clone());
        if let Some(url) = &endpoint_url {
            check_url("secrets.endpoint_url", url, &["http", "https"])?;
        }
        Ok(Some(SecretsConfig {
            secret_id,
            ttl: Duration::from_secs(ttl),
            endpoint_url,
        }))
    }
}

/// The fix for a secret that is missing, with the secret's key when one is configured.
pub(super) fn fix_with_key(fix: String, key: &str, secrets: Option<&SecretsConfig>) -> String {
    match secrets {
        Some(s) => format!("add the key {key} to the secret {}, or {fix}", s.secret_id),
        None => fix,
    }
}
