//! Secrets read at run time from Secrets Manager (moto_server): the real binary in
//! `serve` mode takes the access token, the app secret and the verify token from the
//! secret (over the environment's), picks up a rotation without a restart, keeps the
//! last values when the secret cannot be read, and never logs a value. The template
//! puts no secret value into the function's configuration.

use std::process::{Child, Stdio};

use crate::helpers::{eventually, text_message};
use serde_json::json;
use whatsapp_webhook::webhook::signature::sign;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-webhook");
/// Set in the environment too: the secret's values must win over these.
const ENV_APP_SECRET: &str = "env-app-secret";

fn secrets_client(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

fn secret_text(access_token: &str, app_secret: &str, verify_token: &str) -> String {
    json!({"access_token": access_token, "app_secret": app_secret, "verify_token": verify_token})
        .to_string()
}

struct Server {
    child: Child,
    url: String,
    /// Every line the process wrote (its log).
    log: crate::moto::Log,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` with `secrets.secret_id` and a TTL of 0 (every delivery reads the secret),
/// replies to `graph`; waits for "ready".
fn start(moto: &str, secret_id: &str, graph: &MockServer) -> Server {
    let port = crate::moto::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "channels:\n  whatsapp:\n    phone_number_id: '123456123456123'\n    webhook_port: {port}\n    \
             graph_api_base: '{g}'\n    read_receipts: false\n\
             secrets:\n  secret_id: '{secret_id}'\n  ttl_secs: 0\n  endpoint_url: '{moto}'\n",
            g = graph.uri(),
        ),
    )
    .expect("config");
    let mut child = crate::moto::serve_command(BIN, &config, ENV_APP_SECRET)
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    let (log, _) = crate::moto::wait_ready(&mut child);
    Server {
        child,
        url: format!("http://127.0.0.1:{port}/webhook"),
        log,
    }
}

async fn post(server: &Server, app_secret: &str, id: &str) -> u16 {
    let body = serde_json::to_vec(&text_message("16505551234", id, "hello")).expect("json");
    reqwest::Client::new()
        .post(&server.url)
        .header("x-hub-signature-256", sign(app_secret, &body))
        .body(body)
        .send()
        .await
        .expect("POST")
        .status()
        .as_u16()
}

async fn verify(server: &Server, token: &str) -> u16 {
    reqwest::get(format!(
        "{}?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=7",
        server.url
    ))
    .await
    .expect("GET")
    .status()
    .as_u16()
}

/// The bearer tokens of the Graph calls so far.
async fn bearers(graph: &MockServer) -> Vec<String> {
    graph
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.headers.get("authorization"))
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn secrets_come_from_secrets_manager_and_a_rotation_needs_no_restart() {
    let moto = crate::moto::shared();
    let client = secrets_client(&moto.endpoint);
    let secret_id = format!("whatsapp-webhook-{}", uuid::Uuid::new_v4().simple());
    client
        .create_secret()
        .name(&secret_id)
        .secret_string(secret_text(
            "graph-token-one",
            "app-secret-one",
            "verify-one",
        ))
        .send()
        .await
        .expect("create secret");
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v21.0/123456123456123/messages"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"messages":[{"id":"wamid.OUT"}]})),
        )
        .mount(&graph)
        .await;
    let server = start(&moto.endpoint, &secret_id, &graph);

    assert_eq!(verify(&server, "verify-one").await, 200);
    assert_eq!(post(&server, "app-secret-one", "wamid.A").await, 200);
    assert_eq!(
        post(&server, ENV_APP_SECRET, "wamid.B").await,
        403,
        "the secret's app_secret is used, not the environment's"
    );
    assert_eq!(bearers(&graph).await, vec!["Bearer graph-token-one"]);

    // Rotation: a new token, a new app secret with the old one still listed, a new
    // verify token. The process is not restarted.
    client
        .put_secret_value()
        .secret_id(&secret_id)
        .secret_string(secret_text(
            "graph-token-two",
            "app-secret-two, app-secret-one",
            "verify-two",
        ))
        .send()
        .await
        .expect("rotate");
    assert_eq!(post(&server, "app-secret-two", "wamid.C").await, 200);
    assert_eq!(
        post(&server, "app-secret-one", "wamid.D").await,
        200,
        "the rotation list keeps the old app secret valid"
    );
    assert_eq!(verify(&server, "verify-two").await, 200);
    assert_eq!(verify(&server, "verify-one").await, 403);
    assert_eq!(
        bearers(&graph).await,
        vec![
            "Bearer graph-token-one",
            "Bearer graph-token-two",
            "Bearer graph-token-two"
        ]
    );

    // The secret is gone (or Secrets Manager is down): the last values stay in use.
    client
        .delete_secret()
        .secret_id(&secret_id)
        .force_delete_without_recovery(true)
        .send()
        .await
        .expect("delete");
    assert_eq!(post(&server, "app-secret-two", "wamid.E").await, 200);
    eventually("the failed read is logged", async || {
        let log = server.log.lock().expect("log");
        log.iter()
            .any(|l| l.contains("could not read the secrets again"))
    })
    .await;

    let log = server.log.lock().expect("log").join("\n");
    assert!(log.contains("secrets read from Secrets Manager"), "{log}");
    // Anyone may call the verification GET: at the default level it writes no line
    // (the lines before the failed read above are all in).
    assert!(!log.contains("verification accepted"), "{log}");
    for value in [
        "graph-token",
        "app-secret-one",
        "app-secret-two",
        "verify-one",
        "verify-two",
    ] {
        assert!(!log.contains(value), "{value} was logged:\n{log}");
    }
}

#[test]
fn a_secret_that_cannot_be_read_stops_the_start_with_one_line() {
    let moto = crate::moto::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "channels:\n  whatsapp:\n    phone_number_id: '1'\n    verify_token: v\n\
             secrets:\n  secret_id: no-such-secret\n  endpoint_url: '{}'\n",
            moto.endpoint
        ),
    )
    .expect("config");
    let output = crate::moto::serve_command(BIN, &config, ENV_APP_SECRET)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("whatsapp-webhook: config: secrets.secret_id: could not read secret no-such-secret: ResourceNotFoundException")
            && line.contains("fix:"),
        "{line}"
    );
}

#[test]
fn the_template_puts_no_secret_value_in_the_function_configuration() {
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("template.yaml"),
    )
    .expect("template.yaml");
    assert!(
        !template.contains("{{resolve:secretsmanager"),
        "a dynamic reference writes the value into the function's environment"
    );
    for name in [
        "WHATSAPP_ACCESS_TOKEN",
        "WHATSAPP_APP_SECRET",
        "WHATSAPP_VERIFY_TOKEN",
        "ENGINE_TOKEN",
        "ENGINE_PASSWORD",
    ] {
        let set = template
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{name}:")));
        assert!(!set, "template.yaml sets {name} in an environment");
    }
    assert!(template.contains("SECRETS_MANAGER_SECRET_ID:"));
}
