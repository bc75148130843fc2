//! Table administration and the client: [`create_table`] (key schema, on-demand billing,
//! TTL) and [`dynamo_client`] with its [`timeout_config`] and [`retry_config`].

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};

use super::errors::{build_error, classify};
use super::item::{PK, TTL};
use crate::state::StateError;

/// Connect 2 s, one attempt 3 s, the whole operation (retries included) 8 s.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(8))
        .build()
}

/// The SDK's standard retry (exponential backoff with jitter, throttling-aware), at
/// most 3 attempts.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(3)
}

/// The one DynamoDB client of the process: credentials and region from the standard
/// chain (Lambda environment, `AWS_PROFILE` with keys; SSO and `credential_process`
/// profiles with the `dev-credentials` feature), `endpoint_url` for local
/// DynamoDB-compatible servers.
pub async fn dynamo_client(endpoint_url: Option<&str>) -> Client {
    Client::new(&aws_sdk_config(endpoint_url).await)
}

/// The AWS settings every client of this process uses (DynamoDB, SQS): the timeouts
/// and retries above, the region and credentials from the environment, and
/// `endpoint_url` (else `AWS_ENDPOINT_URL`) for local stand-ins.
pub async fn aws_sdk_config(endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeout_config())
        .retry_config(retry_config());
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// Create the table (key `pk` String, on-demand) and enable TTL on `ttl`. Returns
/// `Ok(false)` when the table already exists; TTL is still switched on if it is off,
/// so a run interrupted between the two steps is repaired by running it again.
pub async fn create_table(client: &Client, table: &str) -> Result<bool, StateError> {
    let created = match describe_status(client, table).await? {
        Some(_) => false,
        None => {
            let result = client
                .create_table()
                .table_name(table)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(PK)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(build_error)?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(PK)
                        .key_type(KeyType::Hash)
                        .build()
                        .map_err(build_error)?,
                )
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            match result {
                Ok(_) => true,
                // Created concurrently by someone else: fine.
                Err(e) if e.code() == Some("ResourceInUseException") => false,
                Err(e) => return Err(classify("CreateTable", &e)),
            }
        }
    };
    wait_active(client, table).await?;
    ensure_ttl(client, table).await?;
    Ok(created)
}

/// `None` when the table does not exist. Also checks the key schema, so a table made
/// for something else fails here rather than on every message.
async fn describe_status(client: &Client, table: &str) -> Result<Option<TableStatus>, StateError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => {
            let Some(desc) = out.table() else {
                return Err(StateError::Corrupt(
                    "DescribeTable returned no table".into(),
                ));
            };
            let keys = desc.key_schema();
            let key_ok = keys.len() == 1
                && keys[0].attribute_name() == PK
                && keys[0].key_type() == &KeyType::Hash;
            if !key_ok {
                return Err(StateError::Corrupt(format!(
                    "table {table} exists with another key schema; expected partition key `{PK}` only"
                )));
            }
            Ok(Some(
                desc.table_status().cloned().unwrap_or(TableStatus::Active),
            ))
        }
        Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
        Err(e) => Err(classify("DescribeTable", &e)),
    }
}

async fn wait_active(client: &Client, table: &str) -> Result<(), StateError> {
    // On-demand tables usually turn ACTIVE within seconds; give up after ~2 minutes.
    for _ in 0..120 {
        match describe_status(client, table).await? {
            Some(TableStatus::Active) => return Ok(()),
            Some(_) | None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    Err(StateError::Unavailable(format!(
        "table {table} did not become ACTIVE in time"
    )))
}

async fn ensure_ttl(client: &Client, table: &str) -> Result<(), StateError> {
    let current = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| classify("DescribeTimeToLive", &e))?;
    let status = current
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status());
    if matches!(
        status,
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ) {
        return Ok(());
    }
    let result = client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(TTL)
                .enabled(true)
                .build()
                .map_err(build_error)?,
        )
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        // Enabled concurrently: DynamoDB answers "TimeToLive is already enabled".
        Err(e)
            if e.code() == Some("ValidationException")
                && e.message().is_some_and(|m| m.contains("already enabled")) =>
        {
            Ok(())
        }
        Err(e) => Err(classify("UpdateTimeToLive", &e)),
    }
}
