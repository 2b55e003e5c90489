//! The admin API against a running tagcast: every operation, every error status, pagination
//! while records are inserted, secret rotation as receivers verify it, and redeliveries seen at
//! a real receiver.

use std::time::Duration;

use serde_json::{Value, json};
use tagcast::store::tokens::Scope;

use crate::support::app::{SECOND, TestApp, event_for, test_settings};
use crate::support::eventually;
use crate::support::receiver::{Receiver, Reply};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn hooks(repository: &str) -> String {
    format!("/api/v1/repositories/ns/{repository}/webhooks")
}

/// Verifies a request's signature with `secret`, as a receiver using `standardwebhooks` does.
fn verifies(request: &crate::support::receiver::Received, secret: &str) -> bool {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, request.header(name).parse().unwrap());
    }
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &headers)
        .is_ok()
}

#[tokio::test]
async fn webhooks_are_created_read_listed_changed_and_deleted() {
    let app = TestApp::spawn().await;
    let w = app.token("ops", Scope::Write).await;
    let created = app
        .api("POST", &hooks("crud"), Some(&w), Some(json!({
            "name": "deploy", "url": "http://127.0.0.1:9/hook?token=abc",
            "trigger": {"type": "expression", "expression": "release-v.*"}, "generate_secret": true
        })))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_i64().unwrap();
    assert_eq!(
        created.headers["location"],
        format!("/api/v1/webhooks/{id}")
    );
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_") && tagcast::api::validate::secret(&secret).is_ok());
    assert_eq!(created.body["has_secret"], true);
    assert_eq!(
        created.body["url"], "http://127.0.0.1:9/hook?token=abc",
        "shown whole"
    );
    let stored: String = app
        .scalar(&format!("SELECT secret FROM webhooks WHERE id = {id}"))
        .await;
    assert_eq!(stored, secret);
    // Times are RFC 3339 UTC with milliseconds.
    let at = created.body["created_at"].as_str().unwrap();
    assert!(at.len() == 24 && at.ends_with('Z'), "{at}");

    let got = app
        .api("GET", &format!("/api/v1/webhooks/{id}"), Some(&w), None)
        .await;
    assert_eq!(got.status, 200);
    assert!(
        got.body.get("secret").is_none(),
        "the secret is shown once: {:?}",
        got.body
    );
    assert_eq!(
        got.body["trigger"],
        json!({"type": "expression", "expression": "release-v.*"})
    );

    // Defaults: trigger all, enabled.
    let second = app
        .api(
            "POST",
            &hooks("crud"),
            Some(&w),
            Some(json!({"name": "all", "url": "https://example.com/h"})),
        )
        .await;
    assert_eq!(second.status, 201);
    assert_eq!(
        (
            second.body["trigger"].clone(),
            second.body["enabled"].clone(),
            second.body["has_secret"].clone()
        ),
        (json!({"type": "all"}), json!(true), json!(false))
    );
    let listed = app.api("GET", &hooks("crud"), Some(&w), None).await;
    let names: Vec<&str> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["all", "deploy"], "newest first");
    assert_eq!(listed.body["next_cursor"], Value::Null);
    let page = app
        .api("GET", &format!("{}?limit=1", hooks("crud")), Some(&w), None)
        .await;
    let cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = app
        .api(
            "GET",
            &format!("{}?limit=1&cursor={cursor}", hooks("crud")),
            Some(&w),
            None,
        )
        .await;
    assert_eq!(rest.body["data"][0]["name"], "deploy");
    assert_eq!(rest.body["next_cursor"], Value::Null);

    // A change replaces the fields given; enabling clears the reason tagcast disabled it for.
    app.pg.execute(&format!("UPDATE webhooks SET enabled = false, disabled_reason = 'gone', disabled_at = now() WHERE id = {id}"), &[]).await.unwrap();
    let changed = app
        .api("PATCH", &format!("/api/v1/webhooks/{id}"), Some(&w), Some(json!({
            "name": "deploy-2", "trigger": {"type": "tags", "tags": ["latest", "v1"]}, "enabled": true, "secret": null
        })))
        .await;
    assert_eq!(changed.status, 200, "{:?}", changed.body);
    assert_eq!(changed.body["name"], "deploy-2");
    assert_eq!(
        changed.body["trigger"],
        json!({"type": "tags", "tags": ["latest", "v1"]})
    );
    assert_eq!(
        (
            changed.body["enabled"].clone(),
            changed.body["disabled_reason"].clone(),
            changed.body["has_secret"].clone()
        ),
        (json!(true), Value::Null, json!(false))
    );
    assert_eq!(
        changed.body["url"], "http://127.0.0.1:9/hook?token=abc",
        "untouched"
    );
    let reason: Option<String> = app
        .scalar(&format!(
            "SELECT disabled_reason FROM webhooks WHERE id = {id}"
        ))
        .await;
    assert_eq!(reason, None);
    // A change of one field leaves the others as they are.
    for enabled in [false, true] {
        let one = app
            .api(
                "PATCH",
                &format!("/api/v1/webhooks/{id}"),
                Some(&w),
                Some(json!({"enabled": enabled})),
            )
            .await;
        assert_eq!(one.status, 200, "{:?}", one.body);
        assert_eq!(
            (
                one.body["enabled"].clone(),
                one.body["name"].clone(),
                one.body["trigger"].clone()
            ),
            (
                json!(enabled),
                json!("deploy-2"),
                json!({"type": "tags", "tags": ["latest", "v1"]})
            )
        );
    }

    // Deleting takes the records with it.
    app.publish_event(&event_for("ns", "crud", "latest")).await;
    eventually("records", 10 * SECOND, || async {
        (app.scalar::<i64>(&format!(
            "SELECT count(*) FROM deliveries WHERE webhook_id = {id}"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    let deleted = app
        .api("DELETE", &format!("/api/v1/webhooks/{id}"), Some(&w), None)
        .await;
    assert_eq!((deleted.status, deleted.body.clone()), (204, Value::Null));
    assert_eq!(
        app.scalar::<i64>(&format!(
            "SELECT count(*) FROM deliveries WHERE webhook_id = {id}"
        ))
        .await,
        0
    );
    let gone = app
        .api("GET", &format!("/api/v1/webhooks/{id}"), Some(&w), None)
        .await;
    assert_eq!(gone.status, 404);
    app.teardown().await;
}

/// A request and what must come of it: (method, path, token, body, status, words the detail
/// must hold).
type Case<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Option<Value>,
    u16,
    &'a str,
);

#[tokio::test]
async fn bad_requests_get_a_problem_detail_never_a_server_error() {
    let app = TestApp::spawn().await;
    let w = app.token("writer", Scope::Write).await;
    let r = app.token("reader", Scope::Read).await;
    let revoked = app.token("old", Scope::Write).await;
    let pool = tagcast::store::connect(&app.settings.database_url, 1).unwrap();
    assert!(tagcast::store::tokens::revoke(&pool, "old").await.unwrap());
    let made = app
        .api(
            "POST",
            &hooks("bad"),
            Some(&w),
            Some(json!({"name": "taken", "url": "http://127.0.0.1:9/"})),
        )
        .await;
    assert_eq!(made.status, 201);
    let id = made.body["id"].as_i64().unwrap();
    let big = "x".repeat(70 * 1024);
    let other = "tgc_".to_owned() + &w[4..8] + &"A".repeat(36);

    // (method, path, token, body, status, words the detail must hold)
    let cases: Vec<Case> = vec![
        ("GET", hooks("bad"), None, None, 401, "token"),
        (
            "GET",
            hooks("bad"),
            Some("tgc_nonsense"),
            None,
            401,
            "token",
        ),
        ("GET", hooks("bad"), Some(&other), None, 401, "token"),
        ("GET", hooks("bad"), Some(&revoked), None, 401, "token"),
        (
            "POST",
            hooks("bad"),
            Some(&r),
            Some(json!({"name": "n", "url": "http://127.0.0.1:9/"})),
            403,
            "write",
        ),
        (
            "DELETE",
            format!("/api/v1/webhooks/{id}"),
            Some(&r),
            None,
            403,
            "write",
        ),
        (
            "POST",
            hooks("bad"),
            Some(&w),
            Some(Value::String("{not json".into())),
            400,
            "",
        ),
        (
            "POST",
            hooks("bad"),
            Some(&w),
            Some(json!({"name": 5, "url": "http://127.0.0.1:9/"})),
            400,
            "name",
        ),
        (
            "POST",
            hooks("bad"),
            Some(&w),
            Some(json!({"name": "n", "url": "http://127.0.0.1:9/", "colour": "red"})),
            400,
            "colour",
        ),
        (
            "POST",
            hooks("bad"),
            Some(&w),
            Some(
                json!({"name": "n", "url": "http://127.0.0.1:9/", "trigger": {"type": "all", "x": 1}}),
            ),
            400,
            "x",
        ),
        (
            "POST",
            hooks("bad"),
            Some(&w),
            Some(json!({"url": "http://127.0.0.1:9/"})),
            400,
            "name",
        ),
        (
            "POST",
            hooks("bad"),
            Some(&w),
            Some(json!({"name": "n", "url": big})),
            413,
            "64 KiB",
        ),
        (
            "GET",
            format!("{}?cursor=bm9wZQ", hooks("bad")),
            Some(&w),
            None,
            400,
            "cursor",
        ),
        (
            "GET",
            format!("/api/v1/webhooks/{id}/deliveries?cursor=%%%"),
            Some(&w),
            None,
            400,
            "cursor",
        ),
        (
            "GET",
            format!("/api/v1/webhooks/{id}/deliveries?status=done"),
            Some(&w),
            None,
            400,
            "status",
        ),
        (
            "GET",
            format!("/api/v1/webhooks/{id}/deliveries?since=yesterday"),
            Some(&w),
            None,
            400,
            "since",
        ),
        (
            "GET",
            format!("{}?limit=0", hooks("bad")),
            Some(&w),
            None,
            422,
            "limit",
        ),
        (
            "GET",
            format!("{}?limit=201", hooks("bad")),
            Some(&w),
            None,
            422,
            "limit",
        ),
        (
            "GET",
            "/api/v1/webhooks/abc".into(),
            Some(&w),
            None,
            400,
            "id",
        ),
        (
            "GET",
            "/api/v1/webhooks/999999".into(),
            Some(&w),
            None,
            404,
            "999999",
        ),
        (
            "GET",
            "/api/v1/deliveries/0a0f4d6e-1b2c-4d5e-8f90-123456789abc".into(),
            Some(&w),
            None,
            404,
            "access record",
        ),
        (
            "POST",
            "/api/v1/deliveries/0a0f4d6e-1b2c-4d5e-8f90-123456789abc/redeliver".into(),
            Some(&w),
            None,
            404,
            "access record",
        ),
        (
            "POST",
            "/api/v1/webhooks/999999/test".into(),
            Some(&w),
            None,
            404,
            "999999",
        ),
        (
            "POST",
            "/api/v1/webhooks/999999/recover".into(),
            Some(&w),
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
            404,
            "999999",
        ),
        (
            "POST",
            "/api/v1/webhooks/999999/secret/rotate".into(),
            Some(&w),
            None,
            404,
            "999999",
        ),
        (
            "GET",
            "/api/v1/nothing-here".into(),
            Some(&w),
            None,
            404,
            "openapi",
        ),
        (
            "POST",
            hooks("bad"),
            Some(&w),
            Some(json!({"name": "taken", "url": "http://127.0.0.1:9/"})),
            409,
            "taken",
        ),
        (
            "POST",
            format!("/api/v1/webhooks/{id}/recover"),
            Some(&w),
            Some(json!({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"})),
            422,
            "until",
        ),
    ];
    for (method, path, token, body, status, words) in cases {
        let got = app.api(method, &path, token, body.clone()).await;
        let shown = format!("{method} {path} {body:?}: {} {:?}", got.status, got.body);
        assert_eq!(got.status, status, "{shown}");
        assert_eq!(
            got.headers["content-type"], "application/problem+json",
            "{shown}"
        );
        assert_eq!(got.body["status"], status, "{shown}");
        assert!(got.body["title"].is_string(), "{shown}");
        assert!(
            got.body["detail"].as_str().unwrap().contains(words),
            "{shown}"
        );
        if status == 401 {
            assert_eq!(got.headers["www-authenticate"], "Bearer", "{shown}");
        }
    }

    // A JSON body not sent as JSON is "not JSON" too.
    let untyped = reqwest::Client::new()
        .post(format!("http://{}{}", app.api_addr, hooks("bad")))
        .bearer_auth(&w)
        .body(r#"{"name": "n", "url": "http://127.0.0.1:9/"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(untyped.status(), 400);
    assert_eq!(
        untyped.headers()["content-type"],
        "application/problem+json"
    );

    // Every broken field at once, each named.
    let invalid = app
        .api(
            "POST",
            &hooks("bad"),
            Some(&w),
            Some(json!({
                "name": "no spaces", "url": "ftp://example.com/",
                "trigger": {"type": "tags", "tags": ["ok", "not ok", "ok"]}, "secret": "whsec_short"
            })),
        )
        .await;
    assert_eq!(invalid.status, 422);
    let fields: Vec<&str> = invalid.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "name",
            "url",
            "trigger.tags[1]",
            "trigger.tags[2]",
            "secret"
        ]
    );
    let bad_rule = app
        .api(
            "PATCH",
            &format!("/api/v1/webhooks/{id}"),
            Some(&w),
            Some(json!({"trigger": {"type": "expression", "expression": "("}})),
        )
        .await;
    assert_eq!(
        (
            bad_rule.status,
            bad_rule.body["errors"][0]["field"].as_str()
        ),
        (422, Some("trigger.expression"))
    );
    // No body needed for health and the document.
    assert_eq!(app.api("GET", "/healthz", None, None).await.status, 200);
    assert_eq!(
        app.api("GET", "/api/v1/openapi.json", None, None)
            .await
            .body["openapi"],
        "3.1.0"
    );
    // The write of a token is noted as its last use.
    let used: Option<chrono::DateTime<chrono::Utc>> = app
        .scalar("SELECT last_used_at FROM api_tokens WHERE name = 'writer'")
        .await;
    assert!(used.is_some());
    tagcast::store::close(&pool);
    app.teardown().await;
}

/// Inserts `n` finished records of a webhook directly, one second apart, the newest `newest`
/// seconds ago; tags alternate `a` and `b`, statuses `succeeded` and `failed`.
async fn insert_records(app: &TestApp, webhook: i64, prefix: &str, n: i32, newest: i32) {
    app.pg
        .execute(
            "INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status, attempts,
                                     created_at, occurred_at, watched)
             SELECT gen_random_uuid(), $2 || i, $1, 'ns', 'pages', CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, 'sha256:00',
                    CASE WHEN i % 2 = 0 THEN 'succeeded' ELSE 'failed' END, 1,
                    now() - make_interval(secs => $4::float8 + i), now(), false
               FROM generate_series(0, $3 - 1) AS i",
            &[&webhook, &prefix, &n, &f64::from(newest)],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn record_pages_stay_correct_while_records_are_inserted() {
    let app = TestApp::spawn().await;
    let w = app.token("reader", Scope::Read).await;
    let hook = app
        .insert_webhook_for(
            "ns",
            "pages",
            "one",
            "http://127.0.0.1:9/",
            crate::support::app::Trigger::All,
            None,
        )
        .await;
    let other = app
        .insert_webhook_for(
            "ns",
            "pages",
            "two",
            "http://127.0.0.1:9/",
            crate::support::app::Trigger::All,
            None,
        )
        .await;
    insert_records(&app, hook, "old-", 25, 100).await;
    insert_records(&app, other, "other-", 3, 100).await;

    let mut seen = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        let got = app
            .api(
                "GET",
                &format!("/api/v1/webhooks/{hook}/deliveries?limit=10&cursor={cursor}"),
                Some(&w),
                None,
            )
            .await;
        assert_eq!(got.status, 200, "{:?}", got.body);
        for record in got.body["data"].as_array().unwrap() {
            seen.push((
                record["created_at"].as_str().unwrap().to_owned(),
                record["event_id"].as_str().unwrap().to_owned(),
            ));
        }
        if page == 0 {
            // Newer records arrive between pages: they go before the first page, never into a later one.
            insert_records(&app, hook, "new-", 5, 0).await;
        }
        match got.body["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("old-{i}")).collect();
    assert_eq!(
        seen.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        expected,
        "each once, newest first"
    );

    // Filters, each alone and together; the repository's list holds both webhooks'.
    let count = |body: &Value| body["data"].as_array().unwrap().len();
    let base = format!("/api/v1/webhooks/{hook}/deliveries?limit=200");
    let cases = [
        (format!("{base}&status=succeeded"), 13 + 3),
        (format!("{base}&status=failed&tag=b"), 12 + 2),
        (format!("{base}&tag=a"), 13 + 3),
        (format!("{base}&status=not_triggered"), 0),
        (
            format!(
                "{base}&since={}",
                urlencode(&(chrono::Utc::now() - chrono::Duration::seconds(50)).to_rfc3339())
            ),
            5,
        ),
        (
            format!(
                "{base}&until={}",
                urlencode(&(chrono::Utc::now() - chrono::Duration::seconds(50)).to_rfc3339())
            ),
            25,
        ),
        (
            "/api/v1/repositories/ns/pages/deliveries?limit=200".to_owned(),
            33,
        ),
        (
            "/api/v1/repositories/ns/pages/deliveries?limit=200&tag=a&status=succeeded".to_owned(),
            13 + 3 + 2,
        ),
        ("/api/v1/repositories/ns/elsewhere/deliveries".to_owned(), 0),
    ];
    for (path, n) in cases {
        let got = app.api("GET", &path, Some(&w), None).await;
        assert_eq!((got.status, count(&got.body)), (200, n), "{path}");
    }
    app.teardown().await;
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn a_test_notification_is_sent_now_signed_and_recorded() {
    let app = TestApp::spawn().await;
    let w = app.token("ops", Scope::Write).await;
    let receiver = Receiver::always(200).await;
    let made = app
        .api(
            "POST",
            &hooks("tests"),
            Some(&w),
            Some(json!({
                "name": "t", "url": receiver.url("/t"), "secret": SECRET, "enabled": false,
                "trigger": {"type": "tags", "tags": ["never"]}
            })),
        )
        .await;
    let id = made.body["id"].as_i64().unwrap();
    // Sent whatever the rule, even while disabled.
    let tested = app
        .api(
            "POST",
            &format!("/api/v1/webhooks/{id}/test"),
            Some(&w),
            None,
        )
        .await;
    assert_eq!(tested.status, 200, "{:?}", tested.body);
    assert_eq!(
        (
            tested.body["status"].as_str(),
            tested.body["http_status"].as_i64()
        ),
        (Some("succeeded"), Some(200))
    );
    let request = receiver.next(5 * SECOND).await;
    assert!(verifies(&request, SECRET));
    assert_eq!(
        request.header("webhook-id"),
        tested.body["delivery_id"].as_str().unwrap()
    );
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["push_data"]["tag"], "test");
    assert_eq!(
        body["push_data"]["digest"],
        format!("sha256:{}", "0".repeat(64))
    );
    assert_eq!(body["repository"]["repo_full_name"], "ns/tests");

    let record = app
        .api(
            "GET",
            &format!(
                "/api/v1/deliveries/{}",
                tested.body["delivery_id"].as_str().unwrap()
            ),
            Some(&w),
            None,
        )
        .await;
    assert_eq!(record.status, 200);
    assert!(
        record.body["event_id"]
            .as_str()
            .unwrap()
            .starts_with("test-")
    );
    assert_eq!(
        record.body["request_body"].as_str().unwrap().as_bytes(),
        &request.body[..]
    );
    let log = record.body["attempt_log"].as_array().unwrap();
    assert_eq!(
        (
            log.len(),
            log[0]["http_status"].as_i64(),
            log[0]["response_body"].as_str()
        ),
        (1, Some(200), Some("thanks"))
    );

    // An endpoint that is down: the attempt's outcome, not an error of the API; no retry.
    let down = app
        .api(
            "POST",
            &hooks("tests"),
            Some(&w),
            Some(json!({"name": "down", "url": "http://127.0.0.1:9/"})),
        )
        .await;
    let down_id = down.body["id"].as_i64().unwrap();
    let failed = app
        .api(
            "POST",
            &format!("/api/v1/webhooks/{down_id}/test"),
            Some(&w),
            None,
        )
        .await;
    assert_eq!(
        (
            failed.status,
            failed.body["status"].as_str(),
            failed.body["error"].as_str()
        ),
        (200, Some("failed"), Some("connect"))
    );
    let status: String = app
        .scalar(&format!(
            "SELECT status FROM deliveries WHERE webhook_id = {down_id}"
        ))
        .await;
    assert_eq!(status, "failed");

    // Once the registry has described the repository in an event, a test describes it the same.
    assert_eq!(
        body["repository"]["region"], "",
        "no event yet: nothing known"
    );
    app.publish_event(&event_for("ns", "tests", "latest")).await;
    eventually("the event's record", 10 * SECOND, || async {
        let n: i64 = app
            .scalar("SELECT count(*) FROM deliveries WHERE event_id NOT LIKE 'test-%' AND request_body IS NOT NULL")
            .await;
        (n > 0).then_some(())
    })
    .await;
    let again = app
        .api(
            "POST",
            &format!("/api/v1/webhooks/{id}/test"),
            Some(&w),
            None,
        )
        .await;
    assert_eq!(again.status, 200);
    let request = receiver.next(5 * SECOND).await;
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["repository"]["region"], "cn-hangzhou");
    assert_eq!(body["repository"]["date_created"], "2016-10-28 21:31:42");
    assert_eq!(body["push_data"]["tag"], "test");
    app.teardown().await;
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one_for_the_grace_then_stops() {
    let mut settings = test_settings();
    settings.secret_rotation_grace = Duration::from_secs(4);
    let mut app = TestApp::spawn_with(settings).await;
    let w = app.token("ops", Scope::Write).await;
    // The first attempt of the first event fails: its retry goes through the job stage, which
    // signs from the database, where the first attempt signed from the webhook cache.
    let receiver = Receiver::scripted(|n| Reply::status(if n == 0 { 503 } else { 200 })).await;
    let made = app
        .api(
            "POST",
            &hooks("rotate"),
            Some(&w),
            Some(json!({"name": "r", "url": receiver.url("/r"), "secret": SECRET})),
        )
        .await;
    let id = made.body["id"].as_i64().unwrap();
    let rotated = app
        .api(
            "POST",
            &format!("/api/v1/webhooks/{id}/secret/rotate"),
            Some(&w),
            None,
        )
        .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let new = rotated.body["secret"].as_str().unwrap().to_owned();
    assert!(rotated.body["previous_secret_expires_at"].is_string());
    // A change reaches the worker within a second (contract section 2).
    tokio::time::sleep(Duration::from_millis(1200)).await;

    app.publish_event(&event_for("ns", "rotate", "latest"))
        .await;
    let inline = receiver.next(5 * SECOND).await;
    let retried = receiver.next(5 * SECOND).await;
    for request in [&inline, &retried] {
        assert_eq!(request.header("webhook-signature").split(' ').count(), 2);
        assert!(
            verifies(request, &new) && verifies(request, SECRET),
            "both verify during the grace"
        );
    }
    assert_eq!(app.statuses(2, 10 * SECOND).await[1]["status"], "succeeded");

    tokio::time::sleep(Duration::from_secs(4)).await;
    app.publish_event(&event_for("ns", "rotate", "latest"))
        .await;
    let after = receiver.next(5 * SECOND).await;
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    assert!(
        verifies(&after, &new) && !verifies(&after, SECRET),
        "only the new one after it"
    );
    // And then it leaves the database (the sweeper does this every 15 seconds).
    let pool = tagcast::store::connect(&app.settings.database_url, 1).unwrap();
    assert_eq!(
        tagcast::store::admin::drop_expired_secrets(&pool)
            .await
            .unwrap(),
        1
    );
    let kept: Option<String> = app
        .scalar(&format!(
            "SELECT previous_secret FROM webhooks WHERE id = {id}"
        ))
        .await;
    assert_eq!(kept, None);
    assert_eq!(
        tagcast::store::admin::drop_expired_secrets(&pool)
            .await
            .unwrap(),
        0,
        "nothing written when nothing expired"
    );
    tagcast::store::close(&pool);
    app.teardown().await;
}

#[tokio::test]
async fn redeliver_and_recover_reach_the_receiver_again_with_the_same_webhook_id() {
    let mut app = TestApp::spawn().await;
    let w = app.token("ops", Scope::Write).await;
    // 400 fails a delivery at once; the first three requests get it.
    let receiver = Receiver::scripted(|n| Reply::status(if n < 3 { 400 } else { 200 })).await;
    let made = app
        .api(
            "POST",
            &hooks("again"),
            Some(&w),
            Some(json!({"name": "a", "url": receiver.url("/a"), "secret": SECRET})),
        )
        .await;
    let id = made.body["id"].as_i64().unwrap();
    let skipped = app
        .api("POST", &hooks("again"), Some(&w), Some(json!({"name": "b", "url": receiver.url("/b"), "trigger": {"type": "tags", "tags": ["never"]}})))
        .await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);

    app.publish_event(&event_for("ns", "again", "latest")).await;
    let first = receiver.next(5 * SECOND).await;
    let mut statuses = app.statuses(2, 10 * SECOND).await;
    statuses.sort_by_key(|s| s["webhook_name"].as_str().unwrap().to_owned());
    assert_eq!(
        (
            statuses[0]["status"].as_str(),
            statuses[1]["status"].as_str()
        ),
        (Some("failed"), Some("not_triggered"))
    );
    let delivery = first.header("webhook-id").to_owned();

    let redelivered = app
        .api(
            "POST",
            &format!("/api/v1/deliveries/{delivery}/redeliver"),
            Some(&w),
            None,
        )
        .await;
    assert_eq!(
        (redelivered.status, redelivered.body.clone()),
        (202, json!({"queued": 1}))
    );
    let second = receiver.next(5 * SECOND).await;
    assert_eq!(second.header("webhook-id"), delivery, "same webhook-id");
    assert_eq!(second.body, first.body, "same body");
    assert!(verifies(&second, SECRET), "signed as any attempt");
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(
        (status["status"].as_str(), status["attempt"].as_i64()),
        (Some("failed"), Some(2)),
        "the next attempt number"
    );
    let record = app
        .api(
            "GET",
            &format!("/api/v1/deliveries/{delivery}"),
            Some(&w),
            None,
        )
        .await;
    let log = record.body["attempt_log"].as_array().unwrap();
    assert_eq!(
        log.iter()
            .map(|a| a["attempt"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );

    // Not triggered: nothing to deliver.
    let skipped_id = skipped.body["id"].as_i64().unwrap();
    let not_triggered: uuid::Uuid = app
        .scalar(&format!(
            "SELECT id FROM deliveries WHERE webhook_id = {skipped_id}"
        ))
        .await;
    let refused = app
        .api(
            "POST",
            &format!("/api/v1/deliveries/{not_triggered}/redeliver"),
            Some(&w),
            None,
        )
        .await;
    assert_eq!(refused.status, 409, "{:?}", refused.body);

    // Two more events fail (the third request gets 400); recovering the range sends both
    // failed deliveries again, which now succeed.
    app.publish_event(&event_for("ns", "again", "v1")).await;
    let third = receiver.next(5 * SECOND).await;
    app.statuses(2, 10 * SECOND).await;
    let recovered = app
        .api(
            "POST",
            &format!("/api/v1/webhooks/{id}/recover"),
            Some(&w),
            Some(json!({"since": since.to_rfc3339()})),
        )
        .await;
    assert_eq!(
        (recovered.status, recovered.body.clone()),
        (202, json!({"queued": 2}))
    );
    let mut again = [
        receiver.next(5 * SECOND).await,
        receiver.next(5 * SECOND).await,
    ];
    again.sort_by_key(|r| r.header("webhook-id").to_owned());
    let mut expected = vec![delivery.clone(), third.header("webhook-id").to_owned()];
    expected.sort();
    assert_eq!(
        again
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect::<Vec<_>>(),
        expected
    );
    let finals = app.statuses(2, 10 * SECOND).await;
    assert!(
        finals.iter().all(|s| s["status"] == "succeeded"),
        "{finals:?}"
    );
    // Nothing failed is left in the range: recovering again queues nothing.
    let none = app
        .api(
            "POST",
            &format!("/api/v1/webhooks/{id}/recover"),
            Some(&w),
            Some(json!({"since": since.to_rfc3339()})),
        )
        .await;
    assert_eq!(none.body, json!({"queued": 0}));
    app.teardown().await;
}

#[tokio::test]
async fn repositories_are_listed_in_name_order_page_by_page_and_a_token_knows_itself() {
    use crate::support::app::Trigger;
    let app = TestApp::spawn().await;
    let r = app.token("looker", Scope::Read).await;
    let empty = app.api("GET", "/api/v1/repositories", Some(&r), None).await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body, json!({"data": [], "next_cursor": null}));
    // Names that sort in an order a byte comparison and a naive join would get wrong.
    for (namespace, repository, name) in [
        ("b", "one", "x"),
        ("a", "two", "x"),
        ("a", "two", "y"),
        ("a", "one/with slash", "x"),
        ("a b", "z", "x"),
    ] {
        app.insert_webhook_for(
            namespace,
            repository,
            name,
            "http://127.0.0.1:9/",
            Trigger::All,
            None,
        )
        .await;
    }
    app.pg
        .execute("UPDATE webhooks SET enabled = false WHERE name = 'y'", &[])
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/repositories?limit=2&cursor={c}"),
            None => "/api/v1/repositories?limit=2".to_owned(),
        };
        let page = app.api("GET", &path, Some(&r), None).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        for repo in page.body["data"].as_array().unwrap() {
            seen.push((
                format!(
                    "{}/{}",
                    repo["namespace"].as_str().unwrap(),
                    repo["repository"].as_str().unwrap()
                ),
                repo["webhooks"].as_i64().unwrap(),
                repo["enabled"].as_i64().unwrap(),
            ));
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected = [
        ("a/one/with slash", 1, 1),
        ("a/two", 2, 1),
        ("a b/z", 1, 1),
        ("b/one", 1, 1),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(n, w, e)| (n.to_string(), *w, *e))
        .collect();
    assert_eq!(seen, expected);
    let webhook_cursor = tagcast::api::cursor::Cursor::Webhook(5).encode();
    let refused = app
        .api(
            "GET",
            &format!("/api/v1/repositories?cursor={webhook_cursor}"),
            Some(&r),
            None,
        )
        .await;
    assert_eq!(refused.status, 400, "a cursor of another list");

    let me = app.api("GET", "/api/v1/token", Some(&r), None).await;
    assert_eq!(me.body, json!({"name": "looker", "scope": "read"}));
    assert_eq!(
        app.api("GET", "/api/v1/token", None, None).await.status,
        401
    );
    app.teardown().await;
}

/// A job consumed the moment it is published must find its delivery open: the reopening is
/// committed before any job is handed over (a claim skips a row whose committed state is final).
#[tokio::test]
async fn a_reopened_delivery_is_committed_before_its_job_is_published() {
    use tagcast::store::admin::{Reopen, reopen};
    let app = TestApp::spawn().await;
    let hook = app
        .insert_webhook_for(
            "ns",
            "race",
            "h",
            "http://127.0.0.1:9/",
            crate::support::app::Trigger::All,
            None,
        )
        .await;
    let id: uuid::Uuid = app
        .pg
        .query_one(
            "INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status,
                                     attempts, request_body, created_at, occurred_at, watched)
             VALUES (gen_random_uuid(), 'e1', $1, 'ns', 'race', 'v1', 'sha256:00', 'failed', 3, '{}', now(), now(), false)
             RETURNING id",
            &[&hook],
        )
        .await
        .unwrap()
        .get(0);
    let pool = tagcast::store::connect(&app.settings.database_url, 2).unwrap();
    let pg = &app.pg;
    let opened = reopen(&pool, Reopen::One(id), |jobs| async move {
        // Another connection, as the job stage's claim would be.
        let status: String = pg
            .query_one("SELECT status FROM deliveries WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            status, "pending",
            "committed before the job {jobs:?} is published"
        );
        Ok::<(), std::convert::Infallible>(())
    })
    .await
    .unwrap();
    assert_eq!(opened, Ok(1));
    tagcast::store::close(&pool);
    app.teardown().await;
}
