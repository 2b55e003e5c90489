//! The core pipeline end to end: events in, webhooks out, records, status events, metrics.

use std::time::Duration;

use crate::support::receiver::{Receiver, Reply};
use crate::support::{SECOND, TestApp, Trigger, event, eventually, pg_connect};
use serde_json::Value;
use uuid::Uuid;

const CONTRACT_BODY: &str = concat!(
    r#"{"push_data":{"digest":"sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917","#,
    r#""pushed_at":"2016-11-29 12:25:46","tag":"latest"},"#,
    r#""repository":{"date_created":"2016-10-28 21:31:42","name":"repoTest","namespace":"namespace","#,
    r#""region":"cn-hangzhou","repo_authentication_type":"NO_CERTIFIED","repo_full_name":"namespace/repoTest","#,
    r#""repo_origin_type":"NO_CERTIFIED","repo_type":"PUBLIC"}}"#
);

fn by_webhook(statuses: &[Value], webhook_id: i64) -> &Value {
    statuses
        .iter()
        .find(|s| s["webhook_id"] == webhook_id)
        .unwrap_or_else(|| panic!("no status for webhook {webhook_id}: {statuses:?}"))
}

#[tokio::test]
async fn each_trigger_type_fires_or_records_not_triggered() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    let all = app
        .insert_webhook("all", &receiver.url("/all"), Trigger::All)
        .await;
    let expr = app
        .insert_webhook(
            "expr",
            &receiver.url("/expr"),
            Trigger::Expression("release-v.*"),
        )
        .await;
    let tags = app
        .insert_webhook(
            "tags",
            &receiver.url("/tags"),
            Trigger::Tags(&["latest", "v1"]),
        )
        .await;

    // release-v1.2: all and the expression fire, the tag list does not.
    app.publish_event(&event("release-v1.2")).await;
    let statuses = app.statuses(3, 10 * SECOND).await;
    assert_eq!(by_webhook(&statuses, all)["status"], "succeeded");
    assert_eq!(by_webhook(&statuses, expr)["status"], "succeeded");
    let not_triggered = by_webhook(&statuses, tags);
    assert_eq!(not_triggered["status"], "not_triggered");
    assert_eq!(not_triggered["attempt"], 0);
    assert!(not_triggered["http_status"].is_null() && not_triggered["duration_ms"].is_null());

    // latest: all and the tag list fire; the expression does not (whole-tag match).
    app.publish_event(&event("latest")).await;
    let statuses = app.statuses(3, 10 * SECOND).await;
    assert_eq!(by_webhook(&statuses, all)["status"], "succeeded");
    assert_eq!(by_webhook(&statuses, expr)["status"], "not_triggered");
    assert_eq!(by_webhook(&statuses, tags)["status"], "succeeded");

    // prerelease-v1 and Release-v1: only `all`.
    for tag in ["prerelease-v1", "Release-v1"] {
        app.publish_event(&event(tag)).await;
        let statuses = app.statuses(3, 10 * SECOND).await;
        assert_eq!(by_webhook(&statuses, all)["status"], "succeeded", "{tag}");
        assert_eq!(
            by_webhook(&statuses, expr)["status"],
            "not_triggered",
            "{tag}"
        );
        assert_eq!(
            by_webhook(&statuses, tags)["status"],
            "not_triggered",
            "{tag}"
        );
    }

    let mut paths: Vec<String> = Vec::new();
    for _ in 0..6 {
        paths.push(receiver.next(SECOND).await.path_and_query);
    }
    paths.sort();
    assert_eq!(
        paths,
        ["/all", "/all", "/all", "/all", "/expr", "/tags"].map(String::from)
    );
    let counts: Vec<(String, i64)> = app
        .pg
        .query(
            "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        counts,
        vec![("not_triggered".into(), 6), ("succeeded".into(), 6)]
    );
    let evaluations = app.metrics_text().await;
    assert!(
        evaluations.contains(
            r#"tagcast_trigger_evaluations_total{result="not_triggered",trigger="expression"} 3"#
        ),
        "{evaluations}"
    );
    assert!(
        evaluations
            .contains(r#"tagcast_trigger_evaluations_total{result="triggered",trigger="all"} 4"#)
    );
    app.teardown().await;
}

