//! Durable retries (contract section 5) against a real receiver: classification, backoff,
//! Retry-After, timeouts, and a retry that outlives a restart of tagcast.

use std::time::Duration;

use crate::support::receiver::{Receiver, Reply};
use crate::support::{SECOND, TestApp, Trigger, event, test_settings};

#[tokio::test]
async fn two_503s_then_200_make_three_requests_with_one_webhook_id() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::scripted(|n| Reply::status(if n < 2 { 503 } else { 200 })).await;
    app.insert_webhook("flaky", &receiver.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;

    let statuses = app.statuses(3, 15 * SECOND).await;
    let shape: Vec<(&str, i64, i64)> = statuses
        .iter()
        .map(|s| {
            (
                s["status"].as_str().unwrap(),
                s["attempt"].as_i64().unwrap(),
                s["http_status"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("retrying", 1, 503),
            ("retrying", 2, 503),
            ("succeeded", 3, 200)
        ]
    );
    assert!(
        statuses[0]["next_attempt_at"].is_string(),
        "a retrying event says when"
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(receiver.next(SECOND).await.header("webhook-id").to_owned());
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one webhook-id for every attempt: {ids:?}"
    );
    assert_eq!(ids[0], statuses[2]["delivery_id"].as_str().unwrap());

    let r = app
        .pg
        .query_one("SELECT status, attempts FROM deliveries", &[])
        .await
        .unwrap();
    let (status, attempts): (String, i32) = (r.get(0), r.get(1));
    assert_eq!((status.as_str(), attempts), ("succeeded", 3));
    let rows: Vec<(i32, Option<i32>)> = app
        .pg
        .query(
            "SELECT attempt, http_status FROM delivery_attempts ORDER BY attempt",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [(1, Some(503)), (2, Some(503)), (3, Some(200))]);
    assert_eq!(app.metric("tagcast_retries_scheduled_total").await, 2.0);
    assert_eq!(
        app.metric(r#"tagcast_delivery_attempts_total{outcome="5xx"}"#)
            .await,
        2.0
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_400_fails_at_once() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(400).await;
    app.insert_webhook("strict", &receiver.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (
            status["status"].as_str(),
            status["attempt"].as_i64(),
            status["http_status"].as_i64()
        ),
        (Some("failed"), Some(1), Some(400))
    );
    app.no_status_within(SECOND).await;
    assert_eq!(receiver.count(), 1);
    let status: String = app.scalar("SELECT status FROM deliveries").await;
    assert_eq!(status, "failed");
    assert_eq!(
        app.metric(r#"tagcast_deliveries_completed_total{status="failed"}"#)
            .await,
        1.0
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_302_is_not_followed_and_fails() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    let redirect_to = receiver.url("/elsewhere");
    let redirecting =
        Receiver::scripted(move |_| Reply::status(302).header("location", redirect_to.clone()))
            .await;
    app.insert_webhook("moved", &redirecting.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (status["status"].as_str(), status["http_status"].as_i64()),
        (Some("failed"), Some(302))
    );
    app.no_status_within(SECOND).await;
    assert_eq!(redirecting.count(), 1);
    assert_eq!(receiver.count(), 0, "the redirect was not followed");
    assert_eq!(
        app.metric(r#"tagcast_delivery_attempts_total{outcome="3xx"}"#)
            .await,
        1.0
    );
    app.teardown().await;
}

#[tokio::test]
async fn always_503_makes_exactly_the_maximum_attempts_then_fails() {
    let mut settings = test_settings();
    settings.retry_max_attempts = 4;
    let mut app = TestApp::spawn_with(settings).await;
    let receiver = Receiver::always(503).await;
    app.insert_webhook("down", &receiver.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    let statuses = app.statuses(4, 20 * SECOND).await;
    let shape: Vec<(&str, i64)> = statuses
        .iter()
        .map(|s| {
            (
                s["status"].as_str().unwrap(),
                s["attempt"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("retrying", 1),
            ("retrying", 2),
            ("retrying", 3),
            ("failed", 4)
        ]
    );
    assert!(statuses[3]["next_attempt_at"].is_null());
    app.no_status_within(2 * SECOND).await;
    assert_eq!(receiver.count(), 4);
    let attempts: i64 = app.scalar("SELECT count(*) FROM delivery_attempts").await;
    assert_eq!(attempts, 4);
    app.teardown().await;
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::scripted(|n| {
        if n == 0 {
            Reply::status(429).header("retry-after", "1")
        } else {
            Reply::status(200)
        }
    })
    .await;
    app.insert_webhook("busy", &receiver.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    let first = receiver.next(10 * SECOND).await;
    let second = receiver.next(10 * SECOND).await;
    let gap = second.at - first.at;
    assert!(
        gap >= SECOND,
        "the second attempt came {gap:?} after the first, before Retry-After: 1"
    );
    let statuses = app.statuses(2, 5 * SECOND).await;
    assert_eq!(
        (
            statuses[0]["status"].as_str(),
            statuses[0]["http_status"].as_i64()
        ),
        (Some("retrying"), Some(429))
    );
    assert_eq!(statuses[1]["status"], "succeeded");
    app.teardown().await;
}

#[tokio::test]
async fn a_hanging_receiver_times_out() {
    let mut settings = test_settings();
    settings.retry_max_attempts = 1;
    settings.http_timeout = Duration::from_millis(500);
    let mut app = TestApp::spawn_with(settings).await;
    let receiver = Receiver::scripted(|_| Reply::status(200).after(Duration::from_secs(30))).await;
    app.insert_webhook("hangs", &receiver.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (status["status"].as_str(), status["error"].as_str()),
        (Some("failed"), Some("timeout"))
    );
    assert!(status["http_status"].is_null());
    let error: Option<String> = app.scalar("SELECT error FROM delivery_attempts").await;
    assert_eq!(error.as_deref(), Some("timeout"));
    assert_eq!(
        app.metric(r#"tagcast_delivery_attempts_total{outcome="timeout"}"#)
            .await,
        1.0
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_connection_refused_is_retried_with_error_connect() {
    let mut app = TestApp::spawn().await;
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    app.insert_webhook("nobody", &format!("http://127.0.0.1:{port}/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (status["status"].as_str(), status["error"].as_str()),
        (Some("retrying"), Some("connect"))
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_waiting_retry_survives_a_restart_of_tagcast() {
    let mut settings = test_settings();
    settings.retry_initial_delay = Duration::from_secs(3);
    settings.retry_max_delay = Duration::from_secs(3);
    let mut app = TestApp::spawn_with(settings).await;
    let receiver = Receiver::scripted(|n| Reply::status(if n == 0 { 503 } else { 200 })).await;
    app.insert_webhook("later", &receiver.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    let retrying = app.next_status(10 * SECOND).await;
    assert_eq!(retrying["status"], "retrying");

    app.stop().await;
    let first = receiver.next(SECOND).await;
    // Nothing in tagcast holds the retry now: it waits in a delay queue.
    app.start().await;
    let second = receiver.next(15 * SECOND).await;
    assert_eq!(first.header("webhook-id"), second.header("webhook-id"));
    assert!(
        second.at - first.at >= Duration::from_millis(2250),
        "the retry waited its (jittered) delay"
    );
    let done = app.next_status(10 * SECOND).await;
    assert_eq!(
        (done["status"].as_str(), done["attempt"].as_i64()),
        (Some("succeeded"), Some(2))
    );
    app.teardown().await;
}

/// The sweeper's flag (it re-queues a watched delivery whose job went missing): set while a
/// delivery waits on a broker job, clear once it is final, so finished rows leave its index.
#[tokio::test]
async fn a_delivery_is_watched_by_the_sweeper_exactly_while_it_waits_for_a_retry() {
    let mut settings = test_settings();
    settings.retry_initial_delay = Duration::from_secs(3);
    let mut app = TestApp::spawn_with(settings).await;
    let receiver = Receiver::scripted(|n| Reply::status(if n < 1 { 503 } else { 200 })).await;
    app.insert_webhook("flaky", &receiver.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("latest")).await;
    let pg = crate::support::pg_connect(app.settings.database_url.expose()).await;
    let watched = || async {
        let r = pg
            .query_one("SELECT status, watched FROM deliveries", &[])
            .await
            .unwrap();
        (r.get::<_, String>(0), r.get::<_, bool>(1))
    };
    let first = app.next_status(10 * SECOND).await;
    assert_eq!(first["status"], "retrying");
    assert_eq!(watched().await, ("retrying".to_owned(), true));
    let last = app.next_status(10 * SECOND).await;
    assert_eq!(last["status"], "succeeded");
    assert_eq!(watched().await, ("succeeded".to_owned(), false));
    app.teardown().await;
}
