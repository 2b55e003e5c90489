//! The command line, as a person or a script runs it: the `tagcast` binary against a running
//! tagcast (tokens on its database, everything else through its admin API), and
//! `tagcast serve-api` on its own.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tagcast::store::tokens::Scope;

use crate::support::app::{SECOND, TestApp, event_for};
use crate::support::eventually;
use crate::support::receiver::Receiver;

const TAGCAST: &str = env!("CARGO_BIN_EXE_tagcast");

/// `tagcast ARGS` on the app's database and API, with `token` as TAGCAST_API_TOKEN.
async fn tagcast(app: &TestApp, token: Option<&str>, args: &[&str]) -> Output {
    // Async: tagcast itself runs on this test's runtime and must answer meanwhile.
    let mut cmd = tokio::process::Command::new(TAGCAST);
    cmd.args(args)
        .env("TAGCAST_DATABASE_URL", app.settings.database_url.expose())
        .env("TAGCAST_API_URL", format!("http://{}", app.api_addr))
        .env_remove("TAGCAST_API_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = token {
        cmd.env("TAGCAST_API_TOKEN", token);
    }
    cmd.output().await.unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed; its standard output.
async fn ok(app: &TestApp, token: Option<&str>, args: &[&str]) -> String {
    let out = tagcast(app, token, args).await;
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn tokens_are_made_listed_and_revoked_on_the_database() {
    let app = TestApp::spawn().await;
    let token = ok(
        &app,
        None,
        &["tokens", "create", "--name", "ci", "--scope", "read"],
    )
    .await;
    let token = token.trim();
    assert!(token.starts_with("tgc_") && token.len() == 44, "{token}");
    let listed = ok(&app, None, &["tokens", "list"]).await;
    assert!(
        listed.contains("ci") && listed.contains("read") && listed.contains("live"),
        "{listed}"
    );
    assert!(!listed.contains(token), "a token is shown once");
    let stored: Vec<u8> = app
        .scalar("SELECT hash FROM api_tokens WHERE name = 'ci'")
        .await;
    assert_eq!(stored.len(), 32, "only a hash is kept");

    // A second live token of that name is refused; the read token reads, and cannot write.
    let again = tagcast(
        &app,
        None,
        &["tokens", "create", "--name", "ci", "--scope", "write"],
    )
    .await;
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert_eq!(
        app.api(
            "GET",
            "/api/v1/repositories/a/b/webhooks",
            Some(token),
            None
        )
        .await
        .status,
        200
    );
    let write = tagcast(
        &app,
        Some(token),
        &[
            "webhooks",
            "create",
            "a/b",
            "--name",
            "n",
            "--url",
            "http://127.0.0.1:9/",
        ],
    )
    .await;
    assert_eq!(write.status.code(), Some(4), "{}", stderr(&write));
    assert!(stderr(&write).contains("write scope"), "{}", stderr(&write));

    ok(&app, None, &["tokens", "revoke", "ci"]).await;
    assert_eq!(
        app.api(
            "GET",
            "/api/v1/repositories/a/b/webhooks",
            Some(token),
            None
        )
        .await
        .status,
        401
    );
    let listed = json(&ok(&app, None, &["tokens", "list", "--json"]).await);
    assert!(listed["revoked_at"].is_string(), "{listed}");
    let twice = tagcast(&app, None, &["tokens", "revoke", "ci"]).await;
    assert_eq!(twice.status.code(), Some(3));
    app.teardown().await;
}

#[tokio::test]
async fn webhooks_and_deliveries_are_managed_from_the_command_line() {
    let mut app = TestApp::spawn().await;
    let w = app.token("cli", Scope::Write).await;
    let receiver = Receiver::always(200).await;
    let w = Some(w.as_str());

    let created = ok(
        &app,
        w,
        &[
            "webhooks",
            "create",
            "ns/cli",
            "--name",
            "deploy",
            "--url",
            &receiver.url("/d?secret=q"),
            "--tags",
            "latest,v1",
            "--generate-secret",
        ],
    )
    .await;
    assert!(
        created.contains("deploy") && created.contains("tags latest,v1"),
        "{created}"
    );
    assert!(
        created.contains("?REDACTED") && !created.contains("secret=q"),
        "a table hides the query: {created}"
    );
    assert!(
        created.contains("secret (shown only now): whsec_"),
        "{created}"
    );
    let made = json(
        &ok(
            &app,
            w,
            &[
                "webhooks",
                "create",
                "ns/cli",
                "--name",
                "rel",
                "--url",
                &receiver.url("/r"),
                "--expression",
                "release-.*",
                "--json",
            ],
        )
        .await,
    );
    let rel = made["id"].as_i64().unwrap().to_string();
    assert_eq!(made["trigger"]["expression"], "release-.*");
    let listed = ok(&app, w, &["webhooks", "list", "ns/cli"]).await;
    assert_eq!(
        listed.lines().count(),
        3,
        "a header and two webhooks: {listed}"
    );
    assert!(
        ok(&app, w, &["webhooks", "get", &rel])
            .await
            .contains("expression release-.*")
    );
    let disabled = json(
        &ok(
            &app,
            w,
            &[
                "webhooks",
                "update",
                &rel,
                "--disable",
                "--all-tags",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(
        (
            disabled["enabled"].as_bool(),
            disabled["trigger"]["type"].as_str()
        ),
        (Some(false), Some("all"))
    );
    let tested = ok(&app, w, &["webhooks", "test", &rel]).await;
    assert!(tested.starts_with("succeeded http_status=200"), "{tested}");
    receiver.next(5 * SECOND).await;

    // An event: deploy fires, rel is disabled (no record); then the records.
    app.publish_event(&event_for("ns", "cli", "latest")).await;
    receiver.next(5 * SECOND).await;
    app.next_status(10 * SECOND).await;
    let records = ok(&app, w, &["deliveries", "list", "ns/cli"]).await;
    assert!(
        records.contains("succeeded") && records.contains("latest") && records.contains("deploy"),
        "{records}"
    );
    let page = json(
        &ok(
            &app,
            w,
            &["deliveries", "list", "--webhook", &rel, "--json"],
        )
        .await,
    );
    let records = page["data"].as_array().unwrap();
    assert_eq!(
        records.len(),
        1,
        "disabled, it got no record of the event: {page}"
    );
    assert_eq!(records[0]["tag"], "test", "only its test record");
    let page = json(
        &ok(
            &app,
            w,
            &[
                "deliveries",
                "list",
                "ns/cli",
                "--status",
                "succeeded",
                "--tag",
                "latest",
                "--json",
            ],
        )
        .await,
    );
    let id = page["data"][0]["id"].as_str().unwrap().to_owned();
    let shown = ok(&app, w, &["deliveries", "get", &id]).await;
    assert!(
        shown.contains("request_body") && shown.contains("thanks"),
        "{shown}"
    );
    assert!(
        ok(&app, w, &["deliveries", "redeliver", &id])
            .await
            .contains("queued")
    );
    let again = receiver.next(5 * SECOND).await;
    assert_eq!(again.header("webhook-id"), id);
    let deploy = page["data"][0]["webhook_id"].to_string();
    let recovered = ok(
        &app,
        w,
        &[
            "deliveries",
            "recover",
            "--webhook",
            &deploy,
            "--since",
            "2026-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(
        recovered.contains("queued 0"),
        "nothing failed: {recovered}"
    );

    // What a script branches on: the exit status, with the server's problem on stderr.
    let missing = tagcast(&app, w, &["webhooks", "get", "999999"]).await;
    assert_eq!(missing.status.code(), Some(3));
    assert!(
        stderr(&missing).contains("no webhook has id 999999"),
        "{}",
        stderr(&missing)
    );
    let invalid = tagcast(
        &app,
        w,
        &[
            "webhooks", "create", "ns/cli", "--name", "bad name", "--url", "ftp://x", "--tags",
            "a b",
        ],
    )
    .await;
    assert_eq!(invalid.status.code(), Some(2));
    for field in ["name:", "url:", "trigger.tags[0]:"] {
        assert!(
            stderr(&invalid).contains(field),
            "{field} in {}",
            stderr(&invalid)
        );
    }
    let taken = tagcast(
        &app,
        w,
        &[
            "webhooks",
            "create",
            "ns/cli",
            "--name",
            "deploy",
            "--url",
            "http://127.0.0.1:9/",
        ],
    )
    .await;
    assert_eq!(taken.status.code(), Some(2), "409: {}", stderr(&taken));
    assert_eq!(
        tagcast(&app, Some("tgc_wrong"), &["webhooks", "list", "ns/cli"])
            .await
            .status
            .code(),
        Some(4)
    );
    assert_eq!(
        tagcast(&app, None, &["webhooks", "list", "ns/cli"])
            .await
            .status
            .code(),
        Some(4)
    );
    assert_eq!(
        tagcast(&app, w, &["webhooks", "list", "no-slash"])
            .await
            .status
            .code(),
        Some(2)
    );
    let unreachable = tokio::process::Command::new(TAGCAST)
        .args([
            "webhooks",
            "list",
            "ns/cli",
            "--api-url",
            "http://127.0.0.1:9",
        ])
        .env("TAGCAST_API_TOKEN", "tgc_x")
        .output()
        .await
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        stderr(&unreachable).contains("cannot reach the admin API"),
        "{}",
        stderr(&unreachable)
    );

    assert!(
        ok(&app, w, &["webhooks", "delete", &rel])
            .await
            .contains("deleted webhook")
    );
    assert_eq!(
        tagcast(&app, w, &["webhooks", "get", &rel])
            .await
            .status
            .code(),
        Some(3)
    );
    app.teardown().await;
}

/// A child process that does not outlive a failed test.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_api_answers_alone_and_consumes_nothing() {
    let mut app = TestApp::spawn().await;
    let token = app.token("ops", Scope::Read).await;
    app.stop().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = &app.settings;
    let mut child = Killed(
        Command::new(TAGCAST)
            .arg("serve-api")
            .env("TAGCAST_DATABASE_URL", s.database_url.expose())
            .env("TAGCAST_QUEUE_PREFIX", &s.queue_prefix)
            .env("TAGCAST_EVENTS_EXCHANGE", &s.events_exchange)
            .env("TAGCAST_STATUS_EXCHANGE", &s.status_exchange)
            .env("TAGCAST_API_ADDR", format!("127.0.0.1:{port}"))
            .env("TAGCAST_METRICS_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    eventually("serve-api up", 20 * SECOND, || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
    let listed = reqwest::Client::new()
        .get(format!("{base}/api/v1/repositories/ns/alone/webhooks"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    app.insert_webhook_for(
        "ns",
        "alone",
        "h",
        "http://127.0.0.1:9/",
        crate::support::app::Trigger::All,
        None,
    )
    .await;
    app.publish_event(&event_for("ns", "alone", "latest")).await;
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(
        app.queue_messages("events").await.len(),
        1,
        "the event waits: nothing consumed it"
    );

    // SIGTERM: it stops, exit 0.
    let _ = Command::new("kill").arg(child.0.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve-api did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    app.teardown().await;
}
