//! Captures every log line of a delivery whose URL, secret and broker URL carry secrets, and
//! finds none of them. Its own test binary: it installs the process-wide log subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::receiver::Receiver;
use support::{SECOND, TestApp, Trigger, event, test_settings};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace,hyper=info,h2=info,rustls=info,tokio_postgres=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let query_secret = "q-s3cr3t-4a7f";
    let webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut settings = test_settings();
    settings.amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f".parse().unwrap();
    settings.retry_max_attempts = 2;
    let mut app = TestApp::spawn_with(settings).await;
    let ok = Receiver::always(200).await;
    let failing = Receiver::always(500).await;
    app.insert_webhook_for(
        "namespace",
        "repoTest",
        "ok",
        &ok.url(&format!("/hook?secret={query_secret}")),
        Trigger::All,
        Some(webhook_secret),
    )
    .await;
    app.insert_webhook_for(
        "namespace",
        "repoTest",
        "failing",
        &failing.url(&format!("/hook?token={query_secret}")),
        Trigger::All,
        Some(webhook_secret),
    )
    .await;
    app.publish_event(&event("latest")).await;
    app.statuses(3, 10 * SECOND).await; // succeeded, retrying, failed
    app.teardown().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("delivery attempt") && logs.contains("/hook?REDACTED"),
        "the attempts were logged, with the query redacted:\n{logs}"
    );
    assert!(
        logs.contains("guest:REDACTED@"),
        "the broker URL was logged, redacted"
    );
    for secret in [
        query_secret,
        webhook_secret,
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "guest:guest",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} appears in the logs:\n{logs}"
        );
    }
}