#[tokio::test]
async fn the_notification_is_exact_and_recorded() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let url = receiver.url("/hook?secret=s3cr3t&x=1");
    let webhook = app
        .insert_webhook_for(
            "namespace",
            "repoTest",
            "deploy",
            &url,
            Trigger::All,
            Some(secret),
        )
        .await;
    let e = event("latest");
    app.publish_event(&e).await;

    let request = receiver.next(10 * SECOND).await;
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.path_and_query, "/hook?secret=s3cr3t&x=1",
        "the query string is kept as is"
    );
    assert_eq!(
        std::str::from_utf8(&request.body).unwrap(),
        CONTRACT_BODY,
        "body byte for byte"
    );
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(
        request.header("user-agent"),
        format!("tagcast/{}", env!("CARGO_PKG_VERSION"))
    );
    let timestamp: i64 = request.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 30);
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, request.header(name).parse().unwrap());
    }
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &headers)
        .expect("signature verifies");

    let status = app.next_status(10 * SECOND).await;
    let webhook_id = Uuid::parse_str(request.header("webhook-id")).expect("webhook-id is a UUID");
    assert_eq!(status["delivery_id"], webhook_id.to_string());
    assert_eq!(status["event_id"], e["event_id"]);
    assert_eq!(
        (
            status["webhook_id"].as_i64(),
            status["webhook_name"].as_str()
        ),
        (Some(webhook), Some("deploy"))
    );
    assert_eq!(
        (
            status["namespace"].as_str(),
            status["repository"].as_str(),
            status["tag"].as_str()
        ),
        (Some("namespace"), Some("repoTest"), Some("latest"))
    );
    assert_eq!(status["digest"], e["image"]["digest"]);
    assert_eq!(
        (
            status["status"].as_str(),
            status["attempt"].as_i64(),
            status["http_status"].as_i64()
        ),
        (Some("succeeded"), Some(1), Some(200))
    );
    assert!(
        status["duration_ms"].is_i64()
            && status["error"].is_null()
            && status["next_attempt_at"].is_null()
    );
    assert!(status["at"].as_str().unwrap().ends_with('Z'));

    type Row = (
        Uuid,
        String,
        i64,
        String,
        String,
        String,
        String,
        String,
        i32,
        Option<i32>,
        Option<String>,
        Option<String>,
    );
    let r = app.pg.query_one(
        "SELECT id, event_id, webhook_id, namespace, repository, tag, digest, status, attempts, http_status, error, request_body FROM deliveries",
        &[],
    )
    .await
    .unwrap();
    let row: Row = (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
        r.get(10),
        r.get(11),
    );
    assert_eq!(row.0, webhook_id);
    assert_eq!(
        (row.1.as_str(), row.2),
        (e["event_id"].as_str().unwrap(), webhook)
    );
    assert_eq!(
        (row.3.as_str(), row.4.as_str(), row.5.as_str()),
        ("namespace", "repoTest", "latest")
    );
    assert_eq!(
        (row.7.as_str(), row.8, row.9, row.10.as_deref()),
        ("succeeded", 1, Some(200), None)
    );
    assert_eq!(
        row.11.as_deref(),
        Some(CONTRACT_BODY),
        "request_body is exactly what was sent"
    );
    let r = app.pg.query_one("SELECT attempt, duration_ms, http_status, error, response_body FROM delivery_attempts WHERE delivery_id = $1", &[&webhook_id]).await.unwrap();
    let attempt: (i32, i32, Option<i32>, Option<String>, Option<String>) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    assert_eq!(
        (attempt.0, attempt.2, attempt.3, attempt.4.as_deref()),
        (1, Some(200), None, Some("thanks"))
    );
    let watched: bool = app.scalar("SELECT watched FROM deliveries").await;
    assert!(!watched, "a final delivery is out of the sweeper's index");
    app.teardown().await;
}

#[tokio::test]
async fn an_event_delivered_twice_is_recorded_and_sent_once() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/a"), Trigger::All)
        .await;
    app.insert_webhook("b", &receiver.url("/b"), Trigger::Tags(&["other"]))
        .await;
    let e = event("latest");
    app.publish_event(&e).await;
    let first = app.statuses(2, 10 * SECOND).await;
    app.publish_event(&e).await;
    // Status events are at-least-once: the repeat publishes each final status again.
    let again = app.statuses(2, 10 * SECOND).await;
    let ids = |s: &[Value]| {
        let mut v: Vec<String> = s
            .iter()
            .map(|x| format!("{}:{}", x["delivery_id"], x["status"]))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&first), ids(&again), "same deliveries, same statuses");
    assert_eq!(receiver.count(), 1, "nothing that succeeded is sent again");
    let rows: i64 = app.scalar("SELECT count(*) FROM deliveries").await;
    assert_eq!(rows, 2);
    let attempts: i64 = app.scalar("SELECT count(*) FROM delivery_attempts").await;
    assert_eq!(attempts, 1);
    app.teardown().await;
}

