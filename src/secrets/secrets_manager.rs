//! The secret in AWS Secrets Manager, read with `GetSecretValue` through the SDK
//! (why not the Lambda extension: see [`super`]).

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};

use super::{SecretSource, SecretsError};
use crate::domain::Secret;

pub struct SecretsManagerSource {
    client: Client,
    secret_id: String,
}

impl SecretsManagerSource {
    /// `secret_id`: the secret's name or ARN (`AWSCURRENT` is read).
    pub fn new(client: Client, secret_id: String) -> Self {
        SecretsManagerSource { client, secret_id }
    }

    /// A client on the process's AWS settings ([`crate::state::dynamodb::aws_sdk_config`]);
    /// `endpoint_url` for local stand-ins (moto).
    pub async fn connect(secret_id: &str, endpoint_url: Option<&str>) -> Self {
        let sdk = crate::state::dynamodb::aws_sdk_config(endpoint_url).await;
        SecretsManagerSource::new(Client::new(&sdk), secret_id.to_string())
    }
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    async fn read(&self) -> Result<Secret, SecretsError> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| SecretsError::Read {
                secret_id: self.secret_id.clone(),
                // The service's code (ResourceNotFoundException, AccessDeniedException…)
                // is what an operator acts on; transport errors have none.
                reason: match e.code() {
                    Some(code) => code.to_string(),
                    None => DisplayErrorContext(&e).to_string(),
                },
            })?;
        output
            .secret_string
            .map(Secret::new)
            .ok_or_else(|| SecretsError::NoString(self.secret_id.clone()))
    }
}
