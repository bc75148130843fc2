//! Configuration: OpenParallax's `channels.whatsapp` YAML block plus this adapter's
//! extensions, overridable field by field from environment variables (the Lambda way).
//!
//! Loading is two steps: deserialise into [`RawConfig`] (every field optional), then
//! [`RawConfig::validate`] into a typed [`Config`] or one readable [`ConfigError`] line.

use std::time::Duration;

use serde::Deserialize;

mod fields;
mod secrets;

use crate::app::AppOptions;
use crate::domain::{AllowList, Secret};
use crate::format::Format;
use crate::secrets::{SecretBundle, app_secret_list};
use fields::{
    check_url, in_range, non_empty, parse_bool, parse_list, parse_port, parse_text, parse_u64,
    secret_from_env,
};
use secrets::fix_with_key;
pub use secrets::{RawSecrets, SecretsConfig};

/// The YAML used when `serve` runs without `--config`: memory state, echo engine,
/// and no access token, so outgoing messages are logged instead of sent.
pub const LOCAL_DEFAULTS_YAML: &str = include_str!("../../config/local.yaml");

pub const DEFAULT_PORT: u16 = 9443;
pub const DEFAULT_GRAPH_API_BASE: &str = "https://graph.facebook.com";
pub const DEFAULT_GRAPH_API_VERSION: &str = "v21.0";
pub const DEFAULT_ACCESS_TOKEN_ENV: &str = "WHATSAPP_ACCESS_TOKEN";
pub const DEFAULT_APP_SECRET_ENV: &str = "WHATSAPP_APP_SECRET";
pub const DEFAULT_ENGINE_TIMEOUT_SECS: u64 = 25;
/// Queued turns run in a worker, not inside a webhook request: room for an agent run
/// with tools, sub-agents and a Tier 3 approval (up to 300 s).
pub const DEFAULT_QUEUED_ENGINE_TIMEOUT_SECS: u64 = 600;
/// Longest engine turn (an hour; a Lambda worker stops at 15 minutes anyway).
pub const MAX_ENGINE_TIMEOUT_SECS: u64 = 3600;
/// Longest lease: the longest turn and its margin, with room.
pub const MAX_LEASE_SECS: u64 = 2 * MAX_ENGINE_TIMEOUT_SECS;
/// Longest idle session (a year).
pub const MAX_SESSION_IDLE_TTL_HOURS: u64 = 24 * 366;
/// Longest an unanswered message holds back newer ones: Meta's 7-day redelivery window.
pub const MAX_ORDER_HOLD_SECS: u64 = 7 * 24 * 3600;
/// The message and sender leases of a queued turn outlive the engine's budget by this,
/// so a live worker is never overtaken.
pub const QUEUED_LEASE_MARGIN_SECS: u64 = 60;
/// A sync turn's time beyond the engine's: marking read and sending the reply parts
/// (the template's 29 s function timeout is the 25 s engine timeout plus this).
pub const SYNC_SEND_MARGIN_SECS: u64 = 4;
pub const DEFAULT_SESSION_IDLE_TTL_HOURS: u64 = 720;
/// A little above the function timeout (30 s, API Gateway's cut): a holder that is
/// still alive is never overtaken, a dead one is overtaken soon after.
pub const DEFAULT_LEASE_SECS: u64 = 40;
/// Longest rapid-fire window: longer would hold every first line back noticeably.
pub const MAX_COMBINE_WINDOW_MS: u64 = 10_000;

/// How the binary runs; decides defaults (state kind) and what is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Serve,
    Lambda,
}

/// One readable line naming the field, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {field}: {problem}; fix: {fix}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    pub fn new(field: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError {
            field: field.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// What the pipeline needs of `channels.whatsapp` (defaults from [`AppOptions::new`]).
    pub app: AppOptions,
    /// The rest of `channels.whatsapp`: how to reach Meta and where to listen.
    pub whatsapp: WhatsAppConfig,
    pub engine: EngineConfig,
    pub state: StateConfig,
    pub turns: TurnsConfig,
    /// Limits of the local server (`serve:`).
    pub serve: crate::server::ServeLimits,
    /// The Secrets Manager secret read at run time (`secrets:`), if any.
    pub secrets: Option<SecretsConfig>,
}

