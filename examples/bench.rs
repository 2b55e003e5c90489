//! The benchmark: tagcast against the local RabbitMQ and PostgreSQL and a local receiver, beside
//! a raw ceiling measured in the same run on the same parts. Prints medians of `--runs` runs.
//!
//! `scripts/bench [--events N] [--runs R] [--rate-seconds S] [--no-status-queue]`
//!
//! A durable quorum queue is bound to the status exchange, as a consumer of status events would
//! have it (nobody reads it during the run); `--no-status-queue` leaves the exchange unbound, so
//! the broker drops each status event after confirming it.
//!
//! Measures: the receiver's own capacity; the raw ceiling (consume → POST → INSERT → ack, no
//! webhook logic); tagcast draining a backlog with fan-out 1 and 10 (deliveries per second, CPU
//! seconds per 1,000 deliveries, peak RSS); latency from the event's send time to the receiver at
//! 1,000 events per second offered; trigger evaluation per webhook; and the floor, the CPU that
//! each part the contract asks of a delivery costs on its own (see `Floor`), with the rate it allows.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt as _;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::{CountingReceiver, Env, EventPublisher, Worker, event_body};
use tagcast::model::{DeliveryStatus, delivery_id};
use tagcast::store::{Decision, EventDecisions, Lease, NewAttempt, deliveries};
use uuid::Uuid;

struct Args {
    events: usize,
    runs: usize,
    rate_seconds: u64,
    binary: String,
    /// Run one measure only: raw, drain1, drain10, latency, floor or down (for profiling).
    only: Option<String>,
    /// Bind a durable queue to the status exchange, as a consumer of status events would.
    status_queue: bool,
}

fn args() -> Args {
    let mut a = Args {
        events: 20_000,
        runs: 3,
        rate_seconds: 10,
        binary: std::env::var("TAGCAST_BIN").unwrap_or_else(|_| "target/release/tagcast".into()),
        only: None,
        status_queue: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--only" {
            a.only = it.next();
            continue;
        }
        if arg == "--no-status-queue" {
            a.status_queue = false;
            continue;
        }
        let mut value = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--events" => a.events = value() as usize,
            "--runs" => a.runs = value() as usize,
            "--rate-seconds" => a.rate_seconds = value(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize] as f64
}

/// Requests per second the receiver answers, from 64 concurrent keep-alive clients.
async fn receiver_capacity(receiver: &CountingReceiver, requests: usize) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let url = format!("http://{}/capacity", receiver.addr);
    let started = Instant::now();
    let per_task = requests / 64;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let _ = client
                        .post(&url)
                        .header("webhook-id", "capacity")
                        .body("{}")
                        .send()
                        .await
                        .map(|r| r.bytes());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per_task * 64) as f64 / started.elapsed().as_secs_f64()
}

