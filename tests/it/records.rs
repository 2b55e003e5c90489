//! Records at scale (contract section 15): the daily partitions of the access records, made ahead
//! and dropped past the retention, once across replicas; idempotency at a partition boundary; and
//! the migration of records kept before the tables were partitioned.

use chrono::{DateTime, Days, Utc};
use std::sync::Arc;

use tagcast::events::{BuildEvent, Repository};
use tagcast::model::{DeliveryStatus, delivery_id};
use tagcast::store::partitions::{self, Maintained};
use tagcast::store::{self, Pool};
use tagcast::store::{Decision, EventDecisions};
use uuid::Uuid;

use crate::support::app::{SECOND, TestApp, Trigger, event, event_for, test_settings};
use crate::support::receiver::Receiver;
use crate::support::{ScratchDatabase, pg_connect};

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
}

async fn scratch() -> (ScratchDatabase, Pool, tokio_postgres::Client) {
    let db = ScratchDatabase::create().await;
    let pool = store::connect(&db.url.parse().unwrap(), 2).unwrap();
    store::migrate(&pool).await.unwrap();
    let client = pg_connect(&db.url).await;
    (db, pool, client)
}

async fn webhook(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "INSERT INTO webhooks (namespace, repository, name, url) VALUES ('ns', 'repo', 'w', 'http://127.0.0.1:9/')
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A finished delivery of an event that happened at `occurred_at`, with one attempt; its id.
async fn record(client: &tokio_postgres::Client, webhook: i64, occurred_at: DateTime<Utc>) -> Uuid {
    let event_id = Uuid::new_v4().to_string();
    let id = delivery_id(&event_id, webhook, occurred_at);
    client
        .execute(
            "WITH d AS (
                INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status, attempts,
                                        occurred_at, watched)
                VALUES ($1, $2, $3, 'ns', 'repo', 'v1', 'sha256:00', 'succeeded', 1, $4, false)
                RETURNING id, occurred_at)
             INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status, occurred_at)
             SELECT id, 1, now(), 5, 200, occurred_at FROM d",
            &[&id, &event_id, &webhook, &occurred_at],
        )
        .await
        .unwrap();
    id
}

