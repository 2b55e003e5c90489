//! Endpoint health (contract section 14) against a real receiver: a 410 and a long run of
//! failures disable a webhook, once and with notice; waiting retries of a disabled webhook end
//! without a request; the breaker holds attempts back and probes once; a webhook's cap holds
//! however many of its deliveries are due.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::receiver::{Receiver, Reply};
use crate::support::{SECOND, TestApp, Trigger, event, eventually, test_settings};

/// The status events until one of each delivery and webhook event wanted has come: split into
/// deliveries' and `webhook.disabled` ones.
async fn split(app: &mut TestApp, n: usize) -> (Vec<Value>, Vec<Value>) {
    let all = app.statuses(n, 15 * SECOND).await;
    all.into_iter()
        .partition(|s| s.get("delivery_id").is_some())
}

/// Waits until the webhook's disabling is noted as announced.
async fn announced(app: &TestApp, id: i64) {
    eventually("disabling noted as announced", 5 * SECOND, || async move {
        let sql = format!("SELECT disabled_announced FROM webhooks WHERE id = {id}");
        app.scalar::<bool>(&sql).await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_410_disables_its_webhook_at_once_and_says_so_once() {
    let mut app = TestApp::spawn().await;
    let gone = Receiver::always(410).await;
    let id = app
        .insert_webhook("gone", &gone.url("/hook"), Trigger::All)
        .await;
    app.publish_event(&event("v1")).await;

    let (deliveries, webhooks) = split(&mut app, 2).await;
    assert_eq!(deliveries[0]["status"], "failed");
    assert_eq!(deliveries[0]["http_status"], 410);
    assert_eq!(webhooks.len(), 1);
    let notice = &webhooks[0];
    assert_eq!(
        (
            notice["webhook_id"].as_i64(),
            notice["webhook_name"].as_str(),
            notice["namespace"].as_str(),
            notice["repository"].as_str(),
            notice["reason"].as_str()
        ),
        (
            Some(id),
            Some("gone"),
            Some("namespace"),
            Some("repoTest"),
            Some("gone")
        )
    );
    assert!(notice["at"].as_str().is_some_and(|at| at.ends_with('Z')));
    let row = app
        .pg
        .query_one(
            "SELECT enabled, disabled_reason, disabled_at IS NOT NULL FROM webhooks WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (enabled, reason, at): (bool, Option<String>, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (enabled, reason.as_deref(), at),
        (false, Some("gone"), true)
    );
    // Noted once the broker confirmed it, so the sweeper leaves it be.
    announced(&app, id).await;
    assert_eq!(
        app.metric(r#"tagcast_webhooks_disabled_total{reason="gone"}"#)
            .await,
        1.0
    );

    // Events consumed a second later skip it: no request, no record, no second notice.
    tokio::time::sleep(SECOND).await;
    app.publish_event(&event("v2")).await;
    app.no_status_within(2 * SECOND).await;
    assert_eq!(gone.count(), 1);
    let records: i64 = app.scalar("SELECT count(*) FROM deliveries").await;
    assert_eq!(records, 1);
    app.teardown().await;
}

#[tokio::test]
async fn a_webhook_whose_deliveries_keep_failing_past_the_window_is_disabled_and_a_success_prevents_it()
 {
    let mut settings = test_settings();
    settings.disable_after = Duration::from_secs(1);
    settings.disable_min_failed = 3;
    // One attempt per delivery, and a breaker that stays out of the way.
    settings.retry_max_attempts = 1;
    settings.breaker_failures = 1000;
    let mut app = TestApp::spawn_with(settings).await;
    let dead = Receiver::always(500).await;
    // Fails twice, answers the third event, fails again.
    let flaky = Receiver::scripted(|n| Reply::status(if n == 2 { 200 } else { 500 })).await;
    let dead_id = app
        .insert_webhook("dead", &dead.url("/"), Trigger::All)
        .await;
    app.insert_webhook("flaky", &flaky.url("/"), Trigger::All)
        .await;

    app.publish_event(&event("e1")).await;
    app.publish_event(&event("e2")).await;
    let (two, _) = split(&mut app, 4).await;
    assert!(two.iter().all(|s| s["status"] == "failed"), "{two:?}");
    // Two failures each, for longer than the window: still too few.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let failed: i64 = app
        .scalar(&format!(
            "SELECT failed FROM webhook_failures WHERE webhook_id = {dead_id}"
        ))
        .await;
    assert_eq!(failed, 2);

    // The third: the dead one is disabled; the flaky one succeeds, which ends its run.
    app.publish_event(&event("e3")).await;
    let (third, webhooks) = split(&mut app, 3).await;
    let by_name =
        |name: &str| third.iter().find(|s| s["webhook_name"] == name).unwrap()["status"].clone();
    assert_eq!(
        (by_name("dead"), by_name("flaky")),
        ("failed".into(), "succeeded".into())
    );
    assert_eq!(webhooks.len(), 1, "{webhooks:?}");
    assert_eq!(webhooks[0]["webhook_id"].as_i64(), Some(dead_id));
    assert_eq!(webhooks[0]["reason"], "failing");

    // The flaky one fails again: a run of one, begun just now.
    tokio::time::sleep(SECOND).await;
    app.publish_event(&event("e4")).await;
    let (fourth, none) = split(&mut app, 1).await;
    assert_eq!(fourth[0]["webhook_name"], "flaky");
    assert!(none.is_empty());
    app.no_status_within(SECOND).await;
    let states: Vec<(String, bool, Option<String>)> = app
        .pg
        .query(
            "SELECT name, enabled, disabled_reason FROM webhooks ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        states,
        [
            ("dead".to_owned(), false, Some("failing".to_owned())),
            ("flaky".to_owned(), true, None)
        ]
    );
    assert_eq!(
        app.metric(r#"tagcast_webhooks_disabled_total{reason="failing"}"#)
            .await,
        1.0
    );
    assert_eq!(dead.count(), 3);

    // Enabled again by hand: the reason goes, and the window starts anew.
    app.pg
        .execute(
            "UPDATE webhooks SET enabled = true WHERE id = $1",
            &[&dead_id],
        )
        .await
        .unwrap();
    let row = app
        .pg
        .query_one(
            "SELECT disabled_reason, disabled_at,
                    (SELECT count(*) FROM webhook_failures WHERE webhook_id = $1)
               FROM webhooks WHERE id = $1",
            &[&dead_id],
        )
        .await
        .unwrap();
    let (reason, at, runs): (Option<String>, Option<chrono::DateTime<chrono::Utc>>, i64) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!((reason, at, runs), (None, None, 0));
    tokio::time::sleep(SECOND).await;
    app.publish_event(&event("e5")).await;
    let (fifth, none) = split(&mut app, 2).await;
    assert!(fifth.iter().all(|s| s["status"] == "failed"), "{fifth:?}");
    assert!(
        none.is_empty(),
        "one failure after enabling disables nothing"
    );
    app.no_status_within(SECOND).await;
    app.teardown().await;
}

#[tokio::test]
async fn a_disabling_whose_announcement_was_lost_is_announced_by_the_sweeper() {
    let mut app = TestApp::spawn().await;
    let id = app
        .insert_webhook("lost", "http://127.0.0.1:9/", Trigger::All)
        .await;
    // As a replica leaves it that disabled the webhook and died before the broker confirmed.
    app.pg
        .execute(
            "UPDATE webhooks SET enabled = false, disabled_reason = 'failing',
                    disabled_at = now() - interval '2 minutes' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let notice = app.next_status(20 * SECOND).await;
    assert_eq!(
        (notice["webhook_id"].as_i64(), notice["reason"].as_str()),
        (Some(id), Some("failing"))
    );
    announced(&app, id).await;
    app.no_status_within(16 * SECOND).await;
    app.teardown().await;
}

#[tokio::test]
async fn waiting_retries_of_a_disabled_webhook_end_failed_without_a_request() {
    let mut settings = test_settings();
    settings.retry_initial_delay = Duration::from_secs(2);
    let mut app = TestApp::spawn_with(settings).await;
    let down = Receiver::always(503).await;
    let id = app
        .insert_webhook("down", &down.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("v1")).await;
    let retrying = app.next_status(10 * SECOND).await;
    assert_eq!(retrying["status"], "retrying");

    // Disabled by a person while its retry waits.
    app.pg
        .execute("UPDATE webhooks SET enabled = false WHERE id = $1", &[&id])
        .await
        .unwrap();
    let ended = app.next_status(10 * SECOND).await;
    assert_eq!(ended["status"], "failed");
    assert_eq!(ended["error"], "webhook_disabled");
    assert_eq!(ended["attempt"], 1, "no attempt was spent");
    assert_eq!(ended["delivery_id"], retrying["delivery_id"]);
    assert!(ended["next_attempt_at"].is_null());
    assert_eq!(down.count(), 1, "no request after it was disabled");
    let row = app
        .pg
        .query_one(
            "SELECT status, error, attempts, (SELECT count(*) FROM delivery_attempts) FROM deliveries",
            &[],
        )
        .await
        .unwrap();
    let (status, error, attempts, rows): (String, String, i32, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (status.as_str(), error.as_str(), attempts, rows),
        ("failed", "webhook_disabled", 1, 1)
    );
    assert_eq!(
        app.metric(r#"tagcast_deliveries_completed_total{status="failed"}"#)
            .await,
        1.0
    );
    app.teardown().await;
}

#[tokio::test]
async fn the_breaker_opens_after_its_failures_sends_nothing_while_open_and_one_probe_closes_it() {
    let mut settings = test_settings();
    settings.breaker_failures = 3;
    settings.breaker_cooldown = Duration::from_secs(3);
    settings.retry_initial_delay = Duration::from_millis(100);
    settings.retry_max_delay = Duration::from_millis(200);
    settings.retry_max_attempts = 10;
    let mut app = TestApp::spawn_with(settings).await;
    // Three failures, then a slow good answer (the probe), then quick ones.
    let endpoint = Receiver::scripted(|n| match n {
        0..=2 => Reply::status(503),
        3 => Reply::status(200).after(Duration::from_millis(800)),
        _ => Reply::status(200),
    })
    .await;
    app.insert_webhook("wobbly", &endpoint.url("/"), Trigger::All)
        .await;
    app.publish_event(&event("first")).await;
    let mut at = Vec::new();
    for _ in 0..3 {
        at.push(endpoint.next(5 * SECOND).await.at);
    }
    let opened = Instant::now();
    app.wait_metric("tagcast_breakers_open", 1.0, 2 * SECOND)
        .await;
    // Two more events while it is open: nothing reaches the endpoint.
    app.publish_event(&event("second")).await;
    app.publish_event(&event("third")).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(endpoint.count(), 3, "no request while the breaker is open");

    // The probe, then the others only once it has answered.
    for _ in 0..3 {
        at.push(endpoint.next(10 * SECOND).await.at);
    }
    assert!(
        at[3] >= opened + Duration::from_millis(2500),
        "probed {:?} after opening",
        at[3] - opened
    );
    assert!(
        at[4] >= at[3] + Duration::from_millis(800) && at[5] >= at[3] + Duration::from_millis(800),
        "one probe at a time: {:?} and {:?} after it",
        at[4] - at[3],
        at[5] - at[3]
    );
    let statuses = app.statuses(3 + 3, 10 * SECOND).await;
    let succeeded = statuses
        .iter()
        .filter(|s| s["status"] == "succeeded")
        .count();
    assert_eq!(succeeded, 3, "{statuses:?}");
    // The first delivery's attempt 4 was held back, not spent.
    let attempts: Vec<i32> = app
        .pg
        .query("SELECT attempts FROM deliveries ORDER BY tag", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(attempts, [4, 1, 1], "first, second, third");
    assert_eq!(endpoint.count(), 6);
    assert_eq!(app.metric("tagcast_breakers_open").await, 0.0);
    for (to, n) in [("open", 1.0), ("half_open", 1.0), ("closed", 1.0)] {
        assert_eq!(
            app.metric(&format!(
                r#"tagcast_breaker_transitions_total{{to="{to}"}}"#
            ))
            .await,
            n,
            "{to}"
        );
    }
    assert!(
        app.metric(r#"tagcast_deliveries_deferred_total{reason="breaker"}"#)
            .await
            >= 3.0
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_webhook_capped_at_two_never_has_more_than_two_requests_open_while_others_flow() {
    let mut app = TestApp::spawn().await;
    let slow = Receiver::scripted(|_| Reply::status(200).after(Duration::from_millis(300))).await;
    let fast = Receiver::always(200).await;
    let capped = app
        .insert_webhook("capped", &slow.url("/"), Trigger::All)
        .await;
    app.pg
        .execute(
            "UPDATE webhooks SET max_in_flight = 2 WHERE id = $1",
            &[&capped],
        )
        .await
        .unwrap();
    app.insert_webhook("free", &fast.url("/"), Trigger::All)
        .await;
    tokio::time::sleep(SECOND).await;
    for i in 0..12 {
        app.publish_event(&event(&format!("v{i}"))).await;
    }
    let statuses = app.statuses(24, 30 * SECOND).await;
    assert!(
        statuses.iter().all(|s| s["status"] == "succeeded"),
        "{statuses:?}"
    );
    assert_eq!(slow.peak_open(), 2, "the cap is reached, never passed");
    assert_eq!(fast.count(), 12);
    // The free webhook is not held up by the capped one's queue: it is done first.
    let last_of = |name: &str| {
        statuses
            .iter()
            .rposition(|s| s["webhook_name"] == name)
            .unwrap()
    };
    assert!(last_of("free") < last_of("capped"), "{statuses:?}");
    assert!(
        app.metric(r#"tagcast_deliveries_deferred_total{reason="max_in_flight"}"#)
            .await
            >= 1.0
    );
    app.teardown().await;
}