/// Fills `queue` with `messages` persistent events (confirmed, 500 at a time) and returns a
/// consumer of it with a prefetch of 512, on a channel of its own.
async fn backlog(
    conn: &Connection,
    ch: &lapin::Channel,
    queue: &str,
    messages: usize,
) -> lapin::Consumer {
    for chunk in (0..messages).collect::<Vec<_>>().chunks(500) {
        let mut pending = Vec::with_capacity(chunk.len());
        for _ in chunk {
            let body = event_body(&Uuid::new_v4().to_string());
            pending.push(
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
            );
        }
        for p in pending {
            p.await.unwrap();
        }
    }
    let consume = conn.create_channel().await.unwrap();
    consume
        .basic_qos(512, BasicQosOptions::default())
        .await
        .unwrap();
    consume
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

/// The raw ceiling: consume a message, POST it, INSERT a row, acknowledge; nothing else.
async fn raw_ceiling(receiver: &CountingReceiver, messages: usize) -> f64 {
    let env = Env::create("raw").await;
    env.client().await.batch_execute("CREATE TABLE raw_records (id uuid PRIMARY KEY, status int, body text, at timestamptz DEFAULT now())").await.unwrap();
    let pool = tagcast::store::connect(&env.database_url().parse().unwrap(), 16).unwrap();
    let conn = Connection::connect(support::AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let queue = format!("{}.raw", env.prefix);
    support::declare_quorum_queue(&ch, &queue).await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut consumer = backlog(&conn, &ch, &queue, messages).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let url = format!("http://{}/raw", receiver.addr);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..messages {
        let delivery = consumer.next().await.unwrap().unwrap();
        let (client, url, pool, done) = (client.clone(), url.clone(), pool.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(&url)
                .header("webhook-id", "raw")
                .body(delivery.data.clone())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16() as i32;
            let _ = response.bytes().await;
            let db = pool.get().await.unwrap();
            let insert = db
                .prepare_cached("INSERT INTO raw_records (id, status, body) VALUES ($1, $2, $3)")
                .await
                .unwrap();
            db.execute(
                &insert,
                &[
                    &Uuid::new_v4(),
                    &status,
                    &String::from_utf8_lossy(&delivery.data).into_owned(),
                ],
            )
            .await
            .unwrap();
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    // Not part of tagcast's topology, so `destroy` would leave it behind.
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    tagcast::store::close(&pool);
    let _ = conn.close(200, "done".into()).await;
    env.destroy().await;
    rate
}

/// CPU seconds (user + system) and peak RSS (KiB) of a process, from /proc.
fn process_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / ticks
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

struct Drain {
    per_second: f64,
    cpu_per_1000: f64,
    peak_rss_kib: u64,
    /// CPU seconds per 1,000 deliveries of RabbitMQ and of PostgreSQL in the same window.
    broker_per_1000: f64,
    database_per_1000: f64,
    /// The same for this process: the receiver, above all.
    receiver_per_1000: f64,
    /// Share of the machine's CPU time left idle during the drain.
    idle: f64,
}

/// CPU seconds (user + system) used so far by the calling thread.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ticks: f64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    ticks / 100.0 // USER_HZ on Linux
}

/// Busy and idle CPU seconds of the whole machine so far, from /proc/stat.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - idle;
    (busy / 100.0, idle / 100.0)
}

/// CPU seconds used so far by every process whose command name is `name`.
fn cpu_of(name: &str) -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == name {
            total += process_usage(pid.parse().unwrap_or(0)).0;
        }
    }
    total
}

