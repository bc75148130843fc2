//! moto_server harness for integration tests that talk to DynamoDB.
//!
//! Include it from a test file with
//! `#[path = "support/moto.rs"] mod moto;`
//! (a path module, not `tests/support/mod.rs`, so cargo does not build it as a test
//! target of its own). `scripts/ensure-moto.sh` (run by `make test`) installs
//! moto_server into the project's `.venv`.
//!
//! [`shared`] hands out one moto process to all tests of a binary that run at the
//! same time; it is killed when the last of them drops its handle. Each test uses its
//! own table ([`fresh_table`]), so tests never see each other's items.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

pub struct MotoServer {
    child: Child,
    pub endpoint: String,
}

impl MotoServer {
    /// Start moto_server on a free local port and wait until it answers HTTP.
    pub fn start() -> MotoServer {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let binary = root.join(".venv/bin/moto_server");
        assert!(
            binary.exists(),
            "{} is missing: run `make test` or `scripts/ensure-moto.sh` to install moto_server",
            binary.display()
        );
        let port = free_port();
        // moto's own server applies concurrent writes to one item without a lock;
        // this launcher serialises requests, as DynamoDB's per-item atomicity needs.
        let child = Command::new(root.join(".venv/bin/python"))
            .arg(root.join("scripts/moto-serialized.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", binary.display()));
        let mut server = MotoServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        server.wait_ready(port);
        server
    }

    fn wait_ready(&mut self, port: u16) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto_server exited during start-up: {status}");
            }
            if answers_http(addr) {
                return;
            }
            // Polling interval while the Python process starts, not a synchronisation.
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moto_server did not answer on {addr} within 30 s");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The moto process shared by the tests running now; a new one when none is left.
pub fn shared() -> Arc<MotoServer> {
    static CURRENT: Mutex<Weak<MotoServer>> = Mutex::new(Weak::new());
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(server) = current.upgrade() {
        return server;
    }
    let server = Arc::new(MotoServer::start());
    *current = Arc::downgrade(&server);
    server
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// SDK config for moto at `endpoint`: static test credentials and us-east-1, as tests
/// have no AWS environment. Per-attempt timeouts are generous: moto ignores
/// `ClientRequestToken`, so an SDK retry of a transaction that did commit (after a
/// timeout on a busy machine) fails its condition where DynamoDB would replay it.
pub fn config_builder(endpoint: &str) -> aws_sdk_dynamodb::config::Builder {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(60))
        .build();
    production_config_builder(endpoint).timeout_config(timeouts)
}

/// As [`config_builder`], with the production timeouts and retries.
pub fn production_config_builder(endpoint: &str) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .timeout_config(whatsapp_webhook::state::dynamodb::timeout_config())
        .retry_config(whatsapp_webhook::state::dynamodb::retry_config())
}

/// The real binary as `serve --config CONFIG`, with an access token, `app_secret`, and
/// the dummy AWS credentials moto accepts; stdout piped (it reports "ready" there).
pub fn serve_command(bin: &str, config: &std::path::Path, app_secret: &str) -> Command {
    let mut command = Command::new(bin);
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("WHATSAPP_ACCESS_TOKEN", "token")
        .env("WHATSAPP_APP_SECRET", app_secret)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped());
    command
}

/// The lines a process wrote to its stdout so far (its log in `serve` mode).
pub type Log = Arc<Mutex<Vec<String>>>;

/// Wait until `child` (a `serve` with stdout piped) prints its "ready" line; every line
/// it writes, before and after, is kept in the returned log. The reader ends when the
/// process does: join it after a kill to have the last lines too.
pub fn wait_ready(child: &mut Child) -> (Log, std::thread::JoinHandle<()>) {
    let stdout = child.stdout.take().expect("stdout piped");
    let log: Log = Arc::default();
    let lines = log.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if line.contains("ready") {
                let _ = tx.send(());
            }
            lines.lock().expect("log").push(line);
        }
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        panic!("serve not ready: {:?}", log.lock().expect("log"));
    }
    (log, reader)
}

pub fn client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(config_builder(endpoint).build())
}

/// An SQS client for moto at `endpoint` (test credentials, us-east-1).
pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// A new SQS FIFO queue (no content-based deduplication, as the template's); its URL.
pub async fn fresh_fifo_queue(client: &aws_sdk_sqs::Client) -> String {
    let name = format!("turns-{}.fifo", uuid::Uuid::new_v4().simple());
    client
        .create_queue()
        .queue_name(name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "900",
        )
        .send()
        .await
        .expect("create_queue")
        .queue_url()
        .expect("queue url")
        .to_string()
}

/// A new table with a unique name, created the way production creates it.
pub async fn fresh_table(client: &aws_sdk_dynamodb::Client) -> String {
    let table = format!("test-{}", uuid::Uuid::new_v4().simple());
    let created = whatsapp_webhook::state::dynamodb::create_table(client, &table)
        .await
        .expect("create_table");
    assert!(created, "a fresh table must be reported as created");
    table
}

/// Counts DynamoDB operations made through a client (retries not included).
#[derive(Debug, Clone, Default)]
pub struct CountRequests(pub Arc<std::sync::atomic::AtomicUsize>);

impl aws_sdk_dynamodb::config::Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_execution(
        &self,
        _context: &aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef<
            '_,
        >,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
