//! Many repositories: a backlog of events spread over 50,000 repositories of two webhooks each
//! (100,000 webhooks), drained while ten webhooks a second change, beside the same backlog for a
//! single repository of two webhooks.

use std::time::Duration;

use uuid::Uuid;

use crate::cpu::settle;
use crate::measures::{Changes, Drain, timed_drain};
use crate::support::{CountingReceiver, Env, Worker};

/// Webhooks per repository: the fan-out of every event.
const PER_REPOSITORY: usize = 2;

/// The drains of one run: one repository, then `repositories` of them.
pub(crate) struct Spread {
    pub(crate) single: Drain,
    pub(crate) spread: Drain,
    pub(crate) repositories: usize,
    pub(crate) changes_per_second: u32,
}

pub(crate) async fn repositories(
    binary: &str,
    events: usize,
    repositories: usize,
    changes_per_second: u32,
) -> Spread {
    let single = backlog(binary, events, 1, 0).await;
    let spread = backlog(binary, events, repositories, changes_per_second).await;
    Spread {
        single,
        spread,
        repositories,
        changes_per_second,
    }
}

/// Drains `events` events, the i-th for repository `repo{i * 7919 % repositories}` (every
/// repository in turn, in an order unrelated to the webhooks' ids), each repository with
/// [`PER_REPOSITORY`] webhooks, while `changes_per_second` random webhooks change.
async fn backlog(
    binary: &str,
    events: usize,
    repositories: usize,
    changes_per_second: u32,
) -> Drain {
    let env = Env::create("repos").await;
    env.bind_status_queue().await;
    let receiver = CountingReceiver::start().await;
    let ids: Vec<i64> = env
        .client()
        .await
        .query(
            "INSERT INTO webhooks (namespace, repository, name, url)
             SELECT 'chaos', 'repo' || (i % $1::bigint), 'hook' || i, $2::text || i || '?secret=x'
               FROM generate_series(0, $1::bigint * $3::bigint - 1) AS i
             RETURNING id",
            &[
                &(repositories as i64),
                &format!("http://{}/hook/", receiver.addr),
                &(PER_REPOSITORY as i64),
            ],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    env.client()
        .await
        .batch_execute("VACUUM ANALYZE webhooks")
        .await
        .unwrap();
    // Start once so the queues exist, then stop: the backlog waits for a cold start.
    let mut worker = Worker::spawn(&env, binary);
    assert!(env.ready(Duration::from_secs(30)).await);
    worker.terminate(Duration::from_secs(30));
    let bodies = (0..events)
        .map(|i| {
            tagcast::publish::Sample {
                namespace: "chaos".into(),
                repository: format!("repo{}", i * 7919 % repositories),
                tag: format!("t{}", chrono::Utc::now().timestamp_micros()),
                event_id: None,
                occurred_at: None,
            }
            .body(&Uuid::new_v4().to_string())
        })
        .collect();
    let changes = (changes_per_second > 0).then_some(Changes {
        ids,
        per_second: changes_per_second,
    });
    settle(Duration::from_secs(600)).await;
    let succeeded = "SELECT count(*) FROM deliveries WHERE status = 'succeeded'";
    let drained = timed_drain(
        &env,
        binary,
        &receiver,
        bodies,
        events * PER_REPOSITORY,
        succeeded,
        changes,
    )
    .await;
    env.destroy().await;
    drained
}

/// Medians of the runs: events per second in each case, their ratio, and the peak RSS.
pub(crate) fn print(runs: &[Spread]) {
    use crate::report::median;
    let of = |part: fn(&Spread) -> f64| median(runs.iter().map(part).collect());
    let per_event = PER_REPOSITORY as f64;
    let single = of(|s| s.single.per_second) / per_event;
    let spread = of(|s| s.spread.per_second) / per_event;
    let rss = |part: fn(&Spread) -> u64| runs.iter().map(part).max().unwrap_or(0) as f64 / 1024.0;
    let (repositories, changes) = runs
        .first()
        .map_or((0, 0), |s| (s.repositories, s.changes_per_second));
    println!(
        "| backlog | events/s | tagcast CPU s per 1,000 deliveries | PostgreSQL CPU s per 1,000 | peak RSS |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| one repository, {PER_REPOSITORY} webhooks | {single:.0} | {:.3} | {:.3} | {:.1} MiB |",
        of(|s| s.single.cpu_per_1000),
        of(|s| s.single.database_per_1000),
        rss(|s| s.single.peak_rss_kib)
    );
    println!(
        "| {repositories} repositories, {} webhooks, {changes} changes/s | {spread:.0} ({:.2} of one repository) | {:.3} | {:.3} | {:.1} MiB |",
        repositories * PER_REPOSITORY,
        spread / single,
        of(|s| s.spread.cpu_per_1000),
        of(|s| s.spread.database_per_1000),
        rss(|s| s.spread.peak_rss_kib)
    );
}