/// Publishes a backlog of `events` events for `fanout` webhooks, then starts tagcast and times
/// how long it takes until every delivery has arrived and is recorded `succeeded`.
async fn drain(binary: &str, events: usize, fanout: usize, status_queue: bool) -> Drain {
    let env = Env::create("bench").await;
    if status_queue {
        env.bind_status_queue().await;
    }
    let receiver = CountingReceiver::start().await;
    env.insert_webhooks(receiver.addr, fanout).await;
    // Start once so the queues exist, then stop: the backlog waits for a cold start.
    let mut worker = Worker::spawn(&env, binary);
    assert!(env.ready(Duration::from_secs(30)).await);
    worker.terminate(Duration::from_secs(30));
    let mut publisher = EventPublisher::new(env.events_exchange());
    let ids: Vec<String> = (0..events).map(|_| Uuid::new_v4().to_string()).collect();
    for chunk in ids.chunks(500) {
        publisher
            .publish_batch(&chunk.iter().map(|id| event_body(id)).collect::<Vec<_>>())
            .await;
    }
    let expected = events * fanout;
    let (broker0, database0) = (cpu_of("beam.smp"), cpu_of("postgres"));
    let (receiver0, machine0) = (process_usage(std::process::id()).0, machine_cpu());
    let mut worker = Worker::spawn(&env, binary);
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if receiver.seen.lock().unwrap().ids.len() >= expected {
            let succeeded: i64 = env
                .client()
                .await
                .query_one(
                    "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if succeeded as usize >= expected {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain did not finish"
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu, rss) = process_usage(worker.child.id());
    let (broker, database) = (cpu_of("beam.smp") - broker0, cpu_of("postgres") - database0);
    let receiver_cpu = process_usage(std::process::id()).0 - receiver0;
    let machine1 = machine_cpu();
    let (busy, idle) = (machine1.0 - machine0.0, machine1.1 - machine0.1);
    if std::env::var_os("BENCH_VERBOSE").is_some()
        && let Ok(r) = reqwest::get(format!("http://127.0.0.1:{}/metrics", env.metrics_port)).await
    {
        let text = r.text().await.unwrap_or_default();
        for line in text.lines().filter(|l| {
            l.starts_with("tagcast_first_attempts")
                || l.starts_with("tagcast_database_retries")
                || l.starts_with("tagcast_messages_redelivered")
                || l.starts_with("tagcast_delivery_attempts_total")
        }) {
            eprintln!("  {line}");
        }
    }
    worker.terminate(Duration::from_secs(30));
    env.destroy().await;
    let per_1000 = |seconds: f64| seconds / expected as f64 * 1000.0;
    Drain {
        per_second: expected as f64 / elapsed,
        cpu_per_1000: per_1000(cpu),
        peak_rss_kib: rss,
        broker_per_1000: per_1000(broker),
        database_per_1000: per_1000(database),
        receiver_per_1000: per_1000(receiver_cpu),
        idle: idle / (busy + idle),
    }
}

/// Offers `rate` events per second (fan-out 1) for `seconds`; returns p50 and p99 in ms from the
/// event's send time to its arrival at the receiver.
async fn latency(binary: &str, rate: u64, seconds: u64, status_queue: bool) -> (f64, f64) {
    let env = Env::create("lat").await;
    if status_queue {
        env.bind_status_queue().await;
    }
    let receiver = CountingReceiver::start().await;
    env.insert_webhooks(receiver.addr, 1).await;
    let mut worker = Worker::spawn(&env, binary);
    assert!(env.ready(Duration::from_secs(30)).await);
    let mut publisher = EventPublisher::new(env.events_exchange());
    // Batches every 10 ms keep the offered rate even.
    let per_tick = (rate / 100).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let total = rate * seconds;
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let bodies: Vec<Vec<u8>> = (0..per_tick)
            .map(|_| event_body(&Uuid::new_v4().to_string()))
            .collect();
        publisher.publish_batch(&bodies).await;
        sent += per_tick as u64;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (receiver.seen.lock().unwrap().ids.len() as u64) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.terminate(Duration::from_secs(30));
    let mut lat = std::mem::take(&mut receiver.seen.lock().unwrap().latencies_us);
    // Skip the first second: connection set-up is not steady state.
    let skip = (rate as usize).min(lat.len());
    let mut steady: Vec<u64> = lat.drain(skip..).collect();
    env.destroy().await;
    (
        percentile(&mut steady, 0.5) / 1000.0,
        percentile(&mut steady, 0.99) / 1000.0,
    )
}

/// Memory while the only receiver is down: offers events in batches of 50 every 100 ms (at most
/// 500 per second; publishing with confirms makes it about 400 here) for `seconds` to a webhook
/// on a closed port (every attempt fails to connect and is retried through the delay
/// queues), sampling tagcast's resident memory every 5 seconds.
async fn receiver_down(binary: &str, events: usize, seconds: u64) {
    let env = Env::create("down").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.client()
        .await
        .execute(
            "INSERT INTO webhooks (namespace, repository, name, url) VALUES ('chaos', 'repo', 'down', $1)",
            &[&format!("http://127.0.0.1:{port}/hook")],
        )
        .await
        .unwrap();
    let mut worker = Worker::spawn(&env, binary);
    assert!(env.ready(Duration::from_secs(30)).await);
    let pid = worker.child.id();
    let mut publisher = EventPublisher::new(env.events_exchange());
    let started = Instant::now();
    let mut sent = 0usize;
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(seconds) {
        if sent < events {
            let bodies: Vec<Vec<u8>> = (0..50)
                .map(|_| event_body(&Uuid::new_v4().to_string()))
                .collect();
            publisher.publish_batch(&bodies).await;
            sent += bodies.len();
        }
        if started.elapsed() >= next_sample {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default();
            samples.push(format!("{:>4}s {rss}", started.elapsed().as_secs()));
            next_sample += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, peak) = process_usage(pid);
    let waiting: i64 = env
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM deliveries WHERE status = 'retrying'",
            &[],
        )
        .await
        .map_or(0, |r| r.get(0));
    worker.terminate(Duration::from_secs(30));
    env.destroy().await;
    println!(
        "receiver down for {seconds} s, {sent} events offered: peak RSS {:.1} MiB, {waiting} deliveries waiting to retry",
        peak as f64 / 1024.0
    );
    for s in samples {
        println!("  RSS at {s}");
    }
}

/// Nanoseconds per trigger evaluation, for each kind of rule.
fn trigger_micro() -> Vec<(&'static str, f64)> {
    use tagcast::trigger::Trigger;
    let tags: Vec<String> = (0..10).map(|i| format!("release-{i}")).collect();
    let rules = [
        ("all", Trigger::from_row("all", None, None).unwrap()),
        (
            "expression release-v.*",
            Trigger::from_row("expression", Some("release-v.*"), None).unwrap(),
        ),
        (
            "expression ^(v[0-9]+\\.){2}[0-9]+(-rc[0-9]+)?$",
            Trigger::from_row(
                "expression",
                Some(r"(v[0-9]+\.){2}[0-9]+(-rc[0-9]+)?"),
                None,
            )
            .unwrap(),
        ),
        (
            "tags (10, miss)",
            Trigger::from_row("tags", None, Some(&tags)).unwrap(),
        ),
    ];
    let inputs = [
        "release-v1.2.3",
        "prerelease-v1",
        "latest",
        "v1.2.3-rc1",
        "release-9",
    ];
    rules
        .into_iter()
        .map(|(name, rule)| {
            let iterations = 2_000_000;
            let started = Instant::now();
            let mut fired = 0usize;
            for i in 0..iterations {
                fired += usize::from(rule.fires(std::hint::black_box(inputs[i % inputs.len()])));
            }
            std::hint::black_box(fired);
            (
                name,
                started.elapsed().as_nanos() as f64 / iterations as f64,
            )
        })
        .collect()
}

/// CPU seconds per 1,000 of each part that the contract asks of every delivery, measured on its own at
/// full speed with no webhook logic. Servers and the receiver only, plus an HTTP client: the
/// AMQP and database clients and all of tagcast's own work come on top, so the sum is a floor
/// that no design on these parts can go below.
struct Floor {
    /// RabbitMQ: a persistent status event published with confirms, stored in a bound quorum
    /// queue (dropped unrouted with `--no-status-queue`).
    status_event: f64,
    /// RabbitMQ: an event consumed from a quorum queue and acknowledged (64 per acknowledgement);
    /// a delivery pays 1/fan-out of it.
    event: f64,
    /// PostgreSQL: a delivery row written once, already final, and its attempt row, in tagcast's
    /// schema, 64 deliveries per transaction.
    records: f64,
    /// Not part of the floor: the same rows as tagcast writes them, the decision with its claim
    /// and then the attempt that finishes it, which is what the claim costs PostgreSQL.
    records_as_tagcast: f64,
    /// The benchmark's receiver answering a POST of the notification.
    receiver: f64,
    /// reqwest sending that POST with the contract's headers and signature, on a thread of its own.
    http_client: f64,
}

impl Floor {
    fn per_delivery(&self, fanout: usize) -> f64 {
        self.status_event
            + self.event / fanout as f64
            + self.records
            + self.receiver
            + self.http_client
    }

    /// Deliveries per second the floor allows with every core busy.
    fn rate(&self, fanout: usize) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        cores * 1000.0 / self.per_delivery(fanout)
    }
}

