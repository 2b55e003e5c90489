//! Dependency faults that one test can cause without disturbing the others: tagcast's broker
//! connection is closed by the broker; its database refuses connections for a while.

use std::process::Command;
use std::time::Duration;

use crate::support::receiver::Receiver;
use crate::support::{
    PG_ADMIN, SECOND, ScratchDatabase, TestApp, Trigger, event, eventually, pg_connect,
};

async fn wait_ready(app: &TestApp, ready: bool, timeout: Duration) {
    let what = if ready {
        "/readyz ready"
    } else {
        "/readyz not ready"
    };
    eventually(what, timeout, || async {
        ((app.get("/readyz").await.0 == 200) == ready).then_some(())
    })
    .await;
}

fn close_broker_connection(prefix: &str) -> bool {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl");
    let list = String::from_utf8_lossy(&out.stdout);
    let mut closed = false;
    for line in list
        .lines()
        .filter(|l| l.contains(&format!("tagcast {prefix}")))
    {
        let pid = line.split_whitespace().next().unwrap();
        closed |= Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test closes it"])
            .status()
            .is_ok_and(|s| s.success());
    }
    closed
}

#[tokio::test]
async fn a_lost_broker_connection_is_reestablished() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    assert_eq!(app.next_status(10 * SECOND).await["status"], "succeeded");

    assert!(
        close_broker_connection(&app.settings.queue_prefix),
        "found tagcast's connection"
    );
    wait_ready(&app, false, 5 * SECOND).await;
    wait_ready(&app, true, 15 * SECOND).await;
    let second = event("latest");
    app.publish_event(&second).await;
    // The first event's status may come again (at-least-once) if its acknowledgement was lost
    // with the connection; look for the second's.
    let status = loop {
        let s = app.next_status(10 * SECOND).await;
        if s["event_id"] == second["event_id"] {
            break s;
        }
        assert_eq!(
            s["status"], "succeeded",
            "a repeat of the first event's final status"
        );
    };
    assert_eq!(status["status"], "succeeded");
    assert_eq!(receiver.count(), 2, "nothing sent twice");
    assert!(app.metric("tagcast_broker_connections_total").await >= 2.0);
    app.teardown().await;
}

#[tokio::test]
async fn work_waits_while_the_database_is_unreachable_and_resumes_after() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/"), Trigger::All)
        .await;
    let db = crate::support::database_name(&app.settings);
    let admin = pg_connect(PG_ADMIN).await;
    let cut = |allow: bool| {
        format!(
            "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS {allow};
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid();"
        )
    };
    admin.batch_execute(&cut(false)).await.unwrap();
    wait_ready(&app, false, 5 * SECOND).await;

    // Published during the outage: held, not dead-lettered, not requeued over and over.
    let e = event("latest");
    app.publish_event(&e).await;
    app.no_status_within(2 * SECOND).await;
    assert_eq!(receiver.count(), 0);

    admin.batch_execute(&cut(true)).await.unwrap();
    wait_ready(&app, true, 10 * SECOND).await;
    let status = app.next_status(15 * SECOND).await;
    assert_eq!(
        (status["status"].as_str(), status["event_id"].as_str()),
        (Some("succeeded"), e["event_id"].as_str())
    );
    assert!(
        app.queue_messages("events.dead").await.is_empty(),
        "nothing was dead-lettered"
    );
    assert_eq!(
        app.metric(r#"tagcast_messages_redelivered_total{stage="events"}"#)
            .await,
        0.0,
        "held, not requeued"
    );
    assert!(app.metric("tagcast_database_retries_total").await >= 1.0);
    app.teardown().await;
}

