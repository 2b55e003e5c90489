//! What SREs rely on: the live `/metrics` passes `promtool check metrics`, every metric the
//! Grafana dashboard queries exists, and JSON logs are one object per line.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::support::receiver::{Receiver, Reply};
use crate::support::{SECOND, ScratchDatabase, TestApp, Trigger, event, eventually};

/// Drives every kind of series into existence: success, retry, failure, not triggered,
/// an invalid event, an ignored one.
async fn busy_app() -> TestApp {
    let mut app = TestApp::spawn().await;
    let ok = Receiver::always(200).await;
    let flaky = Receiver::scripted(|n| Reply::status(if n == 0 { 503 } else { 400 })).await;
    app.insert_webhook("ok", &ok.url("/"), Trigger::All).await;
    app.insert_webhook("flaky", &flaky.url("/"), Trigger::All)
        .await;
    app.insert_webhook("never", &ok.url("/never"), Trigger::Tags(&["v0"]))
        .await;
    app.publish_raw(b"not json").await;
    let mut ignored = event("latest");
    ignored["type"] = "build.started".into();
    app.publish_event(&ignored).await;
    app.publish_event(&event("latest")).await;
    // succeeded, not_triggered, retrying, failed
    app.statuses(4, 15 * SECOND).await;
    app.wait_metric(
        r#"tagcast_events_received_total{result="invalid"}"#,
        1.0,
        5 * SECOND,
    )
    .await;
    app
}

fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("promtool is missing: .ci/run installs Debian's prometheus package");
    }
    found.then_some("promtool")
}

#[tokio::test]
async fn live_metrics_pass_promtool() {
    let app = busy_app().await;
    let text = app.metrics_text().await;
    let Some(promtool) = promtool() else {
        eprintln!("SKIPPED: promtool not installed (apt-get install prometheus)");
        app.teardown().await;
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}\n---\n{text}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_exists() {
    let app = busy_app().await;
    // Queue depths are read every 5 s; wait for the first reading.
    let text = eventually("a first reading of queue depths", 6 * SECOND, || async {
        let text = app.metrics_text().await;
        text.contains("tagcast_queue_messages{").then_some(text)
    })
    .await;
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/tagcast.json"
    ))
    .unwrap();
    let names = regex::Regex::new(r"\b(?:tagcast|process)_[a-z_]+\b").unwrap();
    let mut queried: Vec<&str> = names.find_iter(&dashboard).map(|m| m.as_str()).collect();
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 12, "the dashboard queries {queried:?}");
    let exposed: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let missing: Vec<&&str> = queried
        .iter()
        .filter(|name| !exposed.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "queried by the dashboard but absent from /metrics: {missing:?}"
    );

    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yml"
    ))
    .unwrap();
    let missing: Vec<&str> = names
        .find_iter(&rules)
        .map(|m| m.as_str())
        .filter(|name| !exposed.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "used by the alert rules but absent from /metrics: {missing:?}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_stable_fields() {
    let db = ScratchDatabase::create().await;
    let out = Command::new(env!("CARGO_BIN_EXE_tagcast"))
        .arg("migrate")
        .env("TAGCAST_LOG_FORMAT", "json")
        .env("TAGCAST_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        for field in ["timestamp", "level", "message", "target"] {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
    }
    assert!(lines.iter().any(|l| l["message"] == "migrations applied"));
}

#[test]
fn a_bad_setting_stops_tagcast_naming_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_tagcast"))
        .arg("run")
        .env("TAGCAST_HTTP_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TAGCAST_HTTP_TIMEOUT"));
}