/// A status event as tagcast publishes it (contract section 7), for its size.
fn status_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "delivery_id": Uuid::new_v4(), "event_id": Uuid::new_v4(), "webhook_id": 42,
        "webhook_name": "hook0", "namespace": "chaos", "repository": "repo", "tag": "t1796011200000000",
        "digest": "sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917",
        "status": "succeeded", "attempt": 1, "http_status": 200, "duration_ms": 2, "error": null,
        "next_attempt_at": null, "at": "2026-11-29T04:25:47.120Z"
    }))
    .unwrap()
}

/// The notification tagcast would send for one event.
fn notification() -> String {
    match tagcast::events::decode(&event_body(&Uuid::new_v4().to_string())) {
        Ok(tagcast::events::Decoded::Build(event)) => tagcast::payload::render(&event),
        _ => unreachable!("the benchmark's event is a build event"),
    }
}

async fn floor(n: usize, status_queue: bool) -> Floor {
    let receiver = CountingReceiver::start().await;
    let env = Env::create("floor").await;
    if status_queue {
        env.bind_status_queue().await;
    } else {
        let conn = Connection::connect(support::AMQP, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        support::declare_topic_exchange(&ch, &env.status_exchange())
            .await
            .unwrap();
        let _ = conn.close(200, "declared".into()).await;
    }
    let conn = Connection::connect(support::AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Status events: windows of 1,000 in flight, as tagcast's confirms are pipelined.
    let body = status_body();
    let broker0 = cpu_of("beam.smp");
    for _ in 0..n.div_ceil(1000) {
        let mut pending = Vec::with_capacity(1000);
        for _ in 0..1000 {
            pending.push(
                ch.basic_publish(
                    env.status_exchange().as_str().into(),
                    "delivery.succeeded".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await
                .unwrap(),
            );
        }
        for p in pending {
            assert!(p.await.unwrap().is_ack());
        }
    }
    let status_event = (cpu_of("beam.smp") - broker0) / (n.div_ceil(1000) * 1000) as f64 * 1000.0;

    // Events: published first (the registry's cost, not measured), then consumed and acknowledged.
    let queue = format!("{}.floor.events", env.prefix);
    support::declare_quorum_queue(&ch, &queue).await.unwrap();
    let mut consumer = backlog(&conn, &ch, &queue, n).await;
    let broker0 = cpu_of("beam.smp");
    for i in 1..=n {
        let delivery = consumer.next().await.unwrap().unwrap();
        if i % 64 == 0 || i == n {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
    }
    let event = (cpu_of("beam.smp") - broker0) / n as f64 * 1000.0;
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;

    // Records: one connection, one transaction of 64 deliveries and 64 attempts at a time.
    env.insert_webhooks(receiver.addr, 1).await;
    let webhook: i64 = env
        .client()
        .await
        .query_one("SELECT id FROM webhooks", &[])
        .await
        .unwrap()
        .get(0);
    let request_body = notification();
    let mut db = env.client().await;
    let database0 = cpu_of("postgres");
    for _ in 0..n.div_ceil(64) {
        let ids: Vec<Uuid> = (0..64).map(|_| Uuid::new_v4()).collect();
        let events: Vec<String> = (0..64).map(|_| Uuid::new_v4().to_string()).collect();
        let tx = db.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, \
             status, attempts, http_status, request_body, occurred_at, duration_ms, watched) \
             SELECT id, event_id, $3, 'chaos', 'repo', 't1', $4, 'succeeded', 1, 200, $5, now(), 2, false \
             FROM unnest($1::uuid[], $2::text[]) AS u(id, event_id)",
            &[
                &ids,
                &events,
                &webhook,
                &"sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917",
                &request_body,
            ],
        )
        .await
        .unwrap();
        tx.execute(
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status, response_body) \
             SELECT id, 1, now(), 2, 200, 'ok' FROM unnest($1::uuid[]) AS u(id)",
            &[&ids],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let records = (cpu_of("postgres") - database0) / (n.div_ceil(64) * 64) as f64 * 1000.0;
    drop(db);

    // The same rows as tagcast writes them, with its own statements: the decision and its claim,
    // then the attempt that finishes it; 64 deliveries per statement.
    let pool = tagcast::store::connect(&env.database_url().parse().unwrap(), 1).unwrap();
    let body: Arc<str> = request_body.into();
    let database0 = cpu_of("postgres");
    for _ in 0..n.div_ceil(64) {
        let batch: Vec<EventDecisions> = (0..64)
            .map(|_| {
                let event = match tagcast::events::decode(&event_body(&Uuid::new_v4().to_string()))
                {
                    Ok(tagcast::events::Decoded::Build(event)) => event,
                    _ => unreachable!("the benchmark's event is a build event"),
                };
                EventDecisions {
                    decisions: vec![Decision {
                        id: delivery_id(&event.event_id, webhook),
                        webhook_id: webhook,
                        status: DeliveryStatus::Pending,
                        error: None,
                        claim_first_attempt: true,
                    }],
                    event: Arc::new(event),
                    body: body.clone(),
                }
            })
            .collect();
        let ids: Vec<Uuid> = batch.iter().map(|e| e.decisions[0].id).collect();
        deliveries::record_decisions(&pool, Lease::covering(Duration::from_secs(50)), batch)
            .await
            .unwrap();
        let attempts = ids
            .into_iter()
            .map(|id| {
                let attempt = NewAttempt {
                    attempt: 1,
                    started_at: Utc::now(),
                    duration: Duration::from_millis(2),
                    http_status: Some(200),
                    error: None,
                    response_body: Some("ok".into()),
                    status: DeliveryStatus::Succeeded,
                    next_attempt_at: None,
                };
                (id, attempt)
            })
            .collect();
        deliveries::record_attempts(&pool, attempts).await.unwrap();
    }
    let records_as_tagcast =
        (cpu_of("postgres") - database0) / (n.div_ceil(64) * 64) as f64 * 1000.0;
    tagcast::store::close(&pool);

    // HTTP: 64 concurrent keep-alive requests from one thread of its own, so that its CPU time
    // tells the client from the receiver, which runs on this process's other threads.
    let url = format!("http://{}/hook/0?secret=x", receiver.addr);
    let body: Arc<str> = notification().into();
    let per_task = n.div_ceil(64);
    let own0 = process_usage(std::process::id()).0;
    let client_seconds = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap();
            let started = thread_cpu();
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let (client, url, body) = (client.clone(), url.clone(), body.clone());
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            let id = Uuid::new_v4().to_string();
                            let timestamp = Utc::now().timestamp();
                            let signature = tagcast::payload::sign(
                                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                                &id,
                                timestamp,
                                &body,
                            )
                            .unwrap();
                            let mut request = client
                                .post(&url)
                                .header("content-type", "application/json")
                                .header("webhook-id", id)
                                .header("webhook-timestamp", timestamp.to_string())
                                .body(body.to_string());
                            if let Some(signature) = signature {
                                request = request.header("webhook-signature", signature);
                            }
                            let response = request.send().await.unwrap();
                            let _ = response.bytes().await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            thread_cpu() - started
        })
    })
    .join()
    .unwrap();
    let requests = (per_task * 64) as f64;
    let own = process_usage(std::process::id()).0 - own0;
    let http_client = client_seconds / requests * 1000.0;
    let receiver = (own - client_seconds) / requests * 1000.0;
    env.destroy().await;
    Floor {
        status_event,
        event,
        records,
        records_as_tagcast,
        receiver,
        http_client,
    }
}