/// Two copies of one event in one batch of decisions (a publisher that sent it twice): the first
/// sends, the second only finishes from the record.
#[tokio::test]
async fn the_same_event_twice_in_one_batch_is_sent_once() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/a"), Trigger::All)
        .await;
    app.insert_webhook("b", &receiver.url("/b"), Trigger::Tags(&["other"]))
        .await;
    // A lock on the webhooks holds up the batch of another event (its foreign-key checks wait),
    // so both copies queue up behind it and make the next batch together.
    let lock = pg_connect(app.settings.database_url.expose()).await;
    lock.batch_execute("BEGIN; SELECT id FROM webhooks FOR UPDATE")
        .await
        .unwrap();
    let mut other = event("latest");
    other["event_id"] = "another-event".into();
    app.publish_event(&other).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = event("latest");
    app.publish_event(&e).await;
    app.publish_event(&e).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.batch_execute("ROLLBACK").await.unwrap();
    // Each copy publishes both statuses (the second copy's `succeeded` may wait for the first
    // copy's claim on the attempt), after the other event's two.
    let statuses: Vec<Value> = app
        .statuses(6, 30 * SECOND)
        .await
        .into_iter()
        .filter(|s| s["event_id"] != "another-event")
        .collect();
    let mut seen: Vec<String> = statuses
        .iter()
        .map(|x| x["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["not_triggered", "not_triggered", "succeeded", "succeeded"]
    );
    assert_eq!(receiver.count(), 2, "sent once, beside the other event");
    let r = app
        .pg
        .query_one(
            "SELECT (SELECT count(*) FROM deliveries), (SELECT count(*) FROM delivery_attempts)",
            &[],
        )
        .await
        .unwrap();
    let (rows, attempts): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!((rows, attempts), (4, 2));
    assert_eq!(
        app.metric("tagcast_database_retries_total").await,
        0.0,
        "a duplicate is not mistaken for an outage"
    );
    app.teardown().await;
}

#[tokio::test]
async fn invalid_events_are_dead_lettered_and_the_next_valid_one_is_delivered() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/a"), Trigger::All)
        .await;
    let mut missing_tag = event("latest");
    missing_tag["image"].as_object_mut().unwrap().remove("tag");
    let mut bad_tag = event("latest");
    bad_tag["image"]["tag"] = "-bad".into();
    app.publish_raw(b"{ not json").await;
    app.publish_event(&missing_tag).await;
    app.publish_event(&bad_tag).await;
    app.publish_raw(&vec![b' '; 70 * 1024]).await;
    let mut other = event("latest");
    other["type"] = "build.started".into();
    app.publish_event(&other).await;
    app.publish_event(&event("latest")).await;

    let status = app.next_status(10 * SECOND).await;
    assert_eq!(status["status"], "succeeded");
    assert_eq!(receiver.count(), 1);
    app.wait_metric(
        r#"tagcast_events_received_total{result="invalid"}"#,
        4.0,
        5 * SECOND,
    )
    .await;
    assert_eq!(
        app.metric(r#"tagcast_events_received_total{result="ignored"}"#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric(r#"tagcast_events_received_total{result="accepted"}"#)
            .await,
        1.0
    );
    let dead = app.queue_messages("events.dead").await;
    assert_eq!(
        dead.len(),
        4,
        "the four invalid messages wait in the dead-letter queue"
    );
    assert_eq!(dead[0], b"{ not json");
    app.teardown().await;
}

