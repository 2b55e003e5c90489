//! Growth: the drain of fan-out 1 with millions of access records already in the table, loaded
//! with `COPY`, so that what a full table costs an insert shows; and, at the largest size, the
//! plans of the admin API's record pages.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use tagcast::model::{DeliveryStatus, delivery_id};
use tagcast::store::admin::{RecordFilter, RecordsOf, explain_deliveries};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::cpu::settle;
use crate::floor::notification;
use crate::measures::{Drain, timed_drain};
use crate::support::{CountingReceiver, Env, Worker, event_body};

/// The loaded records' webhooks: 1,000 over 100 repositories of their own.
const LOADED_WEBHOOKS: i64 = 1_000;

/// One size of table and the drains measured on it.
pub(crate) struct Grown {
    pub(crate) records: u64,
    pub(crate) drains: Vec<Drain>,
}

/// Drains `events` events `runs` times on a table of each of `sizes` records (ascending), the
/// records spread over the `days` before now. `binary` migrates the database to its own schema,
/// so an earlier build is measured on its earlier schema.
pub(crate) async fn growth(
    binary: &str,
    events: usize,
    sizes: &[u64],
    days: u32,
    runs: usize,
) -> Vec<Grown> {
    let env = Env::unmigrated("growth").await;
    env.bind_status_queue().await;
    let receiver = CountingReceiver::start().await;
    let mut worker = Worker::spawn(&env, binary);
    assert!(env.ready(Duration::from_secs(60)).await);
    worker.terminate(Duration::from_secs(30));
    let partitioned: bool = env
        .client()
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'deliveries'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if partitioned {
        // The daily partitions the loaded days would have had, made as the sweeper made them.
        let now = Utc::now();
        for back in (1..=i64::from(days)).rev() {
            tagcast::store::partitions::maintain(&env.pg, now - chrono::Duration::days(back), None)
                .await
                .unwrap();
        }
    }
    env.insert_webhooks(receiver.addr, 1).await;
    // Nothing listens on port 9: the loaded webhooks are never called.
    env.client()
        .await
        .execute(
            "INSERT INTO webhooks (namespace, repository, name, url)
             SELECT 'ns', 'repo' || (i % 100), 'hook' || i, 'http://127.0.0.1:9/' || i
               FROM generate_series(1, $1::bigint) AS i",
            &[&LOADED_WEBHOOKS],
        )
        .await
        .unwrap();
    let hooks: Vec<i64> = env
        .client()
        .await
        .query(
            "SELECT id FROM webhooks WHERE namespace = 'ns' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!(
        "growth: {} schema, records over the last {days} days",
        if partitioned {
            "partitioned"
        } else {
            "unpartitioned"
        }
    );
    // Not measured: the first drain on a new database pays for its first plans, statistics and
    // connections, which is not what a table's size costs.
    let bodies = (0..events)
        .map(|_| event_body(&Uuid::new_v4().to_string()))
        .collect();
    let succeeded = drained_since(&env).await;
    timed_drain(&env, binary, &receiver, bodies, events, &succeeded, None).await;
    let mut loaded = 0;
    let mut grown = Vec::new();
    for &size in sizes {
        let started = Instant::now();
        load(&env, size.saturating_sub(loaded), days, &hooks, partitioned).await;
        loaded = loaded.max(size);
        let client = env.client().await;
        // What autovacuum would do after the load, done now so that it does not run during the
        // drains (one statement each: VACUUM cannot run in a transaction).
        for statement in [
            "VACUUM ANALYZE deliveries",
            "VACUUM ANALYZE delivery_attempts",
            "CHECKPOINT",
        ] {
            client.batch_execute(statement).await.unwrap();
        }
        let bytes: String = client
            .query_one(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid)))
                   FROM pg_class c WHERE c.relkind = 'r'
                    AND (c.relname LIKE 'deliveries%' OR c.relname LIKE 'delivery_attempts%')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        drop(client);
        println!(
            "  {size} records and their attempts ({bytes} with indexes), loaded in {:.0?}",
            started.elapsed()
        );
        let mut drains = Vec::new();
        for _ in 0..runs {
            settle(Duration::from_secs(600)).await;
            let bodies = (0..events)
                .map(|_| event_body(&Uuid::new_v4().to_string()))
                .collect();
            let succeeded = drained_since(&env).await;
            let before = Counters::read(&env).await;
            let d = timed_drain(&env, binary, &receiver, bodies, events, &succeeded, None).await;
            let spent = Counters::read(&env).await.since(&before);
            println!(
                "    {:.0} deliveries/s; CPU s per 1,000: tagcast {:.3}, PostgreSQL {:.3}",
                d.per_second, d.cpu_per_1000, d.database_per_1000
            );
            spent.print(events);
            drains.push(d);
        }
        grown.push(Grown {
            records: size,
            drains,
        });
    }
    if partitioned {
        explain(&env).await;
    }
    env.destroy().await;
    grown
}