fn print_floor(f: &Floor) {
    println!(
        "floor, CPU s per 1,000: status event {:.3} and event consumed {:.3} (RabbitMQ), records {:.3} (PostgreSQL; {:.3} as tagcast writes them), POST {:.3} (receiver) + {:.3} (reqwest)",
        f.status_event, f.event, f.records, f.records_as_tagcast, f.receiver, f.http_client
    );
    for fanout in [1, 10] {
        println!(
            "floor, fan-out {fanout}: {:.3} s per 1,000 deliveries; every core busy allows at most {:.0} deliveries/s",
            f.per_delivery(fanout),
            f.rate(fanout)
        );
    }
}

fn print_drain(name: &str, d: &Drain) {
    println!(
        "{name}: {:.0} deliveries/s; CPU s per 1,000 deliveries: tagcast {:.3}, RabbitMQ {:.3}, PostgreSQL {:.3}, receiver {:.3}; machine idle {:.0}%; peak RSS {:.1} MiB",
        d.per_second,
        d.cpu_per_1000,
        d.broker_per_1000,
        d.database_per_1000,
        d.receiver_per_1000,
        d.idle * 100.0,
        d.peak_rss_kib as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "tagcast benchmark: {} events per drain, medians of {} runs, status events {}",
        a.events,
        a.runs,
        if a.status_queue {
            "stored in a bound quorum queue"
        } else {
            "unrouted (no queue bound)"
        }
    );

    for (name, ns) in trigger_micro() {
        println!("trigger evaluation {name:<48} {ns:>8.1} ns/webhook");
    }

    let receiver = CountingReceiver::start().await;
    match a.only.as_deref() {
        Some("raw") => {
            return println!(
                "raw ceiling {:.0}/s",
                raw_ceiling(&receiver, a.events).await
            );
        }
        Some("drain1") => {
            return print_drain(
                "fan-out 1",
                &drain(&a.binary, a.events, 1, a.status_queue).await,
            );
        }
        Some("drain10") => {
            return print_drain(
                "fan-out 10",
                &drain(&a.binary, a.events / 10, 10, a.status_queue).await,
            );
        }
        Some("floor") => return print_floor(&floor(a.events, a.status_queue).await),
        Some("down") => return receiver_down(&a.binary, a.events, a.rate_seconds).await,
        Some("latency") => {
            return println!(
                "p50/p99 {:?} ms",
                latency(&a.binary, 1000, a.rate_seconds, a.status_queue).await
            );
        }
        Some(other) => panic!("unknown measure {other}"),
        None => {}
    }
    let capacity = median(
        futures_util::future::join_all((0..1).map(|_| receiver_capacity(&receiver, 40_000))).await,
    );
    println!("receiver capacity                                   {capacity:>8.0} requests/s");

    let mut raw = Vec::new();
    let (mut d1, mut d10) = (Vec::new(), Vec::new());
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    let mut floors = Vec::new();
    for run in 1..=a.runs {
        floors.push(floor(a.events, a.status_queue).await);
        raw.push(raw_ceiling(&receiver, a.events).await);
        d1.push(drain(&a.binary, a.events, 1, a.status_queue).await);
        d10.push(drain(&a.binary, a.events / 10 * 2, 10, a.status_queue).await);
        let (p50, p99) = latency(&a.binary, 1000, a.rate_seconds, a.status_queue).await;
        p50s.push(p50);
        p99s.push(p99);
        println!(
            "run {run}: raw {:.0}/s, fan-out 1 {:.0}/s, fan-out 10 {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
            raw[run - 1],
            d1[run - 1].per_second,
            d10[run - 1].per_second,
            p50,
            p99
        );
    }
    let of = |part: fn(&Floor) -> f64| median(floors.iter().map(part).collect());
    let floor_m = Floor {
        status_event: of(|f| f.status_event),
        event: of(|f| f.event),
        records: of(|f| f.records),
        records_as_tagcast: of(|f| f.records_as_tagcast),
        receiver: of(|f| f.receiver),
        http_client: of(|f| f.http_client),
    };
    println!();
    print_floor(&floor_m);
    let raw_m = median(raw);
    let f1 = median(d1.iter().map(|d| d.per_second).collect());
    let f10 = median(d10.iter().map(|d| d.per_second).collect());
    let cpu1 = median(d1.iter().map(|d| d.cpu_per_1000).collect());
    let cpu10 = median(d10.iter().map(|d| d.cpu_per_1000).collect());
    let rss = d1
        .iter()
        .chain(&d10)
        .map(|d| d.peak_rss_kib)
        .max()
        .unwrap_or(0);
    println!();
    println!("| measure | median |");
    println!("|---|---|");
    println!("| receiver capacity | {capacity:.0} requests/s |");
    println!("| raw ceiling (consume → POST → INSERT → ack) | {raw_m:.0} deliveries/s |");
    println!(
        "| tagcast, fan-out 1 | {f1:.0} deliveries/s ({:.2} of raw, {:.2} of the floor's rate) |",
        f1 / raw_m,
        f1 / floor_m.rate(1)
    );
    println!(
        "| tagcast, fan-out 10 | {f10:.0} deliveries/s ({:.2} of raw, {:.2} of the floor's rate) |",
        f10 / raw_m,
        f10 / floor_m.rate(10)
    );
    println!("| CPU per 1,000 deliveries, fan-out 1 / 10 | {cpu1:.3} s / {cpu10:.3} s |");
    let b1 = median(d1.iter().map(|d| d.broker_per_1000).collect());
    let b10 = median(d10.iter().map(|d| d.broker_per_1000).collect());
    let p1 = median(d1.iter().map(|d| d.database_per_1000).collect());
    let p10 = median(d10.iter().map(|d| d.database_per_1000).collect());
    println!("| RabbitMQ CPU per 1,000 deliveries, fan-out 1 / 10 | {b1:.3} s / {b10:.3} s |");
    println!("| PostgreSQL CPU per 1,000 deliveries, fan-out 1 / 10 | {p1:.3} s / {p10:.3} s |");
    let r1 = median(d1.iter().map(|d| d.receiver_per_1000).collect());
    let r10 = median(d10.iter().map(|d| d.receiver_per_1000).collect());
    println!(
        "| receiver (benchmark process) CPU per 1,000 deliveries, fan-out 1 / 10 | {r1:.3} s / {r10:.3} s |"
    );
    let i1 = median(d1.iter().map(|d| d.idle).collect());
    let i10 = median(d10.iter().map(|d| d.idle).collect());
    println!(
        "| machine CPU idle during the drain, fan-out 1 / 10 | {:.0} % / {:.0} % |",
        i1 * 100.0,
        i10 * 100.0
    );
    println!("| peak RSS of tagcast | {:.1} MiB |", rss as f64 / 1024.0);
    for fanout in [1, 10] {
        println!(
            "| floor, fan-out {fanout}: servers, receiver and HTTP client alone | {:.3} s per 1,000 deliveries, at most {:.0} deliveries/s |",
            floor_m.per_delivery(fanout),
            floor_m.rate(fanout)
        );
    }
    println!(
        "| p50 / p99 at 1,000 events/s offered | {:.1} ms / {:.1} ms |",
        median(p50s),
        median(p99s)
    );
}
