//! contract section 10 against real connections: the address guard on literal and resolved
//! addresses, the allow-list, and TLS verification.

use std::sync::Arc;

use crate::support::receiver::Receiver;
use crate::support::{SECOND, TestApp, Trigger, event, test_settings};

#[tokio::test]
async fn private_targets_are_blocked_by_default() {
    let mut settings = test_settings();
    settings.allow_private_targets = false;
    let mut app = TestApp::spawn_with(settings).await;
    let receiver = Receiver::always(200).await;
    let port = receiver.addr.port();
    let literal = app
        .insert_webhook(
            "literal",
            &format!("http://127.0.0.1:{port}/"),
            Trigger::All,
        )
        .await;
    let resolved = app
        .insert_webhook(
            "resolved",
            &format!("http://localhost:{port}/"),
            Trigger::All,
        )
        .await;
    let mapped = app
        .insert_webhook(
            "mapped",
            &format!("http://[::ffff:127.0.0.1]:{port}/"),
            Trigger::All,
        )
        .await;
    app.publish_event(&event("latest")).await;
    let statuses = app.statuses(3, 10 * SECOND).await;
    for id in [literal, resolved, mapped] {
        let s = statuses.iter().find(|s| s["webhook_id"] == id).unwrap();
        assert_eq!(
            (s["status"].as_str(), s["error"].as_str()),
            (Some("failed"), Some("blocked_address")),
            "{s}"
        );
    }
    assert_eq!(receiver.count(), 0, "nothing reached the loopback receiver");
    assert_eq!(
        app.metric(r#"tagcast_delivery_attempts_total{outcome="blocked"}"#)
            .await,
        3.0
    );
    let errors: Vec<Option<String>> = app
        .pg
        .query("SELECT error FROM delivery_attempts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(errors, vec![Some("blocked_address".to_owned()); 3]);
    app.teardown().await;
}

#[tokio::test]
async fn an_allowed_range_is_reachable_and_nothing_else_is() {
    let mut settings = test_settings();
    settings.allow_private_targets = false;
    settings.allow_targets = vec!["127.0.0.0/8".parse().unwrap()];
    let mut app = TestApp::spawn_with(settings).await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("allowed", &receiver.url("/"), Trigger::All)
        .await;
    let other = app
        .insert_webhook(
            "metadata",
            "http://169.254.169.254/latest/meta-data/",
            Trigger::All,
        )
        .await;
    app.publish_event(&event("latest")).await;
    let statuses = app.statuses(2, 10 * SECOND).await;
    let blocked = statuses.iter().find(|s| s["webhook_id"] == other).unwrap();
    assert_eq!(blocked["error"], "blocked_address");
    assert!(statuses.iter().any(|s| s["status"] == "succeeded"));
    assert_eq!(receiver.count(), 1);
    app.teardown().await;
}

/// A local HTTPS server whose certificate nobody signed.
async fn self_signed_server() -> u16 {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The handshake fails on the client's side; nothing is served.
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_self_signed_certificate_is_refused() {
    let mut settings = test_settings();
    settings.retry_max_attempts = 1;
    let mut app = TestApp::spawn_with(settings).await;
    let port = self_signed_server().await;
    app.insert_webhook(
        "tls",
        &format!("https://localhost:{port}/hook"),
        Trigger::All,
    )
    .await;
    app.publish_event(&event("latest")).await;
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (status["status"].as_str(), status["error"].as_str()),
        (Some("failed"), Some("tls_certificate")),
        "{status}"
    );
    assert!(status["http_status"].is_null());
    app.teardown().await;
}