/// Where a turn runs (`turns.mode`): inside the webhook request, or in a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnMode {
    /// The reply is sent before the webhook answers 200.
    Sync,
    /// The webhook hands the turn to a queue and answers 200 at once.
    Queued,
}

impl TurnMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnMode::Sync => "sync",
            TurnMode::Queued => "queued",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TurnsConfig {
    pub mode: TurnMode,
    /// The SQS FIFO queue; `None` in queued serve mode: in-process queues.
    pub queue_url: Option<String>,
    /// Another SQS endpoint (local tests); else `AWS_ENDPOINT_URL` or AWS's.
    pub endpoint_url: Option<String>,
    /// How long one engine turn may take (`engine.timeout_secs`).
    pub engine_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct WhatsAppConfig {
    /// `None`: dry run, outgoing messages are logged (serve mode only).
    pub access_token: Option<Secret>,
    pub webhook_port: u16,
    /// Signature check off: only with `allow_unsigned: true` and no app secret.
    pub allow_unsigned: bool,
    pub graph_api_base: String,
    pub graph_api_version: String,
}

#[derive(Debug, Clone)]
pub enum EngineConfig {
    Echo,
    Http {
        url: String,
        token: Option<Secret>,
        timeout: Duration,
    },
    /// OpenParallax over its web server's WebSocket (`ws(s)://HOST:PORT/api/ws`).
    OpenParallax {
        url: String,
        password: Option<Secret>,
        timeout: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateKind {
    Memory,
    DynamoDb {
        table: String,
        endpoint_url: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub kind: StateKind,
    pub session_idle_ttl: Duration,
    pub lease: Duration,
    /// How long an unanswered message holds back newer ones of its sender (0: off).
    pub order_hold: Duration,
}

// ---------------------------------------------------------------- raw form

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub channels: RawChannels,
    #[serde(default)]
    pub engine: RawEngine,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub turns: RawTurns,
    #[serde(default)]
    pub serve: RawServe,
    #[serde(default)]
    pub secrets: RawSecrets,
}

/// `serve:`: limits of the local server (not used on Lambda).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServe {
    pub header_timeout_secs: Option<u64>,
    pub max_connections: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub metrics: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTurns {
    pub mode: Option<String>,
    pub queue_url: Option<String>,
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawChannels {
    #[serde(default)]
    pub whatsapp: RawWhatsApp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhatsApp {
    pub enabled: Option<bool>,
    pub phone_number_id: Option<String>,
    pub access_token_env: Option<String>,
    pub verify_token: Option<String>,
    pub webhook_port: Option<u16>,
    pub allowed_numbers: Option<Vec<String>>,
    pub allowed_user_ids: Option<Vec<String>>,
    pub reply_threading: Option<bool>,
    pub format: Option<String>,
    pub app_secret_env: Option<String>,
    pub allow_unsigned: Option<bool>,
    pub graph_api_base: Option<String>,
    pub graph_api_version: Option<String>,
    pub read_receipts: Option<bool>,
    pub unsupported_reply: Option<bool>,
    pub combine_window_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngine {
    pub kind: Option<String>,
    pub url: Option<String>,
    pub token_env: Option<String>,
    pub password_env: Option<String>,
    pub timeout_secs: Option<u64>,
    pub tier3_from_whatsapp: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub kind: Option<String>,
    pub table: Option<String>,
    pub endpoint_url: Option<String>,
    pub session_idle_ttl_hours: Option<u64>,
    pub lease_secs: Option<u64>,
    pub order_hold_secs: Option<u64>,
}

/// One environment variable that overrides one field: the Lambda way to configure,
/// no file needed. [`ENV_OVERRIDES`] is the only list; the README's table is checked
/// against it by a test.
pub struct EnvOverride {
    pub name: &'static str,
    /// The YAML field it overrides.
    pub field: &'static str,
    /// Parse the (non-blank) value into the field; errors name the variable.
    apply: fn(&mut RawConfig, &str) -> Result<(), ConfigError>,
}

/// `NAME => field (YAML path): parser, |raw| raw.slot`: the parser's result goes into
/// the slot as `Some`.
macro_rules! overrides {
    ($($name:literal => $field:literal: $parse:ident, |$raw:ident| $slot:expr;)*) => {
        &[$(EnvOverride {
            name: $name,
            field: $field,
            apply: |$raw, value| {
                $slot = Some($parse($name, value)?);
                Ok(())
            },
        },)*]
    };
}

pub const ENV_OVERRIDES: &[EnvOverride] = overrides! {
    "WHATSAPP_ENABLED" => "channels.whatsapp.enabled": parse_bool, |c| c.channels.whatsapp.enabled;
    "WHATSAPP_PHONE_NUMBER_ID" => "channels.whatsapp.phone_number_id": parse_text, |c| c.channels.whatsapp.phone_number_id;
    "WHATSAPP_ACCESS_TOKEN_ENV" => "channels.whatsapp.access_token_env": parse_text, |c| c.channels.whatsapp.access_token_env;
    "WHATSAPP_VERIFY_TOKEN" => "channels.whatsapp.verify_token": parse_text, |c| c.channels.whatsapp.verify_token;
    "WEBHOOK_PORT" => "channels.whatsapp.webhook_port": parse_port, |c| c.channels.whatsapp.webhook_port;
    "WHATSAPP_ALLOWED_NUMBERS" => "channels.whatsapp.allowed_numbers": parse_list, |c| c.channels.whatsapp.allowed_numbers;
    "WHATSAPP_ALLOWED_USER_IDS" => "channels.whatsapp.allowed_user_ids": parse_list, |c| c.channels.whatsapp.allowed_user_ids;
    "WHATSAPP_REPLY_THREADING" => "channels.whatsapp.reply_threading": parse_bool, |c| c.channels.whatsapp.reply_threading;
    "WHATSAPP_FORMAT" => "channels.whatsapp.format": parse_text, |c| c.channels.whatsapp.format;
    "WHATSAPP_APP_SECRET_ENV" => "channels.whatsapp.app_secret_env": parse_text, |c| c.channels.whatsapp.app_secret_env;
    "WHATSAPP_ALLOW_UNSIGNED" => "channels.whatsapp.allow_unsigned": parse_bool, |c| c.channels.whatsapp.allow_unsigned;
    "WHATSAPP_GRAPH_API_BASE" => "channels.whatsapp.graph_api_base": parse_text, |c| c.channels.whatsapp.graph_api_base;
    "WHATSAPP_GRAPH_API_VERSION" => "channels.whatsapp.graph_api_version": parse_text, |c| c.channels.whatsapp.graph_api_version;
    "WHATSAPP_READ_RECEIPTS" => "channels.whatsapp.read_receipts": parse_bool, |c| c.channels.whatsapp.read_receipts;
    "WHATSAPP_UNSUPPORTED_REPLY" => "channels.whatsapp.unsupported_reply": parse_bool, |c| c.channels.whatsapp.unsupported_reply;
    "WHATSAPP_COMBINE_WINDOW_MS" => "channels.whatsapp.combine_window_ms": parse_u64, |c| c.channels.whatsapp.combine_window_ms;
    "ENGINE_KIND" => "engine.kind": parse_text, |c| c.engine.kind;
    "ENGINE_URL" => "engine.url": parse_text, |c| c.engine.url;
    "ENGINE_TOKEN_ENV" => "engine.token_env": parse_text, |c| c.engine.token_env;
    "ENGINE_PASSWORD_ENV" => "engine.password_env": parse_text, |c| c.engine.password_env;
    "ENGINE_TIMEOUT_SECS" => "engine.timeout_secs": parse_u64, |c| c.engine.timeout_secs;
    "ENGINE_TIER3_FROM_WHATSAPP" => "engine.tier3_from_whatsapp": parse_bool, |c| c.engine.tier3_from_whatsapp;
    "STATE_KIND" => "state.kind": parse_text, |c| c.state.kind;
    "TABLE_NAME" => "state.table": parse_text, |c| c.state.table;
    "STATE_ENDPOINT_URL" => "state.endpoint_url": parse_text, |c| c.state.endpoint_url;
    "SESSION_IDLE_TTL_HOURS" => "state.session_idle_ttl_hours": parse_u64, |c| c.state.session_idle_ttl_hours;
    "STATE_LEASE_SECS" => "state.lease_secs": parse_u64, |c| c.state.lease_secs;
    "STATE_ORDER_HOLD_SECS" => "state.order_hold_secs": parse_u64, |c| c.state.order_hold_secs;
    "TURNS_MODE" => "turns.mode": parse_text, |c| c.turns.mode;
    "TURNS_QUEUE_URL" => "turns.queue_url": parse_text, |c| c.turns.queue_url;
    "TURNS_ENDPOINT_URL" => "turns.endpoint_url": parse_text, |c| c.turns.endpoint_url;
    "SERVE_HEADER_TIMEOUT_SECS" => "serve.header_timeout_secs": parse_u64, |c| c.serve.header_timeout_secs;
    "SERVE_MAX_CONNECTIONS" => "serve.max_connections": parse_u64, |c| c.serve.max_connections;
    "SERVE_SHUTDOWN_GRACE_SECS" => "serve.shutdown_grace_secs": parse_u64, |c| c.serve.shutdown_grace_secs;
    "SECRETS_MANAGER_SECRET_ID" => "secrets.secret_id": parse_text, |c| c.secrets.secret_id;
    "SECRETS_TTL_SECS" => "secrets.ttl_secs": parse_u64, |c| c.secrets.ttl_secs;
    "SECRETS_ENDPOINT_URL" => "secrets.endpoint_url": parse_text, |c| c.secrets.endpoint_url;
    "SERVE_METRICS" => "serve.metrics": parse_bool, |c| c.serve.metrics;
};

/// Environment the program reads besides [`ENV_OVERRIDES`] and the secrets that
/// `*_env` fields name (also checked against the README).
pub const OTHER_ENV: &[&str] = &[
    "WHATSAPP_CONFIG",
    "LOG_LEVEL",
    "RUST_LOG",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_ENDPOINT_URL",
    "NO_COLOR",
];

impl RawConfig {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_norway::from_str::<Option<RawConfig>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                ConfigError::new(
                    "YAML",
                    e.to_string(),
                    "correct that field (see the configuration reference in README.md)",
                )
            })
    }

    /// Apply every override in [`ENV_OVERRIDES`] that `env` has a non-blank value for.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for o in ENV_OVERRIDES {
            if let Some(value) = env(o.name).filter(|v| !v.trim().is_empty()) {
                (o.apply)(self, &value)?;
            }
        }
        Ok(())
    }

    /// Check every field and resolve the secrets named by `*_env` fields.
    pub fn validate(
        self,
        mode: RunMode,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        self.validate_with(mode, env, SecretBundle::default())
    }

    /// [`RawConfig::validate`], with the values read from the `secrets:` secret in
    /// place of the environment's (and the YAML's `verify_token`).
    pub fn validate_with(
        self,
        mode: RunMode,
        env: &dyn Fn(&str) -> Option<String>,
        bundle: SecretBundle,
    ) -> Result<Config, ConfigError> {
        let secrets = self.secrets.validate()?;
        let w = self.channels.whatsapp;
        if w.enabled == Some(false) {
            return Err(ConfigError::new(
                "channels.whatsapp.enabled",
                "is false, so there is nothing to serve",
                "set it to true (or WHATSAPP_ENABLED=true)",
            ));
        }
        let phone_number_id = non_empty(w.phone_number_id).ok_or_else(|| {
            ConfigError::new(
                "channels.whatsapp.phone_number_id",
                "is missing",
                "set the Phone number ID from Meta's WhatsApp > API Setup page (or WHATSAPP_PHONE_NUMBER_ID)",
            )
        })?;
        if !phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::new(
                "channels.whatsapp.phone_number_id",
                "must be digits only",
                "copy the Phone number ID (not the phone number) from Meta's API Setup page",
            ));
        }
        let verify_token = match bundle.verify_token {
            Some(token) => token,
            None => non_empty(w.verify_token).map(Secret::new).ok_or_else(|| {
                ConfigError::new(
                    "channels.whatsapp.verify_token",
                    "is missing or empty",
                    fix_with_key(
                        "set any secret string and enter the same in Meta's webhook settings (or WHATSAPP_VERIFY_TOKEN)".into(),
                        "verify_token",
                        secrets.as_ref(),
                    ),
                )
            })?,
        };

        let token_env_explicit = non_empty(w.access_token_env);
        let token_env = token_env_explicit
            .clone()
            .unwrap_or_else(|| DEFAULT_ACCESS_TOKEN_ENV.to_string());
        let access_token = match (bundle.access_token, non_empty(env(&token_env))) {
            (Some(token), _) => Some(token),
            (None, Some(token)) => Some(Secret::new(token)),
            (None, None) if token_env_explicit.is_some() || mode == RunMode::Lambda => {
                return Err(ConfigError::new(
                    "channels.whatsapp.access_token_env",
                    format!("names the environment variable {token_env}, which is not set"),
                    fix_with_key(
                        format!("export {token_env}=<permanent access token from Meta>"),
                        "access_token",
                        secrets.as_ref(),
                    ),
                ));
            }
            (None, None) => None,
        };

        let allow_unsigned = w.allow_unsigned.unwrap_or(false);
        if allow_unsigned && mode == RunMode::Lambda {
            // A public URL that takes unsigned POSTs lets anyone talk to the agent.
            return Err(ConfigError::new(
                "channels.whatsapp.allow_unsigned",
                "is refused in Lambda mode: the webhook URL is public",
                "remove allow_unsigned (or WHATSAPP_ALLOW_UNSIGNED) and set the app secret",
            ));
        }
        let secret_env =
            non_empty(w.app_secret_env).unwrap_or_else(|| DEFAULT_APP_SECRET_ENV.to_string());
        let app_secrets = match bundle.app_secrets {
            from_secret if !from_secret.is_empty() => from_secret,
            _ => app_secret_list(&env(&secret_env).unwrap_or_default()),
        };
        if app_secrets.is_empty() && !allow_unsigned {
            return Err(ConfigError::new(
                "channels.whatsapp.app_secret_env",
                format!(
                    "names the environment variable {secret_env}, which is not set, so X-Hub-Signature-256 cannot be checked"
                ),
                fix_with_key(
                    format!(
                        "export {secret_env}=<App secret from Meta's App settings > Basic>, or set allow_unsigned: true for local tests only"
                    ),
                    "app_secret",
                    secrets.as_ref(),
                ),
            ));
        }

        let allowed_numbers = AllowList::parse(w.allowed_numbers.as_deref().unwrap_or_default())
            .map_err(|entry| {
                ConfigError::new(
                    "channels.whatsapp.allowed_numbers",
                    format!("entry {entry:?} has no digits"),
                    "write numbers in international form, e.g. \"+16505551234\"",
                )
            })?;

        let graph_api_base = non_empty(w.graph_api_base)
            .unwrap_or_else(|| DEFAULT_GRAPH_API_BASE.to_string())
            .trim_end_matches('/')
            .to_string();
        check_url(
            "channels.whatsapp.graph_api_base",
            &graph_api_base,
            &["http", "https"],
        )?;
        let graph_api_version =
            non_empty(w.graph_api_version).unwrap_or_else(|| DEFAULT_GRAPH_API_VERSION.to_string());
        if !graph_api_version.starts_with('v') {
            return Err(ConfigError::new(
                "channels.whatsapp.graph_api_version",
                format!("{graph_api_version:?} is not a Graph API version"),
                "write it like v21.0",
            ));
        }
        let format = match non_empty(w.format) {
            None => None,
            Some(f) => Some(Format::parse(&f).ok_or_else(|| {
                ConfigError::new(
                    "channels.whatsapp.format",
                    format!("unknown format {f:?}"),
                    "use whatsapp, plain or none",
                )
            })?),
        };
        let webhook_port = w.webhook_port.unwrap_or(DEFAULT_PORT);
        if webhook_port == 0 {
            return Err(ConfigError::new(
                "channels.whatsapp.webhook_port",
                "0 is not a usable port",
                "use a number from 1 to 65535, e.g. 9443",
            ));
        }

        let combine_window_ms = w.combine_window_ms;
        if let Some(combine_window_ms) = combine_window_ms
            && combine_window_ms > MAX_COMBINE_WINDOW_MS
        {
            return Err(ConfigError::new(
                "channels.whatsapp.combine_window_ms",
                format!("{combine_window_ms} is longer than {MAX_COMBINE_WINDOW_MS} ms"),
                "use 0 (combine only lines sent during a turn) or e.g. 1500",
            ));
        }
        let mut app = AppOptions::new(&phone_number_id, verify_token, app_secrets);
        app.allowed_numbers = allowed_numbers;
        app.allowed_user_ids = w
            .allowed_user_ids
            .unwrap_or_default()
            .into_iter()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
            .collect();
        if let Some(format) = format {
            app.format = format;
        }
        if let Some(on) = w.reply_threading {
            app.reply_threading = on;
        }
        if let Some(on) = w.read_receipts {
            app.read_receipts = on;
        }
        if let Some(on) = w.unsupported_reply {
            app.unsupported_reply = on;
        }
        if let Some(ms) = combine_window_ms {
            app.combine_window = Duration::from_millis(ms);
        }
        let whatsapp = WhatsAppConfig {
            access_token,
            webhook_port,
            allow_unsigned,
            graph_api_base,
            graph_api_version,
        };
        let turn_mode = turn_mode(&self.turns, &self.engine)?;
        let default_timeout = match turn_mode {
            TurnMode::Sync => DEFAULT_ENGINE_TIMEOUT_SECS,
            TurnMode::Queued => DEFAULT_QUEUED_ENGINE_TIMEOUT_SECS,
        };
        let engine_timeout = in_range(
            "engine.timeout_secs",
            self.engine.timeout_secs.unwrap_or(default_timeout),
            1..=MAX_ENGINE_TIMEOUT_SECS,
            "use e.g. 25 in sync mode (below API Gateway's 30 s) or 600 in queued mode",
        )?;
        // A sync turn cannot wait the engine's 300 s for a tap.
        app.tier3_from_whatsapp = self
            .engine
            .tier3_from_whatsapp
            .unwrap_or(turn_mode == TurnMode::Queued);
        let engine = validate_engine(
            self.engine,
            default_timeout,
            env,
            [bundle.engine_token, bundle.engine_password],
        )?;
        let default_lease = match turn_mode {
            TurnMode::Sync => DEFAULT_LEASE_SECS,
            TurnMode::Queued => engine_timeout + QUEUED_LEASE_MARGIN_SECS,
        };
        let state = validate_state(self.state, mode, default_lease)?;
        let turns = validate_turns(self.turns, turn_mode, mode, engine_timeout)?;
        let serve = validate_serve(self.serve)?;
        Ok(Config {
            app,
            whatsapp,
            engine,
            state,
            turns,
            serve,
            secrets,
        })
    }
}

