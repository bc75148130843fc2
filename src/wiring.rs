//! Build the [`App`] from a validated [`Config`]: every client once, at start.

use std::sync::Arc;
use std::time::Duration;

use crate::app::{App, AppOptions, Dispatch};
use crate::config::{
    self, Config, ConfigError, EngineConfig, QUEUED_LEASE_MARGIN_SECS, RunMode,
    SYNC_SEND_MARGIN_SECS, StateKind, TurnMode,
};
use crate::domain::Rotating;
use crate::engine::{EchoEngine, Engine, HttpEngine, OpenParallaxEngine};
use crate::graph::{DryRunMessenger, GraphClient, Messenger, RetryPolicy};
use crate::queue::local::DEFAULT_LIMIT;
use crate::queue::{LocalQueue, SqsQueue};
use crate::secrets::{
    SecretBundle, SecretCells, SecretSource, SecretsManagerSource, SecretsRefresher,
};
use crate::state::dynamodb::{aws_sdk_config, dynamo_client};
use crate::state::{DynamoStore, MemoryStore, SessionStore, unix_now};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
}

/// One HTTP client for the whole process: connection pool and TLS set up once. The
/// default timeout bounds Graph API calls well inside the function timeout (29 s); the
/// engine sets its own (`engine.timeout_secs`) per request.
pub fn http_client() -> Result<reqwest::Client, StartError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| StartError::HttpClient(e.to_string()))
}

/// A checked configuration and, when it names a `secrets:` secret, the client that
/// read it (kept for the re-reads: one client per process).
pub struct Loaded {
    pub config: Config,
    pub secrets: Option<Arc<dyn SecretSource>>,
}

/// Load and check the configuration (YAML text, then the environment), reading the
/// `secrets:` secret first when one is named: its values take the place of the
/// environment's. Errors are one line; a secret's values never appear in them.
pub async fn load_config(
    yaml: Option<&str>,
    mode: RunMode,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let raw = config::raw(yaml, env)?;
    let (bundle, source) = match raw.secrets.validate()? {
        None => (SecretBundle::default(), None),
        Some(secrets) => {
            let started = std::time::Instant::now();
            let source: Arc<dyn SecretSource> = Arc::new(secrets_source(&secrets).await);
            let bundle = source
                .read()
                .await
                .and_then(|text| SecretBundle::parse(&text))
                .map_err(|e| {
                    ConfigError::new(
                        "secrets.secret_id",
                        e.to_string(),
                        "create the secret as a JSON object with the keys of README's Secrets section, and let the function read it (secretsmanager:GetSecretValue)",
                    )
                })?;
            tracing::info!(
                secret = %secrets.secret_id,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "secrets read from Secrets Manager"
            );
            (bundle, Some(source))
        }
    };
    Ok(Loaded {
        config: raw.validate_with(mode, env, bundle)?,
        secrets: source,
    })
}

async fn secrets_source(secrets: &config::SecretsConfig) -> SecretsManagerSource {
    SecretsManagerSource::connect(&secrets.secret_id, secrets.endpoint_url.as_deref()).await
}

pub async fn build_app(config: &Config) -> Result<App, StartError> {
    build(config, None, None).await
}

/// [`build_app`], re-reading the `secrets:` secret with `secrets_client` (the client
/// [`load_config`] read it with) rather than a new one.
pub async fn build_app_with(
    config: &Config,
    secrets_client: Option<Arc<dyn SecretSource>>,
) -> Result<App, StartError> {
    build(config, None, secrets_client).await
}

/// [`build_app`], but replies go to `messenger` whatever the config says about the
/// Graph API (the `chat` command prints them).
pub async fn build_app_sending_to(
    config: &Config,
    messenger: Arc<dyn Messenger>,
) -> Result<App, StartError> {
    build(config, Some(messenger), None).await
}