/// The partition of `deliveries` a record is in.
async fn partition_of(client: &tokio_postgres::Client, id: Uuid) -> Option<String> {
    client
        .query_opt(
            "SELECT tableoid::regclass::text FROM deliveries WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn partitions(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = $1::text::regclass ORDER BY 1",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn connections_plan_without_jit_unless_the_url_asks_for_it() {
    let db = ScratchDatabase::create().await;
    let jit = |url: String| async move {
        let pool = store::connect(&url.parse().unwrap(), 1).unwrap();
        let row = pool
            .get()
            .await
            .unwrap()
            .query_one("SHOW jit", &[])
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    assert_eq!(jit(db.url.clone()).await, "off");
    let separator = if db.url.contains('?') { '&' } else { '?' };
    assert_eq!(
        jit(format!("{}{separator}options=-c%20jit%3Don", db.url)).await,
        "on"
    );
}

#[tokio::test]
async fn partitions_are_made_ahead_and_dropped_whole_past_the_retention() {
    let (_db, pool, client) = scratch().await;
    // Migrating made today's partition and the days ahead.
    let today = Utc::now().date_naive();
    let names = partitions(&client, "deliveries").await;
    for n in 0..=partitions::AHEAD {
        let day = today + Days::new(n);
        assert!(
            names.contains(&format!("deliveries_p{}", day.format("%Y%m%d"))),
            "{day}: {names:?}"
        );
    }
    assert!(
        names.contains(&"deliveries_default".to_owned()),
        "{names:?}"
    );

    // Time moves on, under control: noon on 2031-03-10, two days of retention.
    let retention = Some(2 * DAY);
    let done = partitions::maintain(&pool, at("2031-03-10T12:00:00Z"), retention)
        .await
        .unwrap();
    assert_eq!(done.created.len(), 4, "{done:?}");
    assert_eq!(done.created[0].to_string(), "2031-03-10");
    // Every partition of 2026 is past the retention by now: dropped, with its attempts.
    assert!(
        done.dropped
            .iter()
            .all(|n| n.starts_with("deliveries_p2026")),
        "{done:?}"
    );
    assert_eq!(
        done.dropped.len(),
        1 + partitions::AHEAD as usize,
        "{done:?}"
    );
    assert!(
        !partitions(&client, "delivery_attempts")
            .await
            .iter()
            .any(|n| n.contains("2026"))
    );

    let hook = webhook(&client).await;
    let first = record(&client, hook, at("2031-03-10T23:59:59.999Z")).await;
    let second = record(&client, hook, at("2031-03-11T00:00:00Z")).await;
    // An event stamped long before every partition goes to the default partition.
    let stray = record(&client, hook, at("2016-11-29T04:25:46Z")).await;
    assert_eq!(
        partition_of(&client, first).await.as_deref(),
        Some("deliveries_p20310310")
    );
    assert_eq!(
        partition_of(&client, second).await.as_deref(),
        Some("deliveries_p20310311")
    );
    assert_eq!(
        partition_of(&client, stray).await.as_deref(),
        Some("deliveries_default")
    );

    // Again the same day: nothing more to do.
    let again = partitions::maintain(&pool, at("2031-03-10T18:00:00Z"), retention)
        .await
        .unwrap();
    assert_eq!(
        again,
        Maintained {
            deleted: 1,
            ..Maintained::default()
        },
        "the stray record is past the retention"
    );

    // Two days and half an hour later: 2031-03-10 is wholly older than the retention, the 11th
    // is not yet.
    let later = partitions::maintain(&pool, at("2031-03-13T00:30:00Z"), retention)
        .await
        .unwrap();
    assert_eq!(later.dropped, ["deliveries_p20310310"]);
    assert_eq!(
        later
            .created
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["2031-03-14", "2031-03-15", "2031-03-16"]
    );
    assert_eq!(partition_of(&client, first).await, None);
    assert_eq!(
        partition_of(&client, second).await.as_deref(),
        Some("deliveries_p20310311")
    );
    assert_eq!(count(&client, "SELECT count(*) FROM deliveries").await, 1);
    assert_eq!(
        count(&client, "SELECT count(*) FROM delivery_attempts").await,
        1
    );
    assert!(
        !partitions(&client, "delivery_attempts")
            .await
            .contains(&"delivery_attempts_p20310310".to_owned())
    );
}

#[tokio::test]
async fn one_replica_at_a_time_looks_after_the_partitions() {
    let (_db, pool, client) = scratch().await;
    let mut other = pg_connect(&_db.url).await;
    // Another replica in the middle of a round holds the lock.
    let round = other.transaction().await.unwrap();
    round
        .execute("SELECT pg_advisory_xact_lock($1)", &[&partitions::LOCK_KEY])
        .await
        .unwrap();
    let meanwhile = partitions::maintain(&pool, at("2031-03-10T12:00:00Z"), Some(DAY))
        .await
        .unwrap();
    assert_eq!(
        meanwhile,
        Maintained {
            skipped: true,
            ..Maintained::default()
        }
    );
    assert!(
        !partitions(&client, "deliveries")
            .await
            .contains(&"deliveries_p20310310".to_owned())
    );
    round.commit().await.unwrap();
    let after = partitions::maintain(&pool, at("2031-03-10T12:00:00Z"), Some(DAY))
        .await
        .unwrap();
    assert!(!after.skipped && after.created.len() == 4, "{after:?}");
}

/// Events stamped on either side of midnight UTC, each delivered twice: one record and one request
/// each, in the partition of its own day.
#[tokio::test]
async fn an_event_redelivered_at_a_partition_boundary_is_recorded_once() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/a"), Trigger::All)
        .await;
    let tomorrow = Utc::now().date_naive() + Days::new(1);
    let midnight = tomorrow.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let stamps = [midnight - chrono::Duration::microseconds(1), midnight];
    let events: Vec<_> = stamps
        .iter()
        .map(|t| {
            let mut e = event("latest");
            e["occurred_at"] = t
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into();
            e
        })
        .collect();
    for e in &events {
        app.publish_event(e).await;
    }
    let first = app.statuses(2, 10 * SECOND).await;
    for e in &events {
        app.publish_event(e).await;
    }
    let again = app.statuses(2, 10 * SECOND).await;
    let ids = |s: &[serde_json::Value]| {
        let mut v: Vec<String> = s.iter().map(|x| x["delivery_id"].to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&first), ids(&again));
    assert_eq!(receiver.count(), 2, "nothing that succeeded is sent again");
    let rows = app
        .pg
        .query(
            "SELECT tableoid::regclass::text FROM deliveries ORDER BY occurred_at",
            &[],
        )
        .await
        .unwrap();
    let homes: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let day = |d: chrono::NaiveDate| format!("deliveries_p{}", d.format("%Y%m%d"));
    assert_eq!(homes, [day(tomorrow - Days::new(1)), day(tomorrow)]);
    app.teardown().await;
}

/// The statements that record a batch name its day's partition, and fall back on the parent
/// table when that day has none: an event stamped beyond the partitions made ahead is recorded,
/// delivered and finished in the default partition, beside one of today.
#[tokio::test]
async fn a_day_without_a_partition_is_recorded_in_the_default_one() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    app.insert_webhook("a", &receiver.url("/a"), Trigger::All)
        .await;
    let now = Utc::now();
    for stamp in [now, now + chrono::Duration::days(10)] {
        let mut e = event("latest");
        e["occurred_at"] = stamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .into();
        app.publish_event(&e).await;
        let status = app.statuses(1, 10 * SECOND).await;
        assert_eq!(status[0]["status"], "succeeded", "{status:?}");
    }
    let rows = app
        .pg
        .query(
            "SELECT d.tableoid::regclass::text, d.status, d.attempts, count(a.*)
               FROM deliveries d LEFT JOIN delivery_attempts a ON a.delivery_id = d.id
              GROUP BY 1, 2, 3, d.occurred_at ORDER BY d.occurred_at",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String, i32, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let today = format!("deliveries_p{}", now.date_naive().format("%Y%m%d"));
    assert_eq!(
        seen,
        [
            (today, "succeeded".to_owned(), 1, 1),
            (
                "deliveries_default".to_owned(),
                "succeeded".to_owned(),
                1,
                1
            ),
        ]
    );
    assert_eq!(receiver.count(), 2);
    app.teardown().await;
}

/// A database whose records were written before partitioning: every migration before it applied
/// by hand, records written, then tagcast's migrations run.
#[tokio::test]
async fn records_kept_before_partitioning_stay_readable_and_go_with_the_retention() {
    let db = ScratchDatabase::create().await;
    let client = pg_connect(&db.url).await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().as_ref() < "20261203000003")
        .collect();
    files.sort();
    client
        .batch_execute(
            "CREATE TABLE tagcast_migrations (version bigint PRIMARY KEY, description text NOT NULL,
                                              checksum bytea, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    for file in &files {
        client
            .batch_execute(&std::fs::read_to_string(file).unwrap())
            .await
            .unwrap();
        let version: i64 = file.file_name().unwrap().to_string_lossy()[..14]
            .parse()
            .unwrap();
        client
            .execute(
                "INSERT INTO tagcast_migrations (version, description) VALUES ($1, 'by hand')",
                &[&version],
            )
            .await
            .unwrap();
    }
    let hook = webhook(&client).await;
    // Ids as they were made then: random-looking, no time in them.
    let old_id = Uuid::new_v8([7; 16]);
    let yesterday = DateTime::from_timestamp(Utc::now().timestamp() - 86_400, 0).unwrap();
    client
        .execute(
            "INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status, attempts,
                                     occurred_at, request_body, watched)
             VALUES ($1, 'old-event', $2, 'ns', 'repo', 'v1', 'sha256:00', 'failed', 1, $3, '{}', false)",
            &[&old_id, &hook, &yesterday],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status)
             VALUES ($1, 1, now(), 5, 500)",
            &[&old_id],
        )
        .await
        .unwrap();

    let pool = store::connect(&db.url.parse().unwrap(), 2).unwrap();
    store::migrate(&pool).await.unwrap();
    assert_eq!(
        partition_of(&client, old_id).await.as_deref(),
        Some("deliveries_legacy")
    );
    // Read by id as before: the admin API's detail, with its attempt.
    let detail = store::admin::get_delivery(&pool, old_id)
        .await
        .unwrap()
        .expect("found");
    assert_eq!(detail.attempts.len(), 1);
    assert_eq!(detail.attempts[0].http_status, Some(500));
    // The event again, as the event stage records it: no second record, the old one comes back.
    let event = BuildEvent {
        event_id: "old-event".to_owned(),
        occurred_at: yesterday.fixed_offset(),
        repository: Repository {
            namespace: "ns".to_owned(),
            name: "repo".to_owned(),
            region: "cn-hangzhou".to_owned(),
            date_created: yesterday.fixed_offset(),
            repo_authentication_type: "NO_CERTIFIED".to_owned(),
            repo_origin_type: "NO_CERTIFIED".to_owned(),
            repo_type: "PUBLIC".to_owned(),
        },
        tag: "v1".to_owned(),
        digest: "sha256:00".to_owned(),
    };
    let again = store::deliveries::record_decisions(
        &pool,
        store::Lease::covering(10 * SECOND),
        vec![EventDecisions {
            event: Arc::new(event),
            body: Arc::from("{}"),
            decisions: vec![Decision {
                id: delivery_id("old-event", hook, yesterday),
                webhook_id: hook,
                status: DeliveryStatus::Pending,
                error: None,
                claim_first_attempt: false,
                hold_until: None,
            }],
        }],
    )
    .await
    .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].len(), 1);
    assert!(!again[0][0].created);
    assert_eq!(
        again[0][0].record.id, old_id,
        "the record of the first time, with its id"
    );
    assert_eq!(count(&client, "SELECT count(*) FROM deliveries").await, 1);
    // New records go to the daily partitions beside it.
    let new = record(&client, hook, Utc::now() + chrono::Duration::days(2)).await;
    assert!(
        partition_of(&client, new)
            .await
            .unwrap()
            .starts_with("deliveries_p")
    );

    // Once the retention has passed over everything in it, the old table goes whole.
    let done = partitions::maintain(&pool, Utc::now() + chrono::Duration::days(2), Some(DAY))
        .await
        .unwrap();
    assert!(
        done.dropped.contains(&"deliveries_legacy".to_owned()),
        "{done:?}"
    );
    assert_eq!(partition_of(&client, old_id).await, None);
    assert!(
        !partitions(&client, "delivery_attempts")
            .await
            .contains(&"delivery_attempts_legacy".to_owned())
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM delivery_attempts").await,
        1
    );
    // Deleting the webhook still takes its records and their attempts with it.
    client
        .execute("DELETE FROM webhooks WHERE id = $1", &[&hook])
        .await
        .unwrap();
    assert_eq!(count(&client, "SELECT count(*) FROM deliveries").await, 0);
    assert_eq!(
        count(&client, "SELECT count(*) FROM delivery_attempts").await,
        0
    );
}