#[tokio::test]
async fn an_unusable_rule_gets_a_failed_record_naming_the_problem() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    let bad = app
        .insert_webhook(
            "bad",
            &receiver.url("/bad"),
            Trigger::Expression("release-(v"),
        )
        .await;
    let good = app
        .insert_webhook("good", &receiver.url("/good"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    let statuses = app.statuses(2, 10 * SECOND).await;
    let failed = by_webhook(&statuses, bad);
    assert_eq!(
        (failed["status"].as_str(), failed["attempt"].as_i64()),
        (Some("failed"), Some(0))
    );
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("trigger_expression does not compile"),
        "{failed}"
    );
    assert_eq!(by_webhook(&statuses, good)["status"], "succeeded");
    assert_eq!(receiver.next(SECOND).await.path_and_query, "/good");
    assert_eq!(receiver.count(), 1, "no request for the bad row");
    let error: Option<String> = app
        .pg
        .query_one(
            "SELECT error FROM deliveries WHERE webhook_id = $1",
            &[&bad],
        )
        .await
        .unwrap()
        .get(0);
    assert!(error.unwrap().contains("does not compile"));
    assert_eq!(
        app.metric(r#"tagcast_deliveries_completed_total{status="failed"}"#)
            .await,
        1.0
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_webhook_inserted_while_running_is_used_a_second_later() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    // Prime the cache with "no webhooks" for the repository.
    app.publish_event(&event("latest")).await;
    app.wait_metric(
        r#"tagcast_events_received_total{result="accepted"}"#,
        1.0,
        5 * SECOND,
    )
    .await;
    app.no_status_within(Duration::from_millis(200)).await;

    let id = app
        .insert_webhook("late", &receiver.url("/late"), Trigger::All)
        .await;
    tokio::time::sleep(SECOND).await;
    app.publish_event(&event("latest")).await;
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (status["webhook_id"].as_i64(), status["status"].as_str()),
        (Some(id), Some("succeeded"))
    );

    // And a change of rule too.
    app.pg
        .execute(
            "UPDATE webhooks SET trigger_type = 'tags', trigger_tags = '{v2}' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    tokio::time::sleep(SECOND).await;
    app.publish_event(&event("latest")).await;
    assert_eq!(
        app.next_status(10 * SECOND).await["status"],
        "not_triggered"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_hanging_webhook_does_not_delay_another() {
    let mut app = TestApp::spawn().await;
    let hanging = Receiver::scripted(|_| Reply::status(200).after(Duration::from_secs(60))).await;
    let fast = Receiver::always(200).await;
    app.insert_webhook("hanging", &hanging.url("/"), Trigger::All)
        .await;
    let fast_id = app
        .insert_webhook("fast", &fast.url("/"), Trigger::All)
        .await;
    for _ in 0..20 {
        app.publish_event(&event("latest")).await;
    }
    // All twenty succeed at the fast receiver before the first hanging request times out (the
    // HTTP timeout is 2 s in tests), which would show up as a `retrying` status event.
    let statuses = app.statuses(20, 10 * SECOND).await;
    assert!(
        statuses
            .iter()
            .all(|s| s["webhook_id"] == fast_id && s["status"] == "succeeded"),
        "{statuses:?}"
    );
    assert_eq!(fast.count(), 20);
    for _ in 0..20 {
        hanging.next(SECOND).await; // the hanging receiver holds all twenty at once
    }
    let timed_out = app.next_status(10 * SECOND).await;
    assert_eq!(
        (timed_out["status"].as_str(), timed_out["error"].as_str()),
        (Some("retrying"), Some("timeout"))
    );
    app.teardown().await;
}

#[tokio::test]
async fn metrics_and_health_endpoints() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/a"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    app.next_status(10 * SECOND).await;
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
    let response = reqwest::get(format!("http://{}/metrics", app.metrics_addr))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = response.text().await.unwrap();
    for line in [
        r#"tagcast_events_received_total{result="accepted"} 1"#,
        r#"tagcast_trigger_evaluations_total{result="triggered",trigger="all"} 1"#,
        r#"tagcast_delivery_attempts_total{outcome="2xx"} 1"#,
        r#"tagcast_deliveries_completed_total{status="succeeded"} 1"#,
        "tagcast_delivery_attempt_duration_seconds_count 1",
        "tagcast_event_to_delivery_seconds_count 1",
        "tagcast_deliveries_in_flight 0",
        "tagcast_retries_scheduled_total 0",
        &format!(
            r#"tagcast_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        ),
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE tagcast_delivery_attempt_duration_seconds histogram",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_message_that_always_fails_is_dead_lettered_by_the_delivery_limit() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/a"), Trigger::All)
        .await;
    // A permanent database error for one event only: its processing fails every time.
    app.pg
        .batch_execute(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.event_id = 'poison' THEN RAISE EXCEPTION 'poisoned event'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON deliveries FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .await
        .unwrap();
    let mut poison = event("latest");
    poison["event_id"] = "poison".into();
    app.publish_event(&poison).await;
    app.publish_event(&event("latest")).await;

    // The valid event goes through while the poison one cycles.
    assert_eq!(app.next_status(10 * SECOND).await["status"], "succeeded");
    let dead = eventually("the poison event dead-lettered", 30 * SECOND, || async {
        let dead = app.queue_messages("events.dead").await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(
        dead.len(),
        1,
        "the poison event reached the dead-letter queue"
    );
    assert!(String::from_utf8_lossy(&dead[0]).contains("\"poison\""));
    assert!(
        app.metric(r#"tagcast_messages_redelivered_total{stage="events"}"#)
            .await
            >= 9.0
    );
    assert_eq!(receiver.count(), 1);
    app.teardown().await;
}

/// An inline first attempt relies on its event coming again if the worker dies; an event near
/// the delivery limit may not, so from its fifth redelivery on its deliveries are handed to jobs,
/// which the sweeper watches.
#[tokio::test]
async fn an_event_redelivered_five_times_hands_its_deliveries_to_jobs() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/a"), Trigger::All)
        .await;
    // The first five tries to record the event's decisions fail: five redeliveries. A sequence
    // counts the tries, since a failed statement rolls back everything else.
    app.pg
        .batch_execute(
            "CREATE SEQUENCE flaky_tries;
         CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.event_id = 'flaky' AND nextval('flaky_tries') <= 5 THEN RAISE EXCEPTION 'flaky'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER flaky BEFORE INSERT ON deliveries FOR EACH ROW EXECUTE FUNCTION flaky();",
        )
        .await
        .unwrap();
    let mut flaky = event("latest");
    flaky["event_id"] = "flaky".into();
    app.publish_event(&flaky).await;

    let status = app.next_status(30 * SECOND).await;
    assert_eq!(status["status"], "succeeded");
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        app.metric(r#"tagcast_messages_redelivered_total{stage="events"}"#)
            .await,
        5.0
    );
    assert_eq!(
        (
            app.metric(r#"tagcast_first_attempts_total{path="inline"}"#)
                .await,
            app.metric(r#"tagcast_first_attempts_total{path="queued"}"#)
                .await
        ),
        (0.0, 1.0)
    );
    app.teardown().await;
}

/// The events queue's prefetch is a quarter above TAGCAST_EVENT_CONCURRENCY (room for finished
/// events whose acknowledgement waits to be coalesced); no more than the setting run at once.
#[tokio::test]
async fn no_more_events_run_at_once_than_the_concurrency_setting() {
    const HOLD: Duration = Duration::from_millis(600);
    let mut settings = crate::support::test_settings();
    settings.event_concurrency = 4; // prefetch 5
    let mut app = TestApp::spawn_with(settings).await;
    let receiver = Receiver::scripted(|_| Reply::status(200).after(HOLD)).await;
    app.insert_webhook("slow", &receiver.url("/slow"), Trigger::All)
        .await;
    for i in 0..10 {
        app.publish_event(&event(&format!("v{i}"))).await;
    }
    let mut arrivals = Vec::new();
    for _ in 0..10 {
        arrivals.push(receiver.next(20 * SECOND).await.at);
    }
    // With 4 at once, a request starts only once one of the four before it has been answered:
    // the first four start together, the fifth a HOLD later, and so on.
    for (i, window) in arrivals.windows(5).enumerate() {
        let gap = window[4].duration_since(window[0]);
        assert!(
            gap >= HOLD - Duration::from_millis(100),
            "request {} started {gap:?} after request {}, with 4 events allowed at once",
            i + 5,
            i + 1
        );
    }
    app.statuses(10, 20 * SECOND).await;
    app.teardown().await;
}

/// The README's walk-through publishes its event with `tagcast publish`.
#[tokio::test]
async fn tagcast_publish_sends_an_event_that_is_delivered() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    let id = app
        .insert_webhook("demo", &receiver.url("/demo"), Trigger::Tags(&["v1.2"]))
        .await;
    let exchange = app.settings.events_exchange.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tagcast"))
            .args(["publish", "--tag", "v1.2", "--event-id", "walk-through-1"])
            .env("TAGCAST_EVENTS_EXCHANGE", exchange)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("walk-through-1"));
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (
            status["webhook_id"].as_i64(),
            status["event_id"].as_str(),
            status["status"].as_str(),
            status["tag"].as_str()
        ),
        (
            Some(id),
            Some("walk-through-1"),
            Some("succeeded"),
            Some("v1.2")
        )
    );
    assert_eq!(receiver.next(SECOND).await.path_and_query, "/demo");
    app.teardown().await;
}
