//! The cluster proof: three tagcast replicas against one database and a three-node RabbitMQ
//! cluster (`scripts/cluster`), events published at a steady rate while two broker nodes are
//! killed (kill -9 of the Erlang VM) and brought back in turn, one replica is killed with
//! SIGKILL and restarted and one is stopped with SIGTERM; then what was lost, what was repeated,
//! whether the access records agree, and how long each fault held deliveries up. Then the drain
//! rate of one, two and three replicas on the same cluster.
//!
//! Run with `scripts/cluster-chaos [--events N] [--rate R] [--webhooks W] [--drain-events M]`;
//! it starts the cluster and removes it again. `TAGCAST_CLUSTER_URLS` holds the nodes' URLs.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{CountingReceiver, Env, EventPublisher, Worker, event_body, ready_on, verdict};
use uuid::Uuid;

struct Args {
    events: usize,
    rate: usize,
    webhooks: usize,
    drain_events: usize,
}

fn args() -> Args {
    let mut parsed = Args {
        events: 12_000,
        rate: 200,
        webhooks: 3,
        drain_events: 4_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{arg} needs a number"));
        match arg.as_str() {
            "--events" => parsed.events = value,
            "--rate" => parsed.rate = value,
            "--webhooks" => parsed.webhooks = value,
            "--drain-events" => parsed.drain_events = value,
            other => panic!("unknown argument {other}"),
        }
    }
    parsed
}