/// Changing repository A's webhook drops A's cached configuration only: B's next event finds its
/// webhooks in the cache, A's loads them again.
#[tokio::test]
async fn a_change_to_one_repository_does_not_reload_another() {
    let mut app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    let a = app
        .insert_webhook_for("ns", "a", "hook", &receiver.url("/a"), Trigger::All, None)
        .await;
    app.insert_webhook_for("ns", "b", "hook", &receiver.url("/b"), Trigger::All, None)
        .await;
    // The inserts' notifications are taken in before the first event.
    tokio::time::sleep(SECOND).await;
    let hits = r#"tagcast_webhook_cache_lookups_total{result="hit"}"#;
    let misses = r#"tagcast_webhook_cache_lookups_total{result="miss"}"#;
    for repo in ["a", "b", "b"] {
        app.publish_event(&event_for("ns", repo, "v1")).await;
        app.next_status(10 * SECOND).await;
    }
    assert_eq!(
        (app.metric(hits).await, app.metric(misses).await),
        (1.0, 2.0)
    );

    let scope = r#"tagcast_webhook_cache_invalidations_total{scope="repository"}"#;
    let before = app.metric(scope).await;
    app.pg
        .execute(
            "UPDATE webhooks SET url = $1 WHERE id = $2",
            &[&receiver.url("/a2"), &a],
        )
        .await
        .unwrap();
    app.wait_metric(scope, before + 1.0, 5 * SECOND).await;
    app.publish_event(&event_for("ns", "b", "v2")).await;
    app.next_status(10 * SECOND).await;
    assert_eq!(
        (app.metric(hits).await, app.metric(misses).await),
        (2.0, 2.0),
        "B was not reloaded"
    );
    app.publish_event(&event_for("ns", "a", "v2")).await;
    let status = app.next_status(10 * SECOND).await;
    assert_eq!(status["status"], "succeeded");
    assert_eq!(app.metric(misses).await, 3.0, "A was");
    let mut paths = Vec::new();
    for _ in 0..5 {
        paths.push(receiver.next(SECOND).await.path_and_query);
    }
    assert_eq!(paths, ["/a", "/b", "/b", "/b", "/a2"], "A with its new URL");
    app.teardown().await;
}

/// However many repositories events name, the cache holds about its setting's worth.
#[tokio::test]
async fn the_cache_holds_no_more_webhooks_than_its_setting() {
    let mut settings = test_settings();
    settings.webhook_cache_size = 8;
    let mut app = TestApp::spawn_with(settings).await;
    let receiver = Receiver::always(200).await;
    for n in 0..12 {
        let repo = format!("r{n}");
        app.insert_webhook_for("ns", &repo, "hook", &receiver.url("/"), Trigger::All, None)
            .await;
    }
    tokio::time::sleep(SECOND).await;
    for round in 0..2 {
        for n in 0..12 {
            app.publish_event(&event_for("ns", &format!("r{n}"), &format!("v{round}")))
                .await;
            app.next_status(10 * SECOND).await;
            let held = app.metric("tagcast_webhook_cache_webhooks").await;
            assert!(held <= 8.0, "{held} webhooks and repositories held");
        }
    }
    assert!(app.metric("tagcast_webhook_cache_repositories").await >= 1.0);
    assert_eq!(receiver.count(), 24, "every event delivered, cached or not");
    app.teardown().await;
}
