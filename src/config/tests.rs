use super::*;
use std::collections::HashMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

const FULL: &str = r#"
channels:
  whatsapp:
    enabled: true
    phone_number_id: "1234567890123456"
    access_token_env: WHATSAPP_ACCESS_TOKEN
    verify_token: "my-secret-verify-token"
    webhook_port: 9443
    allowed_numbers: ["+1 650-555-1234"]
    app_secret_env: WHATSAPP_APP_SECRET
    graph_api_base: "http://127.0.0.1:1234/"
    graph_api_version: "v21.0"
engine:
  kind: http
  url: "http://127.0.0.1:8080/reply"
  token_env: ENGINE_TOKEN
  timeout_secs: 25
"#;

fn load_with(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load(Some(yaml), RunMode::Serve, &env_of(env))
}

#[test]
fn full_example_loads() {
    let cfg = load_with(
        FULL,
        &[
            ("WHATSAPP_ACCESS_TOKEN", "tok"),
            ("WHATSAPP_APP_SECRET", "s1, s2"),
            ("ENGINE_TOKEN", "et"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.app.phone_number_id, "1234567890123456");
    assert_eq!(cfg.whatsapp.access_token.as_ref().unwrap().expose(), "tok");
    assert_eq!(cfg.app.app_secrets.current().len(), 2);
    assert_eq!(cfg.whatsapp.graph_api_base, "http://127.0.0.1:1234");
    assert!(cfg.app.allowed_numbers.allows("16505551234"));
    assert!(matches!(cfg.engine, EngineConfig::Http { ref token, .. } if token.is_some()));
    assert_eq!(cfg.state.kind, StateKind::Memory);
}

#[test]
fn missing_phone_number_id_names_field() {
    let err = load_with(
        "channels: {whatsapp: {verify_token: x, allow_unsigned: true}}",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.field, "channels.whatsapp.phone_number_id");
    assert!(
        err.to_string()
            .starts_with("config: channels.whatsapp.phone_number_id: is missing; fix:")
    );
}

#[test]
fn unset_access_token_env_is_an_error() {
    let err = load_with(FULL, &[("WHATSAPP_APP_SECRET", "s"), ("ENGINE_TOKEN", "e")]).unwrap_err();
    assert_eq!(err.field, "channels.whatsapp.access_token_env");
    assert!(err.to_string().contains("WHATSAPP_ACCESS_TOKEN"));
}

#[test]
fn empty_verify_token_is_an_error() {
    let err = load_with(
        "channels: {whatsapp: {phone_number_id: '1', verify_token: '  ', allow_unsigned: true}}",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.field, "channels.whatsapp.verify_token");
}

#[test]
fn unknown_engine_kind_is_an_error() {
    let err = load_with(
            "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true}}\nengine: {kind: magic}",
            &[],
        )
        .unwrap_err();
    assert_eq!(err.field, "engine.kind");
    assert!(err.problem.contains("magic"));
}

#[test]
fn port_not_a_number_is_an_error() {
    let err = load_with(
            "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true, webhook_port: abc}}",
            &[],
        )
        .unwrap_err();
    assert!(err.to_string().contains("webhook_port"), "{err}");
    let err = load_with(
        "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true}}",
        &[("WEBHOOK_PORT", "eighty")],
    )
    .unwrap_err();
    assert_eq!(err.field, "WEBHOOK_PORT");
}

#[test]
fn app_secret_required_unless_allow_unsigned() {
    let yaml = "channels: {whatsapp: {phone_number_id: '1', verify_token: v}}";
    let err = load_with(yaml, &[]).unwrap_err();
    assert_eq!(err.field, "channels.whatsapp.app_secret_env");
    assert!(load_with(yaml, &[("WHATSAPP_APP_SECRET", "s")]).is_ok());
}

#[test]
fn env_alone_configures_lambda() {
    let env = env_of(&[
        ("WHATSAPP_PHONE_NUMBER_ID", "42"),
        ("WHATSAPP_VERIFY_TOKEN", "v"),
        ("WHATSAPP_ACCESS_TOKEN", "t"),
        ("WHATSAPP_APP_SECRET", "s"),
        ("WHATSAPP_ALLOWED_NUMBERS", "+1 650-555-1234,447700900555"),
        ("TABLE_NAME", "tbl"),
        ("ENGINE_KIND", "echo"),
    ]);
    let cfg = load(None, RunMode::Lambda, &env).unwrap();
    assert_eq!(cfg.app.phone_number_id, "42");
    assert!(cfg.app.allowed_numbers.allows("447700900555"));
    assert_eq!(
        cfg.state.kind,
        StateKind::DynamoDb {
            table: "tbl".into(),
            endpoint_url: None
        }
    );
}

#[test]
fn rapid_fire_window_and_order_hold_from_yaml_and_env() {
    let yaml = "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true, combine_window_ms: 1500}}\nstate: {order_hold_secs: 60}";
    let cfg = load_with(yaml, &[]).unwrap();
    assert_eq!(cfg.app.combine_window, Duration::from_millis(1500));
    assert_eq!(cfg.state.order_hold, Duration::from_secs(60));
    let cfg = load_with(
        yaml,
        &[
            ("WHATSAPP_COMBINE_WINDOW_MS", "0"),
            ("STATE_ORDER_HOLD_SECS", "0"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.app.combine_window, Duration::ZERO);
    assert_eq!(cfg.state.order_hold, Duration::ZERO);
    let defaults = load_with(
        "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true}}",
        &[],
    )
    .unwrap();
    assert_eq!(defaults.app.combine_window, Duration::ZERO);
    assert_eq!(defaults.state.order_hold, crate::state::DEFAULT_ORDER_HOLD);
}

#[test]
fn too_long_rapid_fire_window_is_an_error() {
    let err = load_with(
            "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true, combine_window_ms: 60000}}",
            &[],
        )
        .unwrap_err();
    assert_eq!(err.field, "channels.whatsapp.combine_window_ms");
    assert!(err.to_string().contains("fix: use 0"), "{err}");
}

#[test]
fn lambda_requires_access_token() {
    let env = env_of(&[
        ("WHATSAPP_PHONE_NUMBER_ID", "42"),
        ("WHATSAPP_VERIFY_TOKEN", "v"),
        ("WHATSAPP_APP_SECRET", "s"),
        ("TABLE_NAME", "tbl"),
    ]);
    let err = load(None, RunMode::Lambda, &env).unwrap_err();
    assert_eq!(err.field, "channels.whatsapp.access_token_env");
}

#[test]
fn openparallax_engine_needs_url_and_its_password_env() {
    let base =
        "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true}}\n";
    let err = load_with(&format!("{base}engine: {{kind: openparallax}}"), &[]).unwrap_err();
    assert_eq!(err.field, "engine.url");
    let yaml = format!(
        "{base}engine: {{kind: openparallax, url: 'ws://10.0.0.5:3100/api/ws', password_env: OP_PASS}}"
    );
    let err = load_with(&yaml, &[]).unwrap_err();
    assert_eq!(err.field, "engine.password_env");
    assert!(err.to_string().contains("OP_PASS"));
    let cfg = load_with(&yaml, &[("OP_PASS", "pw")]).unwrap();
    assert!(
        matches!(cfg.engine, EngineConfig::OpenParallax { ref password, .. } if password.is_some())
    );
    let err = load_with(
        &format!("{base}engine: {{kind: openparallax, url: 'ftp://x'}}"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.field, "engine.url");
}

#[test]
fn every_env_override_sets_its_own_field() {
    for o in ENV_OVERRIDES {
        let leaf = o.field.rsplit('.').next().unwrap_or(o.field);
        // A value each parser takes: a boolean, a number or text.
        let applied = ["true", "7", "x"].iter().find_map(|value| {
            let mut raw = RawConfig::default();
            raw.apply_env(&env_of(&[(o.name, value)])).ok()?;
            Some(format!("{raw:?}"))
        });
        let applied = applied.unwrap_or_else(|| panic!("{} takes no value", o.name));
        assert!(
            applied.contains(&format!("{leaf}: Some(")),
            "{} did not set {}: {applied}",
            o.name,
            o.field
        );
        assert_eq!(
            applied.matches(": Some(").count(),
            1,
            "{} set more than {}",
            o.name,
            o.field
        );
    }
}

#[test]
fn unknown_field_is_rejected() {
    let err = load_with("channels: {whatsapp: {phone_numbr_id: '1'}}", &[]).unwrap_err();
    assert!(err.to_string().contains("phone_numbr_id"), "{err}");
}

#[test]
fn local_defaults_load_without_any_env() {
    let cfg = load(Some(LOCAL_DEFAULTS_YAML), RunMode::Serve, &env_of(&[])).unwrap();
    assert!(cfg.whatsapp.access_token.is_none());
    assert!(matches!(cfg.engine, EngineConfig::Echo));
    assert_eq!(cfg.state.kind, StateKind::Memory);
    assert_eq!(cfg.whatsapp.webhook_port, 9443);
}

const LAMBDA_ENV: &[(&str, &str)] = &[
    ("WHATSAPP_PHONE_NUMBER_ID", "42"),
    ("WHATSAPP_VERIFY_TOKEN", "v"),
    ("WHATSAPP_ACCESS_TOKEN", "t"),
    ("WHATSAPP_APP_SECRET", "s"),
    ("TABLE_NAME", "tbl"),
];

fn lambda_with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut pairs = LAMBDA_ENV.to_vec();
    pairs.extend_from_slice(extra);
    load(None, RunMode::Lambda, &env_of(&pairs))
}

#[test]
fn auto_turns_are_queued_for_openparallax_and_sync_otherwise() {
    let sync = lambda_with(&[("ENGINE_KIND", "echo")]).unwrap();
    assert_eq!(sync.turns.mode, TurnMode::Sync);
    assert_eq!(sync.turns.engine_timeout, Duration::from_secs(25));
    assert_eq!(sync.state.lease, Duration::from_secs(DEFAULT_LEASE_SECS));
    let queued = lambda_with(&[
        ("ENGINE_KIND", "openparallax"),
        ("ENGINE_URL", "ws://127.0.0.1:3100/api/ws"),
        (
            "TURNS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/t.fifo",
        ),
    ])
    .unwrap();
    assert_eq!(queued.turns.mode, TurnMode::Queued);
    assert_eq!(queued.turns.engine_timeout, Duration::from_secs(600));
    assert_eq!(
        queued.state.lease,
        Duration::from_secs(660),
        "outlives the turn"
    );
    // Explicit values win over the mode's defaults.
    let forced = lambda_with(&[
        ("ENGINE_KIND", "openparallax"),
        ("ENGINE_URL", "ws://127.0.0.1:3100/api/ws"),
        ("TURNS_MODE", "sync"),
    ])
    .unwrap();
    assert_eq!(forced.turns.mode, TurnMode::Sync);
    let timed = lambda_with(&[
        ("TURNS_MODE", "queued"),
        (
            "TURNS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/t.fifo",
        ),
        ("ENGINE_TIMEOUT_SECS", "120"),
    ])
    .unwrap();
    assert_eq!(timed.state.lease, Duration::from_secs(180));
}

#[test]
fn tier3_buttons_are_on_for_queued_turns_unless_set() {
    let openparallax = [
        ("ENGINE_KIND", "openparallax"),
        ("ENGINE_URL", "ws://127.0.0.1:3100/api/ws"),
        (
            "TURNS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/t.fifo",
        ),
    ];
    let queued = lambda_with(&openparallax).unwrap();
    assert!(
        queued.app.tier3_from_whatsapp,
        "a queued turn can wait for a tap"
    );
    let sync = lambda_with(&[("ENGINE_KIND", "echo")]).unwrap();
    assert!(
        !sync.app.tier3_from_whatsapp,
        "a sync turn cannot wait 300 s"
    );
    let mut off = openparallax.to_vec();
    off.push(("ENGINE_TIER3_FROM_WHATSAPP", "false"));
    assert!(!lambda_with(&off).unwrap().app.tier3_from_whatsapp);
    let on = lambda_with(&[
        ("ENGINE_KIND", "echo"),
        ("ENGINE_TIER3_FROM_WHATSAPP", "true"),
    ]);
    assert!(on.unwrap().app.tier3_from_whatsapp);
}

#[test]
fn queued_lambda_without_a_queue_refuses_to_start_with_one_line() {
    let err = lambda_with(&[("TURNS_MODE", "queued")]).unwrap_err();
    assert_eq!(err.field, "turns.queue_url");
    assert!(err.to_string().contains("TURNS_QUEUE_URL"), "{err}");
    assert!(!err.to_string().contains('\n'));
    // serve runs queued turns in-process without a queue.
    let yaml = "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true}}\nturns: {mode: queued}";
    assert_eq!(load_with(yaml, &[]).unwrap().turns.queue_url, None);
    let err = lambda_with(&[("TURNS_MODE", "later")]).unwrap_err();
    assert_eq!(err.field, "turns.mode");
}

#[test]
fn every_number_has_a_range_checked_at_start() {
    let huge = "18446744073709551615";
    for (var, field) in [
        ("SESSION_IDLE_TTL_HOURS", "state.session_idle_ttl_hours"),
        ("STATE_LEASE_SECS", "state.lease_secs"),
        ("STATE_ORDER_HOLD_SECS", "state.order_hold_secs"),
        ("ENGINE_TIMEOUT_SECS", "engine.timeout_secs"),
    ] {
        let err = lambda_with(&[(var, huge)]).unwrap_err();
        assert_eq!(err.field, field, "{var}");
        let line = err.to_string();
        assert!(line.contains("outside"), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
    }
    for (var, zero_ok) in [
        ("SESSION_IDLE_TTL_HOURS", false),
        ("STATE_LEASE_SECS", false),
        ("STATE_ORDER_HOLD_SECS", true),
        ("ENGINE_TIMEOUT_SECS", false),
    ] {
        assert_eq!(lambda_with(&[(var, "0")]).is_ok(), zero_ok, "{var}=0");
    }
    // A queued engine timeout at its maximum still gives a lease in range.
    let longest = lambda_with(&[
        ("TURNS_MODE", "queued"),
        (
            "TURNS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/t.fifo",
        ),
        ("ENGINE_TIMEOUT_SECS", "3600"),
    ])
    .unwrap();
    assert_eq!(longest.state.lease, Duration::from_secs(3660));
}

#[test]
fn unsigned_mode_is_refused_in_lambda_mode() {
    let err = lambda_with(&[("WHATSAPP_ALLOW_UNSIGNED", "true")]).unwrap_err();
    assert_eq!(err.field, "channels.whatsapp.allow_unsigned");
    // Still allowed for local runs.
    let yaml =
        "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true}}";
    assert!(load_with(yaml, &[]).unwrap().whatsapp.allow_unsigned);
}

#[test]
fn serve_metrics_is_off_unless_set_in_yaml_or_env() {
    let env = [
        ("WHATSAPP_ACCESS_TOKEN", "t"),
        ("WHATSAPP_APP_SECRET", "s"),
        ("ENGINE_TOKEN", "e"),
    ];
    assert!(!load_with(FULL, &env).unwrap().serve.metrics);
    let yaml = format!("{FULL}serve:\n  metrics: true\n");
    assert!(load_with(&yaml, &env).unwrap().serve.metrics);
    let mut on = env.to_vec();
    on.push(("SERVE_METRICS", "true"));
    assert!(load_with(FULL, &on).unwrap().serve.metrics);
    on.pop();
    on.push(("SERVE_METRICS", "maybe"));
    let err = load_with(FULL, &on).unwrap_err().to_string();
    assert!(
        err.contains("serve.metrics") || err.contains("SERVE_METRICS"),
        "{err}"
    );
}