async fn build(
    config: &Config,
    messenger: Option<Arc<dyn Messenger>>,
    secrets_client: Option<Arc<dyn SecretSource>>,
) -> Result<App, StartError> {
    let client = http_client()?;
    let w = &config.whatsapp;
    // The cells the refresher rotates: every user of a secret reads it from one.
    let access_token = w.access_token.clone().map(Rotating::new);
    let (engine_token, engine_password) = match &config.engine {
        EngineConfig::Echo => (None, None),
        EngineConfig::Http { token, .. } => (token.clone().map(Rotating::new), None),
        EngineConfig::OpenParallax { password, .. } => (None, password.clone().map(Rotating::new)),
    };
    let messenger: Arc<dyn Messenger> = match (messenger, &access_token) {
        (Some(messenger), _) => messenger,
        (None, Some(token)) => Arc::new(GraphClient::new(
            client.clone(),
            &w.graph_api_base,
            &w.graph_api_version,
            &config.app.phone_number_id,
            token.clone(),
            RetryPolicy::default(),
        )),
        (None, None) => {
            tracing::warn!(
                "no access token configured: replies are not sent and only their length is logged (dry run); `make chat` shows them"
            );
            Arc::new(DryRunMessenger)
        }
    };
    let engine: Arc<dyn Engine> = match &config.engine {
        EngineConfig::Echo => Arc::new(EchoEngine),
        EngineConfig::Http { url, timeout, .. } => Arc::new(HttpEngine::new(
            client.clone(),
            url.clone(),
            engine_token.clone(),
            *timeout,
        )),
        EngineConfig::OpenParallax { url, timeout, .. } => Arc::new(OpenParallaxEngine::new(
            client.clone(),
            url.clone(),
            engine_password.clone(),
            *timeout,
        )),
    };
    let store: Arc<dyn SessionStore> = match &config.state.kind {
        StateKind::Memory => Arc::new(
            MemoryStore::new(config.state.lease, config.state.session_idle_ttl)
                .with_order_hold(config.state.order_hold),
        ),
        StateKind::DynamoDb {
            table,
            endpoint_url,
        } => Arc::new(
            DynamoStore::new(
                dynamo_client(endpoint_url.as_deref()).await,
                table.clone(),
                config.state.lease,
                config.state.session_idle_ttl,
            )
            .with_order_hold(config.state.order_hold),
        ),
    };
    if config.app.app_secrets.current().is_empty() {
        tracing::warn!(
            "SIGNATURE CHECK OFF: no app secret and allow_unsigned: true; anyone can POST to this webhook"
        );
    }
    let mut app = App::new(
        config.app.clone(),
        store,
        engine,
        messenger,
        Arc::new(unix_now),
    );
    if let Some(secrets) = &config.secrets {
        let cells = SecretCells {
            verify_token: config.app.verify_token.clone(),
            app_secrets: config.app.app_secrets.clone(),
            access_token,
            engine_token,
            engine_password,
        };
        let source = match secrets_client {
            Some(source) => source,
            None => Arc::new(secrets_source(secrets).await),
        };
        app = app.with_secrets(SecretsRefresher::new(source, secrets.ttl, cells));
    }
    let turns = &config.turns;
    Ok(match turns.mode {
        TurnMode::Sync => app.with_sync_turn_budget(
            turns.engine_timeout + Duration::from_secs(SYNC_SEND_MARGIN_SECS),
        ),
        TurnMode::Queued => {
            let queue = match &turns.queue_url {
                Some(url) => {
                    let sdk = aws_sdk_config(turns.endpoint_url.as_deref()).await;
                    Some(SqsQueue::new(
                        aws_sdk_sqs::Client::new(&sdk),
                        url.clone(),
                        turns.engine_timeout + Duration::from_secs(QUEUED_LEASE_MARGIN_SECS),
                    ))
                }
                None => None,
            };
            tracing::info!(
                queue = if queue.is_some() { "sqs" } else { "in-process" },
                engine_timeout_secs = turns.engine_timeout.as_secs(),
                "queued turns"
            );
            app.with_dispatch(|runner| match queue {
                Some(queue) => Dispatch::Sqs(queue),
                None => Dispatch::Local(Arc::new(LocalQueue::new(runner, DEFAULT_LIMIT))),
            })
        }
    })
}

/// An app with nothing outside the process: memory state (default lease and idle TTL),
/// the echo engine and the system clock, sending through `messenger`. What `make run`
/// builds from its embedded defaults, without the config; for tests, fuzzing and
/// benchmarks.
pub fn in_memory_app(options: AppOptions, messenger: Arc<dyn Messenger>) -> App {
    App::new(
        options,
        Arc::new(MemoryStore::new(
            Duration::from_secs(crate::config::DEFAULT_LEASE_SECS),
            Duration::from_secs(crate::config::DEFAULT_SESSION_IDLE_TTL_HOURS * 3600),
        )),
        Arc::new(EchoEngine),
        messenger,
        Arc::new(unix_now),
    )
}