/// The count that tells when a drain is done: its own webhook's records made from now on, one
/// index range per partition. Counting the earlier drains' records as well read 140,000 rows
/// per count by the third drain at 10 million records (139,000 buffers, 29,000 of them read;
/// 0.45 s while a load ran), more with each drain run before, so the larger tables, measured
/// later, were charged the most.
async fn drained_since(env: &Env) -> String {
    let now: DateTime<Utc> = env
        .client()
        .await
        .query_one("SELECT now()", &[])
        .await
        .unwrap()
        .get(0);
    format!(
        "SELECT count(*) FROM deliveries
          WHERE namespace = 'chaos' AND repository = 'repo' AND created_at >= '{}'
            AND status = 'succeeded'",
        now.to_rfc3339()
    )
}

/// What PostgreSQL counts of its own work, read before and after a drain to tell where its CPU
/// went: WAL written by the whole cluster (full-page images above all, which a random index
/// insert makes after every checkpoint), this database's shared buffers hit and read, and its
/// autovacuum runs.
struct Counters {
    wal_records: i64,
    wal_fpi: i64,
    wal_bytes: f64,
    blocks_hit: i64,
    blocks_read: i64,
    autovacuums: i64,
}

impl Counters {
    async fn read(env: &Env) -> Counters {
        // Backends report their counts when idle, at most once a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let row = env
            .client()
            .await
            .query_one(
                "SELECT w.wal_records, w.wal_fpi, w.wal_bytes::float8, d.blks_hit, d.blks_read,
                        (SELECT sum(autovacuum_count + autoanalyze_count)::bigint FROM pg_stat_user_tables)
                   FROM pg_stat_wal w, pg_stat_database d WHERE d.datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        Counters {
            wal_records: row.get(0),
            wal_fpi: row.get(1),
            wal_bytes: row.get(2),
            blocks_hit: row.get(3),
            blocks_read: row.get(4),
            autovacuums: row.get::<_, Option<i64>>(5).unwrap_or(0),
        }
    }

    fn since(&self, before: &Counters) -> Counters {
        Counters {
            wal_records: self.wal_records - before.wal_records,
            wal_fpi: self.wal_fpi - before.wal_fpi,
            wal_bytes: self.wal_bytes - before.wal_bytes,
            blocks_hit: self.blocks_hit - before.blocks_hit,
            blocks_read: self.blocks_read - before.blocks_read,
            autovacuums: self.autovacuums - before.autovacuums,
        }
    }

    fn print(&self, deliveries: usize) {
        let per_1000 = |n: f64| n / deliveries as f64 * 1000.0;
        println!(
            "      per 1,000: WAL {:.0} records, {:.0} full pages, {:.2} MB; buffers {:.0} hit, {:.0} read; {} autovacuum runs",
            per_1000(self.wal_records as f64),
            per_1000(self.wal_fpi as f64),
            per_1000(self.wal_bytes) / 1e6,
            per_1000(self.blocks_hit as f64),
            per_1000(self.blocks_read as f64),
            self.autovacuums
        );
    }
}

/// Adds `count` finished records (a tenth not triggered, a twentieth failed) with an attempt
/// each, spread evenly over the `days` before now, through two `COPY` streams in parallel.
async fn load(env: &Env, count: u64, days: u32, hooks: &[i64], partitioned: bool) {
    if count == 0 {
        return;
    }
    let body = notification();
    let until = Utc::now() - chrono::Duration::hours(1);
    let from = until - chrono::Duration::days(i64::from(days));
    let streams: u64 = 2;
    let tasks = (0..streams).map(|s| {
        let (first, last) = (count * s / streams, count * (s + 1) / streams);
        let body = body.clone();
        let hooks = hooks.to_vec();
        let span = (until - from).num_microseconds().unwrap_or(0) as f64;
        let at = move |i: u64| {
            from + chrono::Duration::microseconds((span * i as f64 / count as f64) as i64)
        };
        async move {
            let deliveries = env.client().await;
            let attempts = env.client().await;
            let sink = deliveries
                .copy_in(
                    "COPY deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status,
                                      attempts, http_status, request_body, created_at, updated_at,
                                      occurred_at, duration_ms, watched) FROM STDIN BINARY",
                )
                .await
                .unwrap();
            let d = BinaryCopyInWriter::new(
                sink,
                &[
                    Type::UUID,
                    Type::TEXT,
                    Type::INT8,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::INT4,
                    Type::INT4,
                    Type::TEXT,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                    Type::INT4,
                    Type::BOOL,
                ],
            );
            pin_mut!(d);
            let sink = attempts
                .copy_in(if partitioned {
                    "COPY delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status,
                                             response_body, occurred_at) FROM STDIN BINARY"
                } else {
                    "COPY delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status,
                                             response_body) FROM STDIN BINARY"
                })
                .await
                .unwrap();
            let attempt_types = [
                Type::UUID,
                Type::INT4,
                Type::TIMESTAMPTZ,
                Type::INT4,
                Type::INT4,
                Type::TEXT,
                Type::TIMESTAMPTZ,
            ];
            let a = BinaryCopyInWriter::new(
                sink,
                &attempt_types[..if partitioned { 7 } else { 6 }],
            );
            pin_mut!(a);
            for i in first..last {
                let occurred_at: DateTime<Utc> = at(i);
                let event_id = Uuid::new_v4().to_string();
                let webhook = hooks[(i * 7919) as usize % hooks.len()];
                // Each schema's own ids: time-ordered where partitioned, as random as the
                // earlier hash elsewhere.
                let id = if partitioned {
                    delivery_id(&event_id, webhook, occurred_at)
                } else {
                    Uuid::new_v4()
                };
                let status = match i {
                    i if i % 10 == 0 => DeliveryStatus::NotTriggered,
                    i if i % 20 == 1 => DeliveryStatus::Failed,
                    _ => DeliveryStatus::Succeeded,
                };
                let triggered = status != DeliveryStatus::NotTriggered;
                let http_status = triggered.then_some(if status == DeliveryStatus::Failed {
                    500
                } else {
                    200
                });
                let repository = format!("repo{}", webhook % 100);
                let tag = format!("v{}", i % 50);
                let request_body = triggered.then_some(body.as_str());
                let row: [&(dyn ToSql + Sync); 16] = [
                    &id,
                    &event_id,
                    &webhook,
                    &"ns",
                    &repository,
                    &tag,
                    &"sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917",
                    &status.as_str(),
                    &i32::from(triggered),
                    &http_status,
                    &request_body,
                    &occurred_at,
                    &occurred_at,
                    &occurred_at,
                    &triggered.then_some(2i32),
                    &false,
                ];
                d.as_mut().write(&row).await.unwrap();
                if triggered {
                    let attempt: [&(dyn ToSql + Sync); 7] = [
                        &id,
                        &1i32,
                        &occurred_at,
                        &2i32,
                        &http_status,
                        &"ok",
                        &occurred_at,
                    ];
                    a.as_mut()
                        .write(&attempt[..if partitioned { 7 } else { 6 }])
                        .await
                        .unwrap();
                }
            }
            // The attempts' stream second: their key refers to the deliveries.
            d.finish().await.unwrap();
            a.finish().await.unwrap();
        }
    });
    futures_util::future::join_all(tasks).await;
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the pages the admin API reads: a webhook's first page, the
/// page after its cursor, and a repository's page filtered by status, tag and time.
async fn explain(env: &Env) {
    let pool = &env.pg;
    let webhook = RecordsOf::Webhook(LOADED_WEBHOOKS / 2);
    let first = tagcast::store::admin::list_deliveries(pool, webhook, &RecordFilter::default(), 50)
        .await
        .unwrap();
    let last = first.last().expect("the webhook has records");
    let after = RecordFilter {
        before: Some((last.created_at, last.id)),
        ..RecordFilter::default()
    };
    // A repository and tag that have failed records (the loader puts each tag's failures in
    // one repository), and one that has none, which reads the whole range of each partition.
    let failed = env
        .client()
        .await
        .query_one(
            "SELECT repository, tag FROM deliveries
              WHERE namespace = 'ns' AND status = 'failed' LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (with, tag): (String, String) = (failed.get(0), failed.get(1));
    let without = if with == "repo42" { "repo43" } else { "repo42" };
    let filtered = RecordFilter {
        status: Some(DeliveryStatus::Failed),
        tag: Some(tag.clone()),
        since: Some(Utc::now() - chrono::Duration::days(7)),
        ..RecordFilter::default()
    };
    let queries = [
        (
            "a webhook's first page (limit 50)".to_string(),
            webhook,
            RecordFilter::default(),
        ),
        ("the page after its cursor".to_string(), webhook, after),
        (
            format!("{with}'s failed records of tag {tag} in the last 7 days"),
            RecordsOf::Repository {
                namespace: "ns",
                repository: &with,
            },
            filtered.clone(),
        ),
        (
            format!("{without}'s failed records of tag {tag} in the last 7 days (none)"),
            RecordsOf::Repository {
                namespace: "ns",
                repository: without,
            },
            filtered,
        ),
    ];
    for (what, of, filter) in queries {
        println!("== {what}");
        for line in explain_deliveries(pool, of, &filter, 51).await.unwrap() {
            println!("{line}");
        }
        println!();
    }
}
