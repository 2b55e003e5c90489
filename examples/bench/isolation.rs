//! Endpoint isolation under a failing neighbour: ten webhooks on one repository drain a backlog,
//! once all healthy and once with the tenth answering 503 to everything. Measures the other
//! nine's deliveries per second in both, and how many requests the failing one got while its
//! breaker was open, against how many probes its cooldown allows.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::measures::print_metrics;
use crate::support::CountingReceiver;
use crate::support::receiver::Receiver;
use crate::support::workload::{Env, EventPublisher, Worker, event_body};

/// The breaker's settings in these runs: tagcast's defaults.
const FAILURES: usize = 5;
const COOLDOWN: Duration = Duration::from_secs(30);

pub(crate) struct Isolation {
    /// The nine healthy webhooks' deliveries per second.
    pub(crate) nine_per_second: f64,
    /// Requests the tenth received (none when it is healthy: it is not counted then).
    pub(crate) dead_requests: usize,
    /// Of those, the ones that arrived once its breaker had opened, and the time that covers.
    pub(crate) while_open: usize,
    pub(crate) open_for: Duration,
}

impl Isolation {
    /// Probes a breaker allows in `open_for`: one each time a cooldown ends, the cooldown
    /// doubling after each failed probe.
    pub(crate) fn probes_allowed(&self) -> usize {
        let (mut at, mut cooldown, mut probes) = (Duration::ZERO, COOLDOWN, 0);
        loop {
            at += cooldown;
            if at > self.open_for {
                return probes;
            }
            probes += 1;
            cooldown = (cooldown * 2).min(Duration::from_secs(600));
        }
    }
}

/// `tagcast_breakers_open` of the worker, or 0 when it cannot be read.
async fn breakers_open(port: u16) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("tagcast_breakers_open "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One drain of `events` events to ten webhooks; `failing` makes the tenth answer 503.
pub(crate) async fn isolation(binary: &str, events: usize, failing: bool) -> Isolation {
    let env = Env::create("iso").await;
    let nine = CountingReceiver::start().await;
    let healthy_tenth = CountingReceiver::start().await;
    let dead = Receiver::always(503).await;
    let tenth = if failing {
        dead.addr
    } else {
        healthy_tenth.addr
    };
    let client = env.client().await;
    for i in 0..10 {
        let addr = if i < 9 { nine.addr } else { tenth };
        client
            .execute(
                "INSERT INTO webhooks (namespace, repository, name, url) VALUES ('chaos', 'repo', $1, $2)",
                &[&format!("hook{i}"), &format!("http://{addr}/hook/{i}")],
            )
            .await
            .unwrap();
    }
    drop(client);
    let spawn = || {
        let child = env
            .command(binary)
            .env("TAGCAST_BREAKER_FAILURES", FAILURES.to_string())
            .env(
                "TAGCAST_BREAKER_COOLDOWN",
                format!("{}s", COOLDOWN.as_secs()),
            )
            .spawn()
            .expect("cannot start tagcast");
        Worker { child }
    };
    // Start once so the queues exist, then stop: the backlog waits for a cold start.
    let mut worker = spawn();
    assert!(env.ready(Duration::from_secs(30)).await);
    worker.terminate(Duration::from_secs(30));
    let mut publisher = EventPublisher::new(env.events_exchange());
    let ids: Vec<String> = (0..events).map(|_| Uuid::new_v4().to_string()).collect();
    for chunk in ids.chunks(500) {
        publisher
            .publish_batch(&chunk.iter().map(|id| event_body(id)).collect::<Vec<_>>())
            .await;
    }
    let expected = (events * 9) as u64;
    let mut worker = spawn();
    let started = Instant::now();
    let mut opened = None;
    while nine.requests.load(std::sync::atomic::Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if failing && opened.is_none() && breakers_open(env.metrics_port).await >= 1.0 {
            opened = Some(Instant::now());
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain did not finish"
        );
    }
    let elapsed = started.elapsed();
    print_metrics(
        env.metrics_port,
        &[
            "tagcast_first_attempts",
            "tagcast_deliveries_deferred",
            "tagcast_breaker",
            "tagcast_delivery_attempts_total",
        ],
    )
    .await;
    worker.terminate(Duration::from_secs(30));
    env.destroy().await;

    // Requests sent before the breaker opened may arrive after it did: the metric is read
    // every 20 ms, so one that arrives after it was seen open was sent while it was.
    let mut arrivals = Vec::new();
    while let Ok(request) =
        tokio::time::timeout(Duration::from_millis(10), dead.next(Duration::from_secs(1))).await
    {
        arrivals.push(request.at);
    }
    let end = started + elapsed;
    let while_open = opened.map_or(0, |opened| {
        arrivals
            .iter()
            .filter(|at| **at > opened && **at <= end)
            .count()
    });
    let open_for = opened.map_or(Duration::ZERO, |opened| {
        end.saturating_duration_since(opened)
    });
    Isolation {
        nine_per_second: expected as f64 / elapsed.as_secs_f64(),
        dead_requests: arrivals.len(),
        while_open,
        open_for,
    }
}
