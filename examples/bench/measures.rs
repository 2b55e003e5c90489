//! The measures: the receiver's capacity, the raw ceiling, drains of a backlog, latency at a
//! steady rate, memory with the receiver down, and trigger evaluation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use uuid::Uuid;

use crate::cpu::{cpu_of, machine_cpu, process_usage};
use crate::report::percentile;
use crate::support::{self, CountingReceiver, Env, EventPublisher, Worker, event_body};

/// Requests per second the receiver answers, from 64 concurrent keep-alive clients.
pub(crate) async fn receiver_capacity(receiver: &CountingReceiver, requests: usize) -> f64 {
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
pub(crate) async fn backlog(
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
pub(crate) async fn raw_ceiling(receiver: &CountingReceiver, messages: usize) -> f64 {
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

pub(crate) struct Drain {
    pub(crate) per_second: f64,
    pub(crate) cpu_per_1000: f64,
    pub(crate) peak_rss_kib: u64,
    /// CPU seconds per 1,000 deliveries of RabbitMQ and of PostgreSQL in the same window.
    pub(crate) broker_per_1000: f64,
    pub(crate) database_per_1000: f64,
    /// The same for this process: the receiver, above all.
    pub(crate) receiver_per_1000: f64,
    /// Share of the machine's CPU time left idle during the drain.
    pub(crate) idle: f64,
}

/// Publishes a backlog of `events` events for `fanout` webhooks, then starts tagcast and times
/// how long it takes until every delivery has arrived and is recorded `succeeded`.
pub(crate) async fn drain(binary: &str, events: usize, fanout: usize, status_queue: bool) -> Drain {
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
    let bodies = (0..events)
        .map(|_| event_body(&Uuid::new_v4().to_string()))
        .collect();
    let succeeded = "SELECT count(*) FROM deliveries WHERE status = 'succeeded'";
    let drained = timed_drain(
        &env,
        binary,
        &receiver,
        bodies,
        events * fanout,
        succeeded,
        None,
    )
    .await;
    env.destroy().await;
    drained
}

/// Changes made to webhooks while a drain runs: `per_second` updates, each of one webhook
/// picked at random from `ids`.
pub(crate) struct Changes {
    pub(crate) ids: Vec<i64>,
    pub(crate) per_second: u32,
}

/// With tagcast stopped, publishes `bodies`; then starts it and times how long it takes until
/// `expected` more deliveries have reached `receiver` and `succeeded` (a count) has grown by as
/// many. With `changes`, makes them all the while. Leaves tagcast stopped.
pub(crate) async fn timed_drain(
    env: &Env,
    binary: &str,
    receiver: &CountingReceiver,
    bodies: Vec<Vec<u8>>,
    expected: usize,
    succeeded: &str,
    changes: Option<Changes>,
) -> Drain {
    let count = || async {
        env.client()
            .await
            .query_one(succeeded, &[])
            .await
            .unwrap()
            .get::<_, i64>(0) as usize
    };
    let arrived0 = receiver.seen.lock().unwrap().ids.len();
    let succeeded0 = count().await;
    let mut publisher = EventPublisher::new(env.events_exchange());
    for chunk in bodies.chunks(500) {
        publisher.publish_batch(chunk).await;
    }
    let (broker0, database0) = (cpu_of("beam.smp"), cpu_of("postgres"));
    let (receiver0, machine0) = (process_usage(std::process::id()).0, machine_cpu());
    let mut worker = Worker::spawn(env, binary);
    let started = Instant::now();
    let changing = changes.map(|changes| {
        let pg = env.pg.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / changes.per_second);
            loop {
                tick.tick().await;
                let id = changes.ids[fastrand::usize(..changes.ids.len())];
                if let Ok(client) = pg.get().await {
                    let _ = client
                        .execute(
                            "UPDATE webhooks SET updated_at = now() WHERE id = $1",
                            &[&id],
                        )
                        .await;
                }
            }
        })
    });
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The count reads the table: only once the receiver has seen every delivery.
        if receiver.seen.lock().unwrap().ids.len() - arrived0 >= expected
            && count().await - succeeded0 >= expected
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain did not finish"
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(changing) = changing {
        changing.abort();
    }
    let (cpu, rss) = process_usage(worker.child.id());
    let (broker, database) = (cpu_of("beam.smp") - broker0, cpu_of("postgres") - database0);
    let receiver_cpu = process_usage(std::process::id()).0 - receiver0;
    let machine1 = machine_cpu();
    let (busy, idle) = (machine1.0 - machine0.0, machine1.1 - machine0.1);
    print_metrics(
        env.metrics_port,
        &[
            "tagcast_first_attempts",
            "tagcast_database_retries",
            "tagcast_messages_redelivered",
            "tagcast_delivery_attempts_total",
            "tagcast_webhook_cache",
        ],
    )
    .await;
    worker.terminate(Duration::from_secs(30));
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

/// With `BENCH_VERBOSE` set, prints the worker's metric lines that start with one of `families`.
pub(crate) async fn print_metrics(port: u16, families: &[&str]) {
    if std::env::var_os("BENCH_VERBOSE").is_none() {
        return;
    }
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return;
    };
    let text = r.text().await.unwrap_or_default();
    for line in text
        .lines()
        .filter(|l| families.iter().any(|f| l.starts_with(f)))
    {
        eprintln!("  {line}");
    }
}

/// Offers `rate` events per second (fan-out 1) for `seconds`; returns p50 and p99 in ms from the
/// event's send time to its arrival at the receiver.
pub(crate) async fn latency(
    binary: &str,
    rate: u64,
    seconds: u64,
    status_queue: bool,
) -> (f64, f64) {
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
pub(crate) async fn receiver_down(binary: &str, events: usize, seconds: u64) {
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
pub(crate) fn trigger_micro() -> Vec<(&'static str, f64)> {
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