/// The sweeper reads deliveries in the order they fall due: a retry whose job went missing is
/// re-queued, one whose next attempt is an hour away is left alone (and not even touched).
#[tokio::test]
async fn a_lost_retry_is_requeued_and_one_still_waiting_is_left_alone() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    let webhook = app
        .insert_webhook("a", &receiver.url("/"), Trigger::All)
        .await;
    let insert = async |id: uuid::Uuid, event: &'static str, due_in_seconds: f64| {
        app.pg.execute(
            "INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status, attempts, request_body, occurred_at, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, 'namespace', 'repoTest', 'latest', 'sha256:ab', 'retrying', 1, '{}', now(), now() + make_interval(secs => $4), now() - interval '2 hours', now() - interval '2 minutes')",
            &[&id, &event, &webhook, &due_in_seconds],
        )
        .await
    };
    let (lost, waiting) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    insert(lost, "lost-retry", -120.0).await.unwrap();
    insert(waiting, "waiting-retry", 3600.0).await.unwrap();
    let request = receiver.next(30 * SECOND).await;
    assert_eq!(request.header("webhook-id"), lost.to_string());
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (status["delivery_id"].as_str(), status["attempt"].as_i64()),
        (Some(lost.to_string().as_str()), Some(2))
    );
    let r = app
        .pg
        .query_one(
            "SELECT attempts, updated_at > now() - interval '1 minute' FROM deliveries WHERE id = $1",
            &[&waiting],
        )
        .await
        .unwrap();
    let (attempts, touched): (i32, bool) = (r.get(0), r.get(1));
    assert_eq!(
        (attempts, touched),
        (1, false),
        "the waiting retry is not swept"
    );
    assert_eq!(
        app.metric("tagcast_deliveries_requeued_by_sweeper_total")
            .await,
        1.0
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_delivery_whose_job_was_lost_is_requeued_by_the_sweeper() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    let webhook = app
        .insert_webhook("a", &receiver.url("/"), Trigger::All)
        .await;
    // A delivery recorded two minutes ago whose job never reached (or left) the broker.
    let id = uuid::Uuid::new_v4();
    app.pg.execute(
        "INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status, request_body, occurred_at, created_at, updated_at)
         VALUES ($1, 'lost-job', $2, 'namespace', 'repoTest', 'latest', 'sha256:ab', 'pending', '{}', now(), now() - interval '2 minutes', now() - interval '2 minutes')",
        &[&id, &webhook],
    )
    .await
    .unwrap();
    let request = receiver.next(30 * SECOND).await;
    assert_eq!(request.header("webhook-id"), id.to_string());
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (status["delivery_id"].as_str(), status["status"].as_str()),
        (Some(id.to_string().as_str()), Some("succeeded"))
    );
    assert_eq!(
        app.metric("tagcast_deliveries_requeued_by_sweeper_total")
            .await,
        1.0
    );
    app.teardown().await;
}

/// Replicas starting together apply each migration once, and a database that sqlx migrated
/// before tagcast ran its own migrations is taken over as it is.
#[tokio::test]
async fn migrations_apply_once_and_take_over_a_database_migrated_by_sqlx() {
    let db = ScratchDatabase::create().await;
    let url: tagcast::redact::SecretUrl = db.url.parse().unwrap();
    let pool = tagcast::store::connect(&url, 4).unwrap();
    let together = (0..4).map(|_| tagcast::store::migrate(&pool));
    for applied in futures_util::future::join_all(together).await {
        applied.unwrap();
    }
    let client = pool.get().await.unwrap();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        count("SELECT count(*) FROM tagcast_migrations").await,
        files
    );

    // As sqlx left it: its own list, and no list of tagcast's.
    client
        .batch_execute(
            "CREATE TABLE _sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL,
                 installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL);
             INSERT INTO _sqlx_migrations (version, description, installed_on, success)
                 SELECT version, description, '2001-01-01', true FROM tagcast_migrations;
             DROP TABLE tagcast_migrations;",
        )
        .await
        .unwrap();
    tagcast::store::migrate(&pool).await.unwrap();
    assert_eq!(
        count("SELECT count(*) FROM tagcast_migrations").await,
        files
    );
    // Every one is listed as sqlx applied it; one applied again would be listed now, with its
    // checksum.
    assert_eq!(
        count(
            "SELECT count(*) FROM tagcast_migrations
              WHERE applied_at = '2001-01-01' AND checksum IS NULL"
        )
        .await,
        files,
        "nothing applied twice"
    );

    // An applied migration that was edited is refused, not skipped.
    client
        .batch_execute("UPDATE tagcast_migrations SET checksum = '\\x00' WHERE version = (SELECT min(version) FROM tagcast_migrations)")
        .await
        .unwrap();
    let refused = tagcast::store::migrate(&pool).await.unwrap_err();
    assert!(
        refused.to_string().contains("changed after it was applied"),
        "{refused}"
    );
    drop(client);
    tagcast::store::close(&pool);
}
