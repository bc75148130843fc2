//! Entry point: `serve` (local HTTP server), `chat` (the bot in a terminal),
//! `create-table`, or Lambda mode when `AWS_LAMBDA_RUNTIME_API` is set and no command is
//! given. Arguments are parsed by clap (derive); config errors end the program with one
//! line.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, CommandFactory, Parser, Subcommand};
use whatsapp_webhook::chat::{self, Chat, ChatMessenger};
use whatsapp_webhook::config::{EngineConfig, LOCAL_DEFAULTS_YAML, RunMode, StateKind, TurnMode};
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::state::dynamodb::{create_table, dynamo_client};
use whatsapp_webhook::{server, wiring};

/// The WhatsApp channel of the OpenParallax agent: Meta's webhook, as a local server or
/// an AWS Lambda function.
#[derive(Parser)]
#[command(
    name = "whatsapp-webhook",
    version,
    after_help = "With no command and AWS_LAMBDA_RUNTIME_API set (as Lambda does), runs as a Lambda \
                  function; WHATSAPP_CONFIG=FILE names its config.\n\
                  Try it: `whatsapp-webhook chat` (or `make chat`), then type hi."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Local HTTP server: Meta's webhook at http://127.0.0.1:9443/webhook (what `make run` starts).
    Serve(ConfigArg),
    /// Chat with the bot here: each line goes through the whole pipeline as a signed webhook
    /// from a test number, and the replies are printed as WhatsApp shows them.
    Chat(ConfigArg),
    /// Create the DynamoDB table of state.table (idempotent).
    CreateTable(ConfigArg),
}

#[derive(Args)]
struct ConfigArg {
    /// YAML config file (else WHATSAPP_CONFIG, else the built-in local defaults:
    /// memory state, echo engine).
    #[arg(short, long, value_name = "FILE")]
    config: Option<String>,
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
            tracing::info!(
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

/// Log lines: JSON in Lambda, compact text otherwise, to stdout (`chat`: stderr, its
/// stdout is the conversation); coloured only when that stream is a terminal and
/// `NO_COLOR` (<https://no-color.org>) is unset. `default_level` applies when neither
/// `RUST_LOG` nor `LOG_LEVEL` is set.
fn init_logging(json: bool, default_level: &str, to_stderr: bool) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| {
            tracing_subscriber::EnvFilter::try_new(
                env("LOG_LEVEL").unwrap_or_else(|| default_level.into()),
            )
        })
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, terminal) = if to_stderr {
        (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        )
    } else {
        (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        )
    };
    let colour = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour && !json)
        .with_writer(writer);
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => {
            init_logging(true, "info", false);
            run_lambda().await
        }
        None => {
            // Not in Lambda and nothing asked: the usage, as an error (exit 2).
            eprint!("{}", Cli::command().render_help());
            return ExitCode::from(2);
        }
        Some(Command::Serve(arg)) => {
            init_logging(false, "info", false);
            run_serve(arg.config).await
        }
        Some(Command::Chat(arg)) => {
            // The conversation is on stdout; stderr keeps only what went wrong.
            init_logging(false, "warn", true);
            run_chat(arg.config).await
        }
        Some(Command::CreateTable(arg)) => {
            init_logging(false, "info", false);
            run_create_table(arg.config).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// clap's message (help and version exit 0), and for an unknown argument or command
/// the valid ones of the command it was given to, which clap names only when one is
/// close.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    if matches!(
        e.kind(),
        ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand
    ) {
        let top = Cli::command();
        let given = std::env::args()
            .skip(1)
            .find_map(|a| top.get_subcommands().find(|c| c.get_name() == a).cloned());
        let command = given.as_ref().unwrap_or(&top);
        let mut valid: Vec<String> = command
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        valid.extend(
            command
                .get_arguments()
                .map(|a| match (a.get_short(), a.get_long()) {
                    (Some(s), Some(l)) => format!("-{s}/--{l}"),
                    (None, Some(l)) => format!("--{l}"),
                    (Some(s), None) => format!("-{s}"),
                    (None, None) => a.get_id().to_string(),
                }),
        );
        // clap adds these when it builds the command, after this listing.
        valid.push("-h/--help".into());
        if given.is_none() {
            valid.push("-V/--version".into());
        }
        eprintln!("valid here: {}", valid.join(", "));
    }
    ExitCode::from(2)
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

/// `chat`: the app of the config (the local defaults without one) in sync mode,
/// replying to the terminal; see [`whatsapp_webhook::chat`].
async fn run_chat(config_path: Option<String>) -> Result<(), String> {
    let mut config = load_config(config_path, RunMode::Serve).await?.config;
    // Sync: each line's replies are printed before the next line is read, and the
    // turns never go to an SQS queue.
    config.turns.mode = TurnMode::Sync;
    if config.app.app_secrets.current().is_empty() {
        config.app.app_secrets = vec![Secret::new(chat::TEST_APP_SECRET)].into();
    }
    let app_secret = config.app.app_secrets.current()[0].expose().to_string();
    let (messenger, buttons_shown) = ChatMessenger::new(Box::new(std::io::stdout()));
    let app = wiring::build_app_sending_to(&config, messenger.clone())
        .await
        .map_err(|e| e.to_string())?;
    let engine = match &config.engine {
        EngineConfig::Echo => "echo engine: it says back what you type",
        EngineConfig::Http { .. } => "http engine",
        EngineConfig::OpenParallax { .. } => "openparallax engine",
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Chatting with the bot as +{} ({engine}).\n\
             Each line is a signed webhook through the whole pipeline; replies show as WhatsApp\n\
             would. Try /help, /otr, /new. Ctrl-D quits.",
            chat::CHAT_NUMBER
        );
    }
    let chat = Chat {
        app: Arc::new(app),
        app_secret: Some(app_secret),
        phone_number_id: config.app.phone_number_id.clone(),
        messenger,
        buttons_shown,
        interactive,
    };
    chat.run(chat::read_lines(std::io::BufReader::new(std::io::stdin())))
        .await;
    Ok(())
}
