use std::sync::Arc;
use std::time::Duration;

use super::*;

fn cells() -> SecretCells {
    SecretCells {
        verify_token: Rotating::new(Secret::new("verify-1")),
        app_secrets: Rotating::new(vec![Secret::new("app-1")]),
        access_token: Some(Rotating::new(Secret::new("token-1"))),
        engine_token: None,
        engine_password: Some(Rotating::new(Secret::new("pw-1"))),
    }
}

const ROTATED: &str = r#"{"access_token":"token-2","app_secret":"app-2, app-1","verify_token":"verify-2","engine_password":"pw-2"}"#;

fn refresher(source: &Arc<MemorySecretSource>, ttl: u64) -> (SecretsRefresher, SecretCells) {
    let cells = cells();
    let refresher = SecretsRefresher::new(source.clone(), Duration::from_secs(ttl), cells.clone());
    (refresher, cells)
}

#[test]
fn a_bundle_reads_every_key_and_the_rotation_list() {
    let bundle = SecretBundle::parse(&Secret::new(ROTATED)).expect("parses");
    assert_eq!(bundle.access_token, Some(Secret::new("token-2")));
    assert_eq!(
        bundle.app_secrets,
        vec![Secret::new("app-2"), Secret::new("app-1")]
    );
    assert_eq!(bundle.verify_token, Some(Secret::new("verify-2")));
    assert_eq!(bundle.engine_token, None);
    assert_eq!(bundle.engine_password, Some(Secret::new("pw-2")));
    let blank = SecretBundle::parse(&Secret::new(r#"{"access_token":"  ","app_secret":""}"#))
        .expect("blank values are absent ones");
    assert_eq!(blank, SecretBundle::default());
}

#[test]
fn a_malformed_secret_is_refused_without_quoting_its_values() {
    for (text, expected) in [
        ("hunter2", SecretsError::NotAnObject),
        (r#"["hunter2"]"#, SecretsError::NotAnObject),
        (
            r#"{"app_secrets":"hunter2"}"#,
            SecretsError::UnknownKey("app_secrets".into()),
        ),
        (
            r#"{"access_token":12345678}"#,
            SecretsError::NotAString("access_token".into()),
        ),
    ] {
        let err = SecretBundle::parse(&Secret::new(text)).expect_err(text);
        assert_eq!(err, expected);
        let line = err.to_string();
        assert!(
            !line.contains("hunter2") && !line.contains("12345678"),
            "{line}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn values_are_read_again_only_after_the_ttl() {
    let source = Arc::new(MemorySecretSource::new(ROTATED));
    let (refresher, cells) = refresher(&source, 300);
    refresher.refresh_if_due().await;
    assert_eq!(source.reads(), 0, "the values read at start are fresh");
    assert_eq!(
        cells.access_token.as_ref().unwrap().current().expose(),
        "token-1"
    );

    tokio::time::advance(Duration::from_secs(299)).await;
    refresher.refresh_if_due().await;
    assert_eq!(source.reads(), 0);

    tokio::time::advance(Duration::from_secs(1)).await;
    refresher.refresh_if_due().await;
    refresher.refresh_if_due().await;
    assert_eq!(source.reads(), 1, "one read per TTL");
    assert_eq!(
        cells.access_token.as_ref().unwrap().current().expose(),
        "token-2"
    );
    assert_eq!(cells.verify_token.current().expose(), "verify-2");
    assert_eq!(
        *cells.app_secrets.current(),
        vec![Secret::new("app-2"), Secret::new("app-1")]
    );
    assert_eq!(
        cells.engine_password.as_ref().unwrap().current().expose(),
        "pw-2"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_read_keeps_the_last_values_and_is_retried_later() {
    let source = Arc::new(MemorySecretSource::new(ROTATED));
    source.set(None);
    let (refresher, cells) = refresher(&source, 300);
    tokio::time::advance(Duration::from_secs(300)).await;
    refresher.refresh_if_due().await;
    assert_eq!(source.reads(), 1);
    assert_eq!(cells.verify_token.current().expose(), "verify-1", "kept");
    assert_eq!(*cells.app_secrets.current(), vec![Secret::new("app-1")]);

    refresher.refresh_if_due().await;
    assert_eq!(source.reads(), 1, "no read per delivery while it fails");
    source.set(Some(ROTATED));
    tokio::time::advance(RETRY_AFTER_FAILURE).await;
    refresher.refresh_if_due().await;
    assert_eq!(source.reads(), 2);
    assert_eq!(cells.verify_token.current().expose(), "verify-2");
}

#[tokio::test(start_paused = true)]
async fn a_malformed_or_emptied_secret_does_not_replace_good_values() {
    let source = Arc::new(MemorySecretSource::new(r#"{"app_secret":""}"#));
    let (refresher, cells) = refresher(&source, 0);
    refresher.refresh_if_due().await;
    assert_eq!(
        *cells.app_secrets.current(),
        vec![Secret::new("app-1")],
        "an emptied app_secret must not switch the signature check off"
    );
    source.set(Some(r#"{"app_secret":"x","typo":"y"}"#));
    refresher.refresh_if_due().await;
    assert_eq!(*cells.app_secrets.current(), vec![Secret::new("app-1")]);
    assert_eq!(source.reads(), 2, "with a TTL of 0 every delivery reads");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_read_gives_up_and_keeps_the_values() {
    struct Hanging;
    #[async_trait]
    impl SecretSource for Hanging {
        async fn read(&self) -> Result<Secret, SecretsError> {
            std::future::pending().await
        }
    }
    let cells = cells();
    let refresher = SecretsRefresher::new(Arc::new(Hanging), Duration::ZERO, cells.clone());
    refresher.refresh_if_due().await;
    assert_eq!(cells.verify_token.current().expose(), "verify-1");
}

mod parse_properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text is read or refused without a panic, and a refusal never quotes a
        /// value (only key names, which are checked against a fixed list first).
        #[test]
        fn any_secret_text_is_read_or_refused_without_quoting_values(
            entries in prop::collection::vec(("[a-z_]{1,16}", "[ -~]{0,24}"), 0..6),
            garbage in "[ -~]{0,40}",
            as_object in any::<bool>(),
        ) {
            let text = if as_object {
                serde_json::Value::Object(
                    entries.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
                ).to_string()
            } else {
                garbage.clone()
            };
            match SecretBundle::parse(&Secret::new(text)) {
                Ok(bundle) => prop_assert!(bundle.app_secrets.iter().all(|s| !s.expose().is_empty())),
                Err(e) => {
                    let line = e.to_string();
                    for (key, value) in &entries {
                        let is_key = line.contains(&format!("{key:?}"));
                        prop_assert!(value.trim().len() < 8 || is_key || !line.contains(value.trim()), "{line}");
                    }
                }
            }
        }
    }
}