/// `turns.mode`: `auto` (the default) is queued for OpenParallax, whose agent runs
/// outlast a webhook request, and sync for echo and http.
fn turn_mode(t: &RawTurns, e: &RawEngine) -> Result<TurnMode, ConfigError> {
    let mode = t.mode.as_deref().map(str::trim).unwrap_or("auto");
    match mode.to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(match e.kind.as_deref().map(str::trim) {
            Some("openparallax") => TurnMode::Queued,
            _ => TurnMode::Sync,
        }),
        "sync" => Ok(TurnMode::Sync),
        "queued" => Ok(TurnMode::Queued),
        _ => Err(ConfigError::new(
            "turns.mode",
            format!("unknown turn mode {mode:?}"),
            "use auto, sync or queued (or TURNS_MODE)",
        )),
    }
}

fn validate_turns(
    t: RawTurns,
    turn_mode: TurnMode,
    mode: RunMode,
    engine_timeout_secs: u64,
) -> Result<TurnsConfig, ConfigError> {
    let queue_url = non_empty(t.queue_url);
    if let Some(url) = &queue_url {
        check_url("turns.queue_url", url, &["https", "http"])?;
    }
    let endpoint_url = non_empty(t.endpoint_url);
    if let Some(url) = &endpoint_url {
        check_url("turns.endpoint_url", url, &["http", "https"])?;
    }
    if turn_mode == TurnMode::Queued && queue_url.is_none() && mode == RunMode::Lambda {
        return Err(ConfigError::new(
            "turns.queue_url",
            "is missing: queued turns on Lambda need the SQS FIFO queue",
            "set TURNS_QUEUE_URL to the queue's URL (the template's TurnQueueUrl output), or TURNS_MODE=sync",
        ));
    }
    Ok(TurnsConfig {
        mode: turn_mode,
        queue_url,
        endpoint_url,
        engine_timeout: Duration::from_secs(engine_timeout_secs),
    })
}

