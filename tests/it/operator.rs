//! What a person running tagcast sees and does: the log lines of a delivery that succeeds, one
//! that is retried and fails, and a clean stop; the exit status and message of each
//! configuration error; replaying dead-lettered events; deleting a prefix's queues. tagcast
//! runs as its binary here, with its default log filter.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use tagcast::Settings;

use crate::support::receiver::Receiver;
use crate::support::{
    AMQP, Env, SECOND, ScratchDatabase, TestApp, Trigger, Worker, event, eventually,
};

const TAGCAST: &str = env!("CARGO_BIN_EXE_tagcast");

/// A tagcast command on a test app's database, prefix and exchanges, logging JSON.
fn tagcast(settings: &Settings) -> Command {
    let mut cmd = Command::new(TAGCAST);
    cmd.env("TAGCAST_AMQP_URL", settings.amqp_url.get(0).expose())
        .env("TAGCAST_DATABASE_URL", settings.database_url.expose())
        .env("TAGCAST_QUEUE_PREFIX", &settings.queue_prefix)
        .env("TAGCAST_EVENTS_EXCHANGE", &settings.events_exchange)
        .env("TAGCAST_STATUS_EXCHANGE", &settings.status_exchange)
        .env("TAGCAST_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A URL on loopback where nothing listens.
fn refusing_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    format!("http://127.0.0.1:{port}/hook?token=s3cret")
}

/// The JSON log lines of a running child, as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<Value>>>);

impl Lines {
    fn follow(worker: &mut Worker) -> Lines {
        let lines = Lines::default();
        let stderr = worker.child.stderr.take().expect("stderr is piped");
        let sink = lines.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        lines
    }

    fn all(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }

    fn with_message(&self, message: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    fn position(&self, message: &str) -> Option<usize> {
        self.all().iter().position(|l| l["message"] == message)
    }
}

#[tokio::test]
async fn a_delivery_a_retry_a_failure_and_a_clean_stop_are_each_one_clear_line() {
    let env = Env::create("ops").await;
    let ok = Receiver::always(200).await;
    let refusing = refusing_url();
    for (name, url) in [("ok", ok.url("/hook")), ("gone", refusing.clone())] {
        env.client()
            .await
            .execute(
                "INSERT INTO webhooks (namespace, repository, name, url) VALUES ('namespace', 'repoTest', $1, $2)",
                &[&name, &url],
            )
            .await
            .unwrap();
    }
    let mut cmd = env.command(TAGCAST);
    cmd.env_remove("RUST_LOG")
        .env("TAGCAST_RETRY_MAX_ATTEMPTS", "2")
        .stderr(Stdio::piped());
    let mut worker = Worker {
        child: cmd.spawn().unwrap(),
    };
    let lines = Lines::follow(&mut worker);
    assert!(env.ready(20 * SECOND).await, "tagcast did not get ready");

    let published = Command::new(TAGCAST)
        .args(["publish", "--event-id", "ev-ops-1"])
        .env("TAGCAST_EVENTS_EXCHANGE", env.events_exchange())
        .env("TAGCAST_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(published.status.success(), "{}", text(&published));
    let invalid = Command::new(TAGCAST)
        .args(["publish", "--event-id", "ev-ops-bad", "--tag", "not a tag"])
        .env("TAGCAST_EVENTS_EXCHANGE", env.events_exchange())
        .env("TAGCAST_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(invalid.status.success(), "{}", text(&invalid));
    eventually(
        "the failed and dead-lettered lines",
        20 * SECOND,
        || async {
            let seen = |m| !lines.with_message(m).is_empty();
            (seen("failed") && seen("dead-lettered")).then_some(())
        },
    )
    .await;
    let status = worker.terminate(20 * SECOND).unwrap_or_else(|| {
        let all = lines.all();
        let last = &all[all.len().saturating_sub(8)..];
        panic!("tagcast did not stop within 20 s of SIGTERM; its last lines: {last:#?}")
    });
    assert!(status.success(), "{status:?}");

    let connected = lines
        .position("connected to RabbitMQ")
        .expect("connected line");
    let started = lines.position("tagcast started").expect("started line");
    assert!(connected < started, "started is logged once it is true");

    let delivered = lines.with_message("delivered");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let d = &delivered[0];
    assert_eq!(
        (
            &d["event_id"],
            &d["webhook"],
            &d["attempt"],
            &d["http_status"]
        ),
        (
            &Value::from("ev-ops-1"),
            &Value::from("ok"),
            &Value::from(1),
            &Value::from(200)
        )
    );
    assert!(
        d["delivery_id"].as_str().is_some_and(|id| id.len() == 36),
        "{d}"
    );
    assert_eq!(d["url"], Value::from(ok.url("/hook")));

    let retry = lines.with_message("retry scheduled");
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert_eq!(retry[0]["webhook"], "gone");
    assert_eq!(retry[0]["reason"], "connect: connection refused");
    assert!(retry[0]["retry_in"].as_str().is_some(), "{}", retry[0]);
    assert!(
        !retry[0]["url"].as_str().unwrap().contains("s3cret"),
        "the URL is redacted: {}",
        retry[0]
    );
    let failed = lines.with_message("failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (
            &failed[0]["webhook"],
            &failed[0]["attempt"],
            &failed[0]["reason"]
        ),
        (
            &Value::from("gone"),
            &Value::from(2),
            &Value::from("connect: connection refused")
        )
    );

    // The invalid event is one warning, which names it.
    let refused = lines.with_message("dead-lettered");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["level"], "WARN");
    assert_eq!(
        refused[0]["span"]["event_id"], "ev-ops-bad",
        "{}",
        refused[0]
    );
    assert!(
        refused[0]["error"].as_str().unwrap().contains("image.tag"),
        "{}",
        refused[0]
    );
    // Nothing else alarming on the way: no other warning, no error, no dependency's chatter.
    for line in lines.all() {
        let target = line["target"].as_str().unwrap_or_default();
        assert!(
            (line["level"] == "INFO" || line["message"] == "dead-lettered")
                && target.starts_with("tagcast"),
            "{line}"
        );
    }

    let details: Vec<(String, Option<String>)> = env
        .client()
        .await
        .query(
            "SELECT a.error, a.error_detail FROM delivery_attempts a
               JOIN deliveries d ON d.id = a.delivery_id JOIN webhooks w ON w.id = d.webhook_id
              WHERE w.name = 'gone' ORDER BY a.attempt",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let refused = ("connect".to_owned(), Some("connection refused".to_owned()));
    assert_eq!(details, vec![refused.clone(), refused]);
    env.destroy().await;
}

/// Runs `tagcast run` until it exits by itself (at most a minute).
fn run_until_exit(mut cmd: Command) -> Output {
    let mut child = cmd
        .arg("run")
        .env("TAGCAST_METRICS_ADDR", "127.0.0.1:0")
        .env("TAGCAST_API_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What it writes (a few lines) fits in the pipes meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn a_setting_that_cannot_work_ends_tagcast_at_start_naming_it() {
    let db = ScratchDatabase::create().await;
    let prefix = format!("cfg{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let cases = [
        (
            "postgres://postgres@127.0.0.1:5432/tagcast_does_not_exist".to_owned(),
            AMQP.to_owned(),
            "TAGCAST_DATABASE_URL: PostgreSQL has no such database",
        ),
        (
            db.url.replace("postgres@", "no_such_role@"),
            AMQP.to_owned(),
            "TAGCAST_DATABASE_URL: PostgreSQL refused the login",
        ),
        (
            db.url.clone(),
            AMQP.replace("guest:guest", "guest:wrong"),
            "TAGCAST_AMQP_URL: RabbitMQ refused the login",
        ),
        (
            db.url.clone(),
            AMQP.replace("%2f", "no_such_vhost"),
            "TAGCAST_AMQP_URL: RabbitMQ will not open the vhost",
        ),
    ];
    // All at once: each waits out the start-up grace.
    let runs: Vec<_> = cases
        .iter()
        .map(|(database, amqp, _)| {
            let mut cmd = Command::new(TAGCAST);
            cmd.env("TAGCAST_DATABASE_URL", database)
                .env("TAGCAST_AMQP_URL", amqp)
                .env("TAGCAST_QUEUE_PREFIX", &prefix)
                .env("TAGCAST_EVENTS_EXCHANGE", format!("{prefix}.events"))
                .env("TAGCAST_STATUS_EXCHANGE", format!("{prefix}.status"))
                .env("TAGCAST_LOG_FORMAT", "json")
                .env_remove("RUST_LOG");
            std::thread::spawn(move || run_until_exit(cmd))
        })
        .collect();
    for ((_, _, expected), run) in cases.iter().zip(runs) {
        let out = run.join().unwrap();
        assert_eq!(out.status.code(), Some(78), "{expected}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
        assert_eq!(last["level"], "ERROR", "{last}");
        assert!(
            last["message"].as_str().unwrap().starts_with(expected),
            "{expected}: {last}"
        );
        assert!(!stderr.contains("guest:wrong"), "a password was logged");
    }
}

/// A SIGTERM while tagcast is still starting (here: waiting for a PostgreSQL that is not there)
/// stops it cleanly, with exit status 0, rather than killing it.
#[test]
fn a_sigterm_while_starting_stops_tagcast_cleanly() {
    for command in ["run", "serve-api"] {
        let mut child = Command::new(TAGCAST)
            .arg(command)
            .env(
                "TAGCAST_DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/none",
            )
            .env("TAGCAST_METRICS_ADDR", "127.0.0.1:0")
            .env("TAGCAST_API_ADDR", "127.0.0.1:0")
            .env("TAGCAST_LOG_FORMAT", "json")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let waiting = lines
            .by_ref()
            .map(Result::unwrap)
            .find(|line| line.contains("waiting for PostgreSQL"));
        assert!(waiting.is_some(), "{command}: never waited for PostgreSQL");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest: Vec<String> = lines.map(Result::unwrap).collect();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{command}: {status:?}, then {rest:?}"
        );
        assert!(
            rest.iter().any(|l| l.contains("stopped while starting")),
            "{command}: {rest:?}"
        );
    }
}

/// The dead-lettered messages of a test app, as `tagcast dead-letters list --json` shows them.
fn dead_letters(settings: &Settings) -> Vec<Value> {
    let out = tagcast(settings)
        .args(["dead-letters", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_dead_lettered_event_is_replayed_once_what_failed_it_is_fixed() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("hook", &receiver.url("/hook"), Trigger::All)
        .await;
    // The database breaks in a way waiting does not cure: every try of the event fails, until
    // the queue's delivery limit dead-letters it.
    app.pg
        .batch_execute("ALTER TABLE deliveries RENAME TO deliveries_away")
        .await
        .unwrap();
    let sent = event("v1");
    app.publish_event(&sent).await;
    let letters = eventually("the event dead-lettered", 30 * SECOND, || async {
        let letters = dead_letters(&app.settings);
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event_id"], sent["event_id"]);
    assert_eq!(letters[0]["reason"], "delivery_limit");
    assert_eq!(receiver.count(), 0);

    app.pg
        .batch_execute("ALTER TABLE deliveries_away RENAME TO deliveries")
        .await
        .unwrap();
    let out = tagcast(&app.settings)
        .args(["dead-letters", "replay"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("replayed 1 message(s)"),
        "{}",
        text(&out)
    );
    let got = receiver.next(10 * SECOND).await;
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["push_data"]["tag"], "v1");
    assert_eq!(app.next_status(10 * SECOND).await["status"], "succeeded");
    assert!(dead_letters(&app.settings).is_empty());
    app.teardown().await;
}

/// Whether the queue exists (a passive declare on its own channel).
async fn queue_exists(name: &str) -> bool {
    let amqp = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    let exists = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = amqp.close(200, "asked".into()).await;
    exists
}

#[tokio::test]
async fn topology_delete_removes_a_prefix_only_when_unused_and_confirmed() {
    let mut app = TestApp::spawn().await;
    let prefix = app.settings.queue_prefix.clone();
    let events = format!("{prefix}.events");
    let settings = app.settings.clone();
    let delete = |yes: bool| {
        let mut cmd = tagcast(&settings);
        cmd.args(["topology", "delete", "--prefix", &prefix]);
        if yes {
            cmd.arg("--yes");
        }
        cmd.output().unwrap()
    };

    let out = delete(true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("has a consumer"), "{}", text(&out));
    assert!(queue_exists(&events).await);

    app.stop().await;
    let out = delete(false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pass --yes"), "{}", text(&out));
    assert!(
        queue_exists(&events).await,
        "not deleted without confirmation"
    );

    let out = delete(true);
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 18, "{listed}");
    assert!(
        listed.contains(&format!("deleted {events} (0 message(s))")),
        "{listed}"
    );
    let topology = tagcast::amqp::Topology {
        prefix: prefix.clone(),
        events_exchange: app.settings.events_exchange.clone(),
        status_exchange: app.settings.status_exchange.clone(),
        quorum_group_size: None,
    };
    for queue in topology.queues() {
        assert!(!queue_exists(&queue).await, "{queue} is still there");
    }
    app.teardown().await;
}