/// `scripts/cluster` with `args`; its standard output.
fn cluster(args: &[&str]) -> String {
    let out = Command::new("scripts/cluster")
        .args(args)
        .output()
        .expect("scripts/cluster");
    assert!(
        out.status.success(),
        "scripts/cluster {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many of the environment's replicas are connected to each node (1-based).
fn connections(prefix: &str) -> [usize; 4] {
    let mut per_node = [0; 4];
    for line in cluster(&["connections"]).lines() {
        if let Some((node, name)) = line.split_once(' ')
            && name.contains(&format!("tagcast {prefix}"))
            && let Ok(n) = node.parse::<usize>()
            && n < 4
        {
            per_node[n] += 1;
        }
    }
    per_node
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One fault and how long deliveries were held up by it.
struct FaultReport {
    what: String,
    /// Until every running replica reported ready again (it had work to take).
    ready_again: Duration,
    /// The longest time without any delivery arriving, in the 20 s after the fault.
    longest_pause: Duration,
}

/// Arrival counts over time, sampled by the watch loop.
struct Timeline(Vec<(Instant, usize)>);

impl Timeline {
    fn longest_pause(&self, from: Instant, window: Duration) -> Duration {
        let mut pause = Duration::ZERO;
        let mut last_change = from;
        let mut last_count = None;
        for &(at, count) in self.0.iter().filter(|(at, _)| *at >= from) {
            if at > from + window {
                break;
            }
            if last_count != Some(count) {
                if last_count.is_some() {
                    pause = pause.max(at - last_change);
                }
                last_change = at;
                last_count = Some(count);
            }
        }
        pause
    }
}

/// Waits until every replica on `ports` is ready, after first giving the fault up to 2 s to
/// show (a replica that lost its node reports not ready); the time since `since`.
async fn ready_again(ports: &[u16], since: Instant) -> Duration {
    let noticed = Instant::now() + Duration::from_secs(2);
    while Instant::now() < noticed {
        let mut all = true;
        for &port in ports {
            all &= ready_on(port, Duration::from_millis(1)).await;
        }
        if !all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &port in ports {
        assert!(
            ready_on(port, Duration::from_secs(60)).await,
            "replica on port {port} did not become ready again"
        );
    }
    since.elapsed()
}

struct Replica {
    worker: Option<Worker>,
    port: u16,
}

async fn chaos(urls: &[String], a: &Args, binary: &str) -> bool {
    let started = Instant::now();
    let mut env = Env::create("cluster").await;
    env.amqp = urls.to_vec();
    let receiver = CountingReceiver::start().await;
    env.insert_webhooks(receiver.addr, a.webhooks).await;
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| {
            let port = free_port();
            Replica {
                worker: Some(Worker::spawn_on(&env, binary, port)),
                port,
            }
        })
        .collect();
    for r in &replicas {
        assert!(
            ready_on(r.port, Duration::from_secs(60)).await,
            "a replica did not become ready"
        );
    }
    env.bind_status_queue().await;
    let members = Command::new("rabbitmqctl")
        .args([
            "-q",
            "-n",
            "tagcast-c1@localhost",
            "list_queues",
            "name",
            "members",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let deliveries_queue = format!("{}.deliveries", env.prefix);
    if let Some(line) = members
        .lines()
        .find(|l| l.split_whitespace().next() == Some(deliveries_queue.as_str()))
    {
        println!("replicas of {line}");
    }
    println!(
        "replicas per node at start: {:?}",
        &connections(&env.prefix)[1..]
    );

    let expected = a.events * a.webhooks;
    let (exchange, nodes, events, rate) = (env.events_exchange(), urls.to_vec(), a.events, a.rate);
    let publisher = tokio::spawn(async move {
        let mut p = EventPublisher::on(exchange, nodes);
        let per_tick = (rate / 10).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut sent = 0;
        while sent < events {
            tick.tick().await;
            let n = per_tick.min(events - sent);
            let bodies: Vec<Vec<u8>> = (0..n)
                .map(|_| event_body(&Uuid::new_v4().to_string()))
                .collect();
            p.publish_batch(&bodies).await;
            sent += n;
        }
        sent
    });

    // Seconds into publishing at which each fault comes.
    enum Fault {
        KillNode,
        ReviveNode,
        KillReplica,
        TermReplica,
    }
    let plan = [
        (8.0, Fault::KillNode),
        (16.0, Fault::ReviveNode),
        (26.0, Fault::KillNode),
        (34.0, Fault::ReviveNode),
        (42.0, Fault::KillReplica),
        (50.0, Fault::TermReplica),
    ];
    let mut plan = plan.into_iter().peekable();
    let t0 = Instant::now();
    // Sampled on a task of its own, so that the wait after each fault is sampled too.
    let timeline = Arc::new(Mutex::new(Timeline(Vec::new())));
    let sampler = {
        let (timeline, seen) = (timeline.clone(), receiver.seen.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let received = seen.lock().unwrap().ids.len();
                timeline.lock().unwrap().0.push((Instant::now(), received));
            }
        })
    };
    let mut faults: Vec<(Instant, String)> = Vec::new();
    let mut recoveries = Vec::new();
    let mut killed_nodes: Vec<usize> = Vec::new();
    let mut down: Option<usize> = None;
    let mut sigterm_exit = None;
    let mut last_progress = (0usize, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let received = receiver.seen.lock().unwrap().ids.len();
        if received != last_progress.0 {
            last_progress = (received, Instant::now());
        }
        if let Some((at, _)) = plan.peek()
            && t0.elapsed().as_secs_f64() >= *at
        {
            let (_, fault) = plan.next().unwrap();
            // When the fault took effect: a kill at once, a revive or a stop once done.
            let mut at = Instant::now();
            let running: Vec<u16> = replicas
                .iter()
                .filter(|r| r.worker.is_some())
                .map(|r| r.port)
                .collect();
            let what = match fault {
                Fault::KillNode => {
                    // The node leading the delivery queue, unless it was killed before: then
                    // the one with most replicas on it.
                    let leader: usize = cluster(&["leader", &deliveries_queue])
                        .trim()
                        .parse()
                        .unwrap_or(1);
                    let per_node = connections(&env.prefix);
                    let node = if killed_nodes.contains(&leader) {
                        (1..=3)
                            .filter(|n| !killed_nodes.contains(n))
                            .max_by_key(|&n| per_node[n])
                            .unwrap_or(2)
                    } else {
                        leader
                    };
                    cluster(&["kill", &node.to_string()]);
                    at = Instant::now();
                    killed_nodes.push(node);
                    down = Some(node);
                    format!(
                        "kill -9 node {node} (leader of the delivery queue: {}; replicas on it: {})",
                        leader == node,
                        per_node[node]
                    )
                }
                Fault::ReviveNode => {
                    let node = down.take().expect("a node is down");
                    let revive = tokio::task::spawn_blocking(move || {
                        cluster(&["revive", &node.to_string()]);
                    });
                    revive.await.unwrap();
                    at = Instant::now();
                    format!("node {node} back")
                }
                Fault::KillReplica => {
                    let r = &mut replicas[0];
                    r.worker.as_mut().unwrap().kill9();
                    r.worker = Some(Worker::spawn_on(&env, binary, r.port));
                    "SIGKILL replica 1, started again".to_owned()
                }
                Fault::TermReplica => {
                    let mut w = replicas[1].worker.take().unwrap();
                    let exit =
                        tokio::task::spawn_blocking(move || w.terminate(Duration::from_secs(40)))
                            .await
                            .unwrap();
                    sigterm_exit = Some(exit.and_then(|s| s.code()));
                    at = Instant::now();
                    format!(
                        "SIGTERM replica 2 (exit code {:?}), left stopped",
                        sigterm_exit.flatten()
                    )
                }
            };
            let running: Vec<u16> = running
                .into_iter()
                .filter(|p| replicas.iter().any(|r| r.port == *p && r.worker.is_some()))
                .collect();
            recoveries.push(ready_again(&running, at).await);
            faults.push((at, what));
            last_progress.1 = Instant::now();
        }
        if received >= expected && plan.peek().is_none() {
            break;
        }
        if last_progress.1.elapsed() > Duration::from_secs(120) {
            eprintln!("no progress for 120 s: stopping the wait");
            break;
        }
    }
    let published = publisher.await.unwrap();
    sampler.abort();
    let timeline = std::mem::replace(&mut *timeline.lock().unwrap(), Timeline(Vec::new()));
    // Let the records of the last deliveries commit before comparing.
    for _ in 0..100 {
        if env.succeeded().await >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut final_exits = Vec::new();
    for r in &mut replicas {
        if let Some(mut w) = r.worker.take() {
            final_exits.push(
                tokio::task::spawn_blocking(move || w.terminate(Duration::from_secs(40)))
                    .await
                    .unwrap()
                    .and_then(|s| s.code()),
            );
        }
    }
    let v = verdict(&env, &receiver, expected).await;
    let reports: Vec<FaultReport> = faults
        .into_iter()
        .zip(recoveries)
        .map(|((at, what), ready_again)| FaultReport {
            what,
            ready_again,
            longest_pause: timeline.longest_pause(at, Duration::from_secs(20)),
        })
        .collect();
    println!("events published:        {published}");
    println!("webhooks per event:      {}", a.webhooks);
    println!("deliveries expected:     {expected}");
    println!("distinct webhook-ids:    {}", v.distinct_received);
    println!("lost:                    {}", v.lost);
    println!("repeats:                 {}", v.repeats);
    println!(
        "access records:          {} ({} succeeded)",
        v.records, v.records_succeeded
    );
    println!(
        "records agree:           {} of {} ({:.2}%)",
        v.records_agree,
        v.expected,
        100.0 * v.agree_ratio()
    );
    println!("faults (replicas ready again after; longest pause in arrivals within 20 s):");
    for f in &reports {
        println!(
            "  {:<70} {:>5.1} s  {:>5.1} s",
            f.what,
            f.ready_again.as_secs_f64(),
            f.longest_pause.as_secs_f64()
        );
    }
    println!("final SIGTERM exit codes: {final_exits:?}");
    println!(
        "took:                    {:.1} s",
        started.elapsed().as_secs_f64()
    );
    env.destroy().await;
    v.lost == 0
        && v.records_agree == expected
        && sigterm_exit == Some(Some(0))
        && final_exits.iter().all(|c| *c == Some(0))
        && reports
            .iter()
            .all(|f| f.ready_again < Duration::from_secs(10))
}

/// Deliveries per second when `replicas` replicas drain `events` events queued beforehand.
async fn drain(urls: &[String], replicas: usize, events: usize, binary: &str) -> f64 {
    let mut env = Env::create("clusterdrain").await;
    env.amqp = urls.to_vec();
    let receiver = CountingReceiver::start().await;
    let webhooks = 2;
    env.insert_webhooks(receiver.addr, webhooks).await;
    // One replica declares the topology and stops; the events then wait in the queue.
    let port = free_port();
    let mut first = Worker::spawn_on(&env, binary, port);
    assert!(ready_on(port, Duration::from_secs(60)).await);
    first.terminate(Duration::from_secs(30));
    let mut p = EventPublisher::on(env.events_exchange(), urls.to_vec());
    let ids: Vec<String> = (0..events).map(|_| Uuid::new_v4().to_string()).collect();
    for chunk in ids.chunks(500) {
        let bodies: Vec<Vec<u8>> = chunk.iter().map(|id| event_body(id)).collect();
        p.publish_batch(&bodies).await;
    }
    let expected = events * webhooks;
    let t0 = Instant::now();
    let mut workers: Vec<Worker> = (0..replicas)
        .map(|_| Worker::spawn_on(&env, binary, free_port()))
        .collect();
    while receiver.seen.lock().unwrap().ids.len() < expected {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the drain did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = expected as f64 / t0.elapsed().as_secs_f64();
    for w in &mut workers {
        w.terminate(Duration::from_secs(30));
    }
    env.destroy().await;
    rate
}

#[tokio::main]
async fn main() {
    let a = args();
    let urls: Vec<String> = std::env::var("TAGCAST_CLUSTER_URLS")
        .expect("TAGCAST_CLUSTER_URLS: run this through scripts/cluster-chaos")
        .split(',')
        .map(str::to_owned)
        .collect();
    let binary = std::env::var("TAGCAST_BIN").unwrap_or_else(|_| "target/release/tagcast".into());
    let ok = chaos(&urls, &a, &binary).await;
    if a.drain_events > 0 {
        println!();
        println!(
            "drain of {} events x 2 webhooks queued beforehand (each replica started at once):",
            a.drain_events
        );
        println!("replicas  deliveries/s  ratio to one");
        let mut one = None;
        for replicas in 1..=3 {
            let rate = drain(&urls, replicas, a.drain_events, &binary).await;
            let base = *one.get_or_insert(rate);
            println!("{replicas:>8}  {rate:>12.0}  {:>12.2}", rate / base);
        }
    }
    if !ok {
        std::process::exit(1);
    }
}