fn validate_engine(
    e: RawEngine,
    default_timeout_secs: u64,
    env: &dyn Fn(&str) -> Option<String>,
    [secret_token, secret_password]: [Option<Secret>; 2],
) -> Result<EngineConfig, ConfigError> {
    let timeout_secs = e.timeout_secs.unwrap_or(default_timeout_secs);
    let timeout = Duration::from_secs(timeout_secs);
    let kind = non_empty(e.kind).unwrap_or_else(|| "echo".to_string());
    match kind.as_str() {
        "echo" => Ok(EngineConfig::Echo),
        "http" => {
            let url = non_empty(e.url).ok_or_else(|| {
                ConfigError::new(
                    "engine.url",
                    "is missing for engine kind http",
                    "set the URL of the engine's reply endpoint, e.g. http://127.0.0.1:8080/reply (or ENGINE_URL)",
                )
            })?;
            check_url("engine.url", &url, &["http", "https"])?;
            let token = match secret_token {
                Some(token) => Some(token),
                None => {
                    secret_from_env("engine.token_env", e.token_env, "engine bearer token", env)?
                }
            };
            Ok(EngineConfig::Http {
                url,
                token,
                timeout,
            })
        }
        "openparallax" => {
            let url = non_empty(e.url).ok_or_else(|| {
                ConfigError::new(
                    "engine.url",
                    "is missing for engine kind openparallax",
                    "set the engine's WebSocket URL, e.g. ws://127.0.0.1:3100/api/ws (or ENGINE_URL)",
                )
            })?;
            check_url("engine.url", &url, &["ws", "wss", "http", "https"])?;
            let password = match secret_password {
                Some(password) => Some(password),
                None => secret_from_env(
                    "engine.password_env",
                    e.password_env,
                    "OpenParallax web password",
                    env,
                )?,
            };
            Ok(EngineConfig::OpenParallax {
                url,
                password,
                timeout,
            })
        }
        other => Err(ConfigError::new(
            "engine.kind",
            format!("unknown engine kind {other:?}"),
            "use echo, http or openparallax",
        )),
    }
}

