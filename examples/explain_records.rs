//! Shows how the admin API reads a page of access records from a large table: loads a million
//! records (or `--records N`) into a database of its own, over 1,000 webhooks of 100
//! repositories, then prints `EXPLAIN (ANALYZE, BUFFERS)` of the very queries the API runs: a
//! webhook's first page, a page after a cursor, and a repository's page filtered by status and
//! tag. The database is dropped at the end.
//!
//! Run with `cargo run --release --example explain_records [-- --records N]`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use chrono::{Duration, Utc};
use tagcast::model::DeliveryStatus;
use tagcast::store::admin::{RecordFilter, RecordsOf, explain_deliveries, list_deliveries};

#[tokio::main]
async fn main() {
    let mut records: i64 = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--records" => {
                records = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--records needs a number")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let db = support::ScratchDatabase::create().await;
    let pool = tagcast::store::connect(&db.url.parse().unwrap(), 2).unwrap();
    tagcast::store::migrate(&pool).await.unwrap();
    let client = pool.get().await.unwrap();

    let started = Instant::now();
    client
        .batch_execute(
            "INSERT INTO webhooks (namespace, repository, name, url)
             SELECT 'ns', 'repo' || (i % 100), 'hook' || i, 'https://example.com/' || i
               FROM generate_series(0, 999) AS i",
        )
        .await
        .unwrap();
    // Spread over the last 30 days, as a busy registry's records are; a tenth not triggered,
    // a twentieth failed, tags from a small set.
    client
        .execute(
            "INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status, attempts,
                                     http_status, request_body, created_at, updated_at, occurred_at, watched)
             SELECT gen_random_uuid(), 'event-' || (i / 10), w.id, w.namespace, w.repository,
                    'v' || (i % 50), 'sha256:00',
                    CASE WHEN i % 10 = 0 THEN 'not_triggered' WHEN i % 20 = 1 THEN 'failed' ELSE 'succeeded' END,
                    CASE WHEN i % 10 = 0 THEN 0 ELSE 1 END, CASE WHEN i % 10 = 0 THEN NULL ELSE 200 END,
                    '{\"push_data\":{}}', t, t, t, false
               FROM generate_series(0::bigint, $1::bigint - 1) AS i
               JOIN webhooks w ON w.id = 1 + (i * 7919) % 1000
              CROSS JOIN LATERAL (SELECT now() - make_interval(secs => (i::float8 / $1::bigint) * 30 * 86400)) AS c(t)",
            &[&records],
        )
        .await
        .unwrap();
    client
        .batch_execute("VACUUM ANALYZE deliveries")
        .await
        .unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM deliveries", &[])
        .await
        .unwrap()
        .get(0);
    let size: String = client
        .query_one(
            "SELECT pg_size_pretty(pg_total_relation_size('deliveries'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!(
        "loaded {count} records ({size} with indexes) in {:.1?}\n",
        started.elapsed()
    );
    drop(client);

    let webhook = RecordsOf::Webhook(42);
    let first = list_deliveries(&pool, webhook, &RecordFilter::default(), 50)
        .await
        .unwrap();
    let last = first.last().expect("webhook 42 has records");
    let after = RecordFilter {
        before: Some((last.created_at, last.id)),
        ..RecordFilter::default()
    };
    let filtered = RecordFilter {
        status: Some(DeliveryStatus::Failed),
        tag: Some("v21".into()),
        since: Some(Utc::now() - Duration::days(7)),
        ..RecordFilter::default()
    };
    let repository = RecordsOf::Repository {
        namespace: "ns",
        repository: "repo99",
    };
    let queries = [
        (
            "a webhook's first page (limit 50)",
            webhook,
            RecordFilter::default(),
        ),
        ("the page after its cursor", webhook, after),
        (
            "a repository's failed records of tag v21 in the last 7 days",
            repository,
            filtered,
        ),
    ];
    for (what, of, filter) in queries {
        println!("== {what}");
        for line in explain_deliveries(&pool, of, &filter, 51).await.unwrap() {
            println!("{line}");
        }
        println!();
    }
    tagcast::store::close(&pool);
}
