//! Entry point: `serve` (local HTTP server), `create-table`, or Lambda mode when
//! `AWS_LAMBDA_RUNTIME_API` is set. Config errors end the program with one line.

use std::process::ExitCode;
use std::sync::Arc;

use whatsapp_webhook::config::{LOCAL_DEFAULTS_YAML, RunMode, StateKind};
use whatsapp_webhook::state::dynamodb::{create_table, dynamo_client};
use whatsapp_webhook::{server, wiring};

const USAGE: &str = "usage: whatsapp-webhook serve [--config FILE]\n\
       whatsapp-webhook create-table [--config FILE]\n\
       (with AWS_LAMBDA_RUNTIME_API set, runs as a Lambda function; WHATSAPP_CONFIG=FILE names the config)";

enum Command {
    Serve { config_path: Option<String> },
    CreateTable { config_path: Option<String> },
    Lambda,
    Help,
}

fn parse_args() -> Result<Command, String> {
    let mut args = std::env::args().skip(1);
    let Some(first) = args.next() else {
        return Ok(if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
            Command::Lambda
        } else {
            Command::Help
        });
    };
    match first.as_str() {
        "serve" => Ok(Command::Serve {
            config_path: config_flag(args)?,
        }),
        "create-table" => Ok(Command::CreateTable {
            config_path: config_flag(args)?,
        }),
        "-h" | "--help" | "help" => Ok(Command::Help),
        other => Err(format!("unknown command {other:?}")),
    }
}

fn config_flag(mut args: impl Iterator<Item = String>) -> Result<Option<String>, String> {
    let mut config_path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                config_path = Some(args.next().ok_or("--config needs a file name")?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(config_path)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// YAML text from `path`, else `WHATSAPP_CONFIG`, else (serve only) the built-in
/// defaults; the `secrets:` secret is read here when one is named.
async fn load_config(path: Option<String>, mode: RunMode) -> Result<wiring::Loaded, String> {
    let path = path.or_else(|| env("WHATSAPP_CONFIG").filter(|p| !p.is_empty()));
    let yaml = match &path {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            format!("config: cannot read {p}: {e}; fix: pass an existing YAML file to --config")
        })?),
        None if mode == RunMode::Serve => {
            tracing::warn!(
                "no --config given: using the built-in local defaults (config/local.yaml)"
            );
            Some(LOCAL_DEFAULTS_YAML.to_string())
        }
        None => None,
    };
    wiring::load_config(yaml.as_deref(), mode, &env)
        .await
        .map_err(|e| e.to_string())
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| {
            tracing_subscriber::EnvFilter::try_new(
                env("LOG_LEVEL").unwrap_or_else(|| "info".into()),
            )
        })
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder
            .json()
            .with_current_span(false)
            .without_time()
            .init();
    } else {
        builder.compact().init();
    }
    std::panic::set_hook(Box::new(log_panic));
}

/// A panic as one log line naming where it happened, without its message: that can
/// quote a user's text (a `str` slicing panic prints the string). The Lambda entry and
/// the queue workers catch panics and answer (500, or the jobs come again); this line
/// is how one is found.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    tracing::error!(%location, "panic (its message is not logged: it may quote a user's text)");
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("whatsapp-webhook: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Serve { config_path } => {
            init_logging(false);
            match run_serve(config_path).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::CreateTable { config_path } => {
            init_logging(false);
            match run_create_table(config_path).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Lambda => {
            init_logging(true);
            match run_lambda().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("whatsapp-webhook: {message}");
    ExitCode::FAILURE
}

async fn run_serve(config_path: Option<String>) -> Result<(), String> {
    let wiring::Loaded { config, secrets } = load_config(config_path, RunMode::Serve).await?;
    let app = Arc::new(
        wiring::build_app_with(&config, secrets)
            .await
            .map_err(|e| e.to_string())?,
    );
    let port = config.whatsapp.webhook_port;
    let listener = server::bind(port).await.map_err(|e| {
        format!("cannot listen on port {port}: {e}; fix: free the port or set webhook_port")
    })?;
    tracing::info!(
        port,
        turns = app.dispatch().mode().as_str(),
        "ready: webhook at http://127.0.0.1:{port}/webhook"
    );
    server::serve_with_turns(app, listener, config.serve)
        .await
        .map_err(|e| e.to_string())
}

/// Create the DynamoDB table of `state.table` (idempotent).
async fn run_create_table(config_path: Option<String>) -> Result<(), String> {
    let config = load_config(config_path, RunMode::Serve).await?.config;
    let StateKind::DynamoDb {
        table,
        endpoint_url,
    } = &config.state.kind
    else {
        return Err("config: state.kind: is memory, so there is no table to create; fix: set state.kind: dynamodb and state.table".into());
    };
    let client = dynamo_client(endpoint_url.as_deref()).await;
    match create_table(&client, table).await {
        Ok(true) => println!("created table {table} (key pk, TTL on ttl)"),
        Ok(false) => println!("table {table} already exists; TTL on ttl is enabled"),
        Err(e) => return Err(format!("could not create table {table}: {e}")),
    }
    Ok(())
}

async fn run_lambda() -> Result<(), String> {
    let wiring::Loaded { config, secrets } = load_config(None, RunMode::Lambda).await?;
    let app = Arc::new(
        wiring::build_app_with(&config, secrets)
            .await
            .map_err(|e| e.to_string())?,
    );
    server::run_lambda(app).await.map_err(|e| e.to_string())
}