fn validate_state(
    s: RawState,
    mode: RunMode,
    default_lease_secs: u64,
) -> Result<StateConfig, ConfigError> {
    let default_kind = match mode {
        RunMode::Serve => "memory",
        RunMode::Lambda => "dynamodb",
    };
    let kind = non_empty(s.kind).unwrap_or_else(|| default_kind.to_string());
    let kind = match kind.as_str() {
        "memory" => StateKind::Memory,
        "dynamodb" => {
            let table = non_empty(s.table).ok_or_else(|| {
                ConfigError::new(
                    "state.table",
                    "is missing for state kind dynamodb",
                    "set the DynamoDB table name (or TABLE_NAME)",
                )
            })?;
            if let Some(url) = &s.endpoint_url {
                check_url("state.endpoint_url", url, &["http", "https"])?;
            }
            StateKind::DynamoDb {
                table,
                endpoint_url: non_empty(s.endpoint_url),
            }
        }
        other => {
            return Err(ConfigError::new(
                "state.kind",
                format!("unknown state kind {other:?}"),
                "use memory or dynamodb",
            ));
        }
    };
    let hours = in_range(
        "state.session_idle_ttl_hours",
        s.session_idle_ttl_hours
            .unwrap_or(DEFAULT_SESSION_IDLE_TTL_HOURS),
        1..=MAX_SESSION_IDLE_TTL_HOURS,
        "use e.g. 720 (30 days)",
    )?;
    let lease_secs = in_range(
        "state.lease_secs",
        s.lease_secs.unwrap_or(default_lease_secs),
        1..=MAX_LEASE_SECS,
        "use a little more than the longest turn, e.g. 40 (sync) or the engine timeout + 60 (queued)",
    )?;
    let order_hold = match s.order_hold_secs {
        Some(secs) => Duration::from_secs(in_range(
            "state.order_hold_secs",
            secs,
            0..=MAX_ORDER_HOLD_SECS,
            "use e.g. 300 (at most Meta's 7-day redelivery window), or 0 to turn the hold off",
        )?),
        None => crate::state::DEFAULT_ORDER_HOLD,
    };
    Ok(StateConfig {
        kind,
        session_idle_ttl: Duration::from_secs(hours * 3600),
        lease: Duration::from_secs(lease_secs),
        order_hold,
    })
}

fn validate_serve(s: RawServe) -> Result<crate::server::ServeLimits, ConfigError> {
    let defaults = crate::server::ServeLimits::default();
    let secs = |field: &str, value: Option<u64>, default: Duration, range, fix: &str| {
        value
            .map(|v| in_range(field, v, range, fix).map(Duration::from_secs))
            .unwrap_or(Ok(default))
    };
    Ok(crate::server::ServeLimits {
        header_timeout: secs(
            "serve.header_timeout_secs",
            s.header_timeout_secs,
            defaults.header_timeout,
            1..=30,
            "use e.g. 10: a request head (and an idle keep-alive) gets this long",
        )?,
        max_connections: match s.max_connections {
            Some(n) => in_range(
                "serve.max_connections",
                n,
                1..=65_536,
                "use e.g. 256, below the process's file descriptor limit",
            )? as usize,
            None => defaults.max_connections,
        },
        shutdown_grace: secs(
            "serve.shutdown_grace_secs",
            s.shutdown_grace_secs,
            defaults.shutdown_grace,
            0..=30,
            "use e.g. 30: requests in flight get this long after SIGTERM",
        )?,
        metrics: s.metrics.unwrap_or(defaults.metrics),
    })
}

/// Load the configuration: the YAML file (if any), then environment overrides, then
/// validation. With a `secrets:` secret, [`crate::wiring::load_config`] reads it first.
pub fn load(
    yaml: Option<&str>,
    mode: RunMode,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    raw(yaml, env)?.validate(mode, env)
}

/// The YAML (if any) with the environment's overrides applied, not yet validated.
pub fn raw(
    yaml: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RawConfig, ConfigError> {
    let mut raw = match yaml {
        Some(text) => RawConfig::from_yaml(text)?,
        None => RawConfig::default(),
    };
    raw.apply_env(env)?;
    Ok(raw)
}

#[cfg(test)]
mod tests;
