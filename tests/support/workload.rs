//! Load against tagcast as a child process, for the chaos run, the benchmark and the reduced
//! chaos test: a counting HTTP receiver, an isolated environment (database, prefix, exchanges), a
//! publisher of build events, and the chaos run itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::net::TcpListener;
use uuid::Uuid;

use super::{AMQP, create_database, remove_environment};

/// What the receiver saw: every `webhook-id` with how often it came, and arrival latencies
/// (from the event's `occurred_at`, carried in the body's `pushed_at` is only to the second,
/// so latency uses the `x-sent-ms` the publisher put in the tag).
#[derive(Default)]
pub struct Seen {
    pub ids: HashMap<String, u32>,
    pub latencies_us: Vec<u64>,
}

/// A fast HTTP receiver that answers 200 and counts.
#[derive(Clone)]
pub struct CountingReceiver {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    pub requests: Arc<AtomicU64>,
}

impl CountingReceiver {
    pub async fn start() -> CountingReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let requests = Arc::new(AtomicU64::new(0));
        let (s, r) = (seen.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let (seen, requests) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, requests) = (seen.clone(), requests.clone());
                        async move {
                            let id = req
                                .headers()
                                .get("webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let now_us = Utc::now().timestamp_micros();
                            let sent_us = sent_at_us(&body);
                            requests.fetch_add(1, Ordering::Relaxed);
                            {
                                let mut seen = seen.lock().unwrap();
                                *seen.ids.entry(id).or_default() += 1;
                                if let Some(sent) = sent_us {
                                    seen.latencies_us
                                        .push(u64::try_from(now_us - sent).unwrap_or(0));
                                }
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CountingReceiver {
            addr,
            seen,
            requests,
        }
    }
}

/// Events carry their send time in the tag (`t<micros>`), so the receiver can measure latency
/// at microsecond precision (the body's `pushed_at` has whole seconds only).
fn sent_at_us(body: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"tag\":\"t")? + 8;
    let end = start + text[start..].find('"')?;
    text[start..end].parse().ok()
}

/// An isolated environment: its own database, queue prefix and exchanges.
pub struct Env {
    pub prefix: String,
    pub database: String,
    /// A pool, so that it outlives a restart of PostgreSQL.
    pub pg: tagcast::store::Pool,
    pub metrics_port: u16,
    /// The broker's node URLs: the local broker, unless a cluster run sets its nodes.
    pub amqp: Vec<String>,
}

impl Env {
    pub async fn create(label: &str) -> Env {
        let env = Env::unmigrated(label).await;
        tagcast::store::migrate(&env.pg).await.unwrap();
        env
    }

    /// An environment whose database is still empty: the tagcast binary it runs migrates it to
    /// its own schema (the benchmark runs an earlier build against its earlier schema).
    pub async fn unmigrated(label: &str) -> Env {
        let prefix = format!("{label}{}", &Uuid::new_v4().simple().to_string()[..8]);
        let database = format!("tagcast_{prefix}");
        create_database(&database).await;
        let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
        let pg = tagcast::store::connect(&url.parse().unwrap(), 4).unwrap();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Env {
            prefix,
            database,
            pg,
            metrics_port,
            amqp: vec![AMQP.to_owned()],
        }
    }

    /// A connection to the first of the environment's broker nodes that takes one.
    pub async fn broker(&self) -> Option<Connection> {
        for url in &self.amqp {
            if let Ok(conn) = Connection::connect(url, ConnectionProperties::default()).await {
                return Some(conn);
            }
        }
        None
    }

    /// How many deliveries are recorded as succeeded; 0 while the database cannot be reached
    /// (a chaos run restarts it).
    pub async fn succeeded(&self) -> usize {
        let Ok(client) = self.pg.get().await else {
            return 0;
        };
        client
            .query_one(
                "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
                &[],
            )
            .await
            .map_or(0, |r| r.get::<_, i64>(0) as usize)
    }

    /// A connection from the environment's pool.
    pub async fn client(&self) -> tagcast::store::Client {
        self.pg.get().await.expect("PostgreSQL is not running")
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.database)
    }
    pub fn events_exchange(&self) -> String {
        format!("{}.registry.events", self.prefix)
    }
    pub fn status_exchange(&self) -> String {
        format!("{}.status", self.prefix)
    }

    /// The command that runs tagcast on this environment.
    pub fn command(&self, binary: &str) -> Command {
        self.command_on(binary, self.metrics_port)
    }

    /// The command for one of several replicas, each serving metrics on a port of its own.
    pub fn command_on(&self, binary: &str, metrics_port: u16) -> Command {
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .env("TAGCAST_AMQP_URL", self.amqp.join(","))
            .env("TAGCAST_DATABASE_URL", self.database_url())
            .env("TAGCAST_QUEUE_PREFIX", &self.prefix)
            .env("TAGCAST_EVENTS_EXCHANGE", self.events_exchange())
            .env("TAGCAST_STATUS_EXCHANGE", self.status_exchange())
            .env("TAGCAST_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("TAGCAST_API_ADDR", "127.0.0.1:0")
            .env("TAGCAST_ALLOW_PRIVATE_TARGETS", "true")
            .env("TAGCAST_RETRY_INITIAL_DELAY", "250ms")
            .env("TAGCAST_RETRY_MAX_DELAY", "2s")
            .env("TAGCAST_RETRY_MAX_ATTEMPTS", "20")
            .env("TAGCAST_HTTP_CONNECT_TIMEOUT", "1s")
            .env("TAGCAST_HTTP_TIMEOUT", "2s")
            .env("TAGCAST_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("TAGCAST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if std::env::var_os("TAGCAST_CHILD_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        cmd
    }

    /// Inserts `count` webhooks for `chaos/repo`, each on its own path of the receiver.
    pub async fn insert_webhooks(&self, receiver: SocketAddr, count: usize) {
        for i in 0..count {
            self.client()
                .await
                .execute(
                    "INSERT INTO webhooks (namespace, repository, name, url) VALUES ('chaos', 'repo', $1, $2)",
                    &[&format!("hook{i}"), &format!("http://{receiver}/hook/{i}?secret=x")],
                )
                .await
                .unwrap();
        }
    }

    pub async fn ready(&self, timeout: Duration) -> bool {
        ready_on(self.metrics_port, timeout).await
    }
}

/// Whether the tagcast serving metrics on `port` reports ready within `timeout`.
pub async fn ready_on(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl Env {
    /// The queue a consumer of status events would have: durable, quorum, bound to every
    /// status. Nobody reads it; `destroy` deletes it. Without it the broker drops each status
    /// event as unroutable, which costs it less than storing it as production would.
    pub fn status_queue(&self) -> String {
        format!("{}.status.consumer", self.prefix)
    }

    pub async fn bind_status_queue(&self) {
        let conn = self.broker().await.expect("RabbitMQ is not running");
        let ch = conn.create_channel().await.unwrap();
        declare_topic_exchange(&ch, &self.status_exchange())
            .await
            .unwrap();
        declare_quorum_queue(&ch, &self.status_queue())
            .await
            .unwrap();
        ch.queue_bind(
            self.status_queue().as_str().into(),
            self.status_exchange().as_str().into(),
            "delivery.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let _ = conn.close(200, "bound".into()).await;
    }

    /// Drops the database and every queue and exchange of the environment.
    pub async fn destroy(self) {
        tagcast::store::close(&self.pg);
        remove_environment(
            &self.prefix,
            [&self.events_exchange(), &self.status_exchange()],
            &[self.status_queue()],
            &self.database,
        )
        .await;
    }
}

/// Declares a durable topic exchange, as tagcast declares its own.
pub async fn declare_topic_exchange(ch: &Channel, name: &str) -> Result<(), lapin::Error> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Topic,
        options,
        FieldTable::default(),
    )
    .await
}

/// Declares a durable quorum queue with no other arguments.
pub async fn declare_quorum_queue(ch: &Channel, name: &str) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name.into(), options, args).await.map(drop)
}

/// Publishes build events with publisher confirms, reconnecting when the broker goes away, so
/// that "published" means "the broker has it".
pub struct EventPublisher {
    exchange: String,
    channel: Option<(Connection, Channel)>,
    /// Node URLs, tried in turn from `next` when a connection is lost.
    nodes: Vec<String>,
    next: usize,
}

impl EventPublisher {
    pub fn new(exchange: String) -> EventPublisher {
        EventPublisher::on(exchange, vec![AMQP.to_owned()])
    }

    /// A publisher to the nodes of a cluster, going on to the next node when one goes away.
    pub fn on(exchange: String, nodes: Vec<String>) -> EventPublisher {
        EventPublisher {
            exchange,
            channel: None,
            nodes,
            next: 0,
        }
    }

    async fn channel(&mut self) -> Channel {
        loop {
            if let Some((conn, ch)) = &self.channel
                && conn.status().connected()
                && ch.status().connected()
            {
                return ch.clone();
            }
            self.channel = None;
            let url = self.nodes[self.next % self.nodes.len()].clone();
            self.next += 1;
            if let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await
                && let Ok(ch) = conn.create_channel().await
                && ch
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .is_ok()
                && declare_topic_exchange(&ch, &self.exchange).await.is_ok()
            {
                self.channel = Some((conn, ch));
                continue;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Publishes a batch and waits for every confirm; retries the whole batch on failure
    /// (duplicates are fine: the event id makes them idempotent).
    pub async fn publish_batch(&mut self, events: &[Vec<u8>]) {
        loop {
            let ch = self.channel().await;
            let mut pending = Vec::with_capacity(events.len());
            let mut ok = true;
            for body in events {
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                match ch
                    .basic_publish(
                        self.exchange.as_str().into(),
                        "build.completed.chaos.repo".into(),
                        BasicPublishOptions::default(),
                        body,
                        props,
                    )
                    .await
                {
                    Ok(c) => pending.push(c),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                let mut all = true;
                for c in pending {
                    all &= matches!(c.await, Ok(conf) if conf.is_ack());
                }
                if all {
                    return;
                }
            }
            self.channel = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A build event for `chaos/repo`, as `tagcast publish` makes it; its tag carries the send time
/// in microseconds.
pub fn event_body(event_id: &str) -> Vec<u8> {
    tagcast::publish::Sample {
        namespace: "chaos".into(),
        repository: "repo".into(),
        tag: format!("t{}", Utc::now().timestamp_micros()),
        event_id: None,
        occurred_at: None,
    }
    .body(event_id)
}

/// A running tagcast child process.
pub struct Worker {
    pub child: Child,
}

impl Worker {
    pub fn spawn(env: &Env, binary: &str) -> Worker {
        Worker::spawn_on(env, binary, env.metrics_port)
    }

    /// A replica serving metrics on `metrics_port`.
    pub fn spawn_on(env: &Env, binary: &str, metrics_port: u16) -> Worker {
        Worker {
            child: env
                .command_on(binary, metrics_port)
                .spawn()
                .expect("cannot start tagcast"),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }
}

/// A run that panics must not leave its replicas running.
impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// Agreement between what the receiver saw and the access records.
#[derive(Debug)]
pub struct Verdict {
    pub expected: usize,
    pub distinct_received: usize,
    pub lost: usize,
    pub repeats: u64,
    pub records: usize,
    pub records_succeeded: usize,
    pub records_agree: usize,
}

impl Verdict {
    pub fn agree_ratio(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.records_agree as f64 / self.expected as f64
        }
    }
}

pub async fn verdict(env: &Env, receiver: &CountingReceiver, expected: usize) -> Verdict {
    let rows: Vec<(Uuid, String)> = env
        .client()
        .await
        .query("SELECT id, status FROM deliveries", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let seen = receiver.seen.lock().unwrap();
    let received: usize = seen.ids.len();
    let total: u64 = seen.ids.values().map(|&n| u64::from(n)).sum();
    let succeeded: Vec<String> = rows
        .iter()
        .filter(|(_, s)| s == "succeeded")
        .map(|(id, _)| id.to_string())
        .collect();
    // A record agrees when it says succeeded and the receiver has that webhook-id.
    let agree = succeeded
        .iter()
        .filter(|id| seen.ids.contains_key(*id))
        .count();
    let lost = expected.saturating_sub(received);
    Verdict {
        expected,
        distinct_received: received,
        lost,
        repeats: total - received as u64,
        records: rows.len(),
        records_succeeded: succeeded.len(),
        records_agree: agree,
    }
}

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    pub events: usize,
    pub webhooks: usize,
    pub kills: usize,
    /// Graceful restarts (SIGTERM, wait for exit, start again) under load.
    pub sigterms: usize,
    pub restart_rabbitmq: bool,
    pub restart_postgres: bool,
    /// Give up when nothing new arrives for this long.
    pub stall: Duration,
}

#[derive(Debug)]
pub struct ChaosReport {
    pub plan: ChaosPlan,
    pub published: usize,
    pub verdict: Verdict,
    pub kills_done: usize,
    /// Exit codes of the SIGTERMs under load, then of the final one.
    pub sigterm_exits: Vec<Option<i32>>,
    pub seconds: f64,
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.verdict;
        writeln!(f, "events published:        {}", self.published)?;
        writeln!(f, "webhooks per event:      {}", self.plan.webhooks)?;
        writeln!(f, "deliveries expected:     {}", v.expected)?;
        writeln!(f, "distinct webhook-ids:    {}", v.distinct_received)?;
        writeln!(f, "lost:                    {}", v.lost)?;
        writeln!(f, "repeats:                 {}", v.repeats)?;
        writeln!(
            f,
            "access records:          {} ({} succeeded)",
            v.records, v.records_succeeded
        )?;
        writeln!(
            f,
            "records agree:           {} of {} ({:.2}%)",
            v.records_agree,
            v.expected,
            100.0 * v.agree_ratio()
        )?;
        writeln!(f, "SIGKILLs:                {}", self.kills_done)?;
        writeln!(f, "RabbitMQ restarted:      {}", self.plan.restart_rabbitmq)?;
        writeln!(f, "PostgreSQL restarted:    {}", self.plan.restart_postgres)?;
        writeln!(
            f,
            "SIGTERM exit codes:      {:?} (under load, then final)",
            self.sigterm_exits
        )?;
        write!(f, "took:                    {:.1} s", self.seconds)
    }
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Stops the RabbitMQ node and starts it again; returns when it accepts connections.
pub fn restart_rabbitmq() {
    sh("rabbitmqctl stop");
    sh("rabbitmq-server -detached");
    for _ in 0..120 {
        if sh("rabbitmq-diagnostics -q check_port_connectivity") {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("RabbitMQ did not come back");
}

/// Restarts the PostgreSQL cluster (fast shutdown: open connections are cut).
pub fn restart_postgres() {
    sh(
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | sort -V | tail -n 1) main restart -m fast",
    );
    for _ in 0..120 {
        if sh("pg_isready -q -h 127.0.0.1 -p 5432") {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("PostgreSQL did not come back");
}

/// Publishes `plan.events` events while killing and restarting as planned, waits until every
/// delivery arrived or progress stalls, then compares the receiver with the access records.
pub async fn run_chaos(plan: ChaosPlan, binary: &str) -> ChaosReport {
    let started = Instant::now();
    let env = Env::create("chaos").await;
    let receiver = CountingReceiver::start().await;
    env.insert_webhooks(receiver.addr, plan.webhooks).await;
    let mut worker = Worker::spawn(&env, binary);
    assert!(
        env.ready(Duration::from_secs(30)).await,
        "tagcast did not become ready"
    );

    let expected = plan.events * plan.webhooks;
    let exchange = env.events_exchange();
    let events = plan.events;
    let publisher = tokio::spawn(async move {
        let mut p = EventPublisher::new(exchange);
        let ids: Vec<String> = (0..events).map(|_| Uuid::new_v4().to_string()).collect();
        for chunk in ids.chunks(250) {
            let bodies: Vec<Vec<u8>> = chunk.iter().map(|id| event_body(id)).collect();
            p.publish_batch(&bodies).await;
        }
        events
    });

    // Faults at fractions of the deliveries received: kills spread out, the broker restart
    // and the database restart between them.
    let mut faults: Vec<(f64, &str)> = (1..=plan.kills)
        .map(|i| (i as f64 / (plan.kills + 1) as f64, "kill"))
        .collect();
    faults.extend(
        (1..=plan.sigterms).map(|i| (i as f64 / (plan.sigterms + 1) as f64 + 0.05, "term")),
    );
    if plan.restart_rabbitmq {
        faults.push((0.3, "rabbitmq"));
    }
    if plan.restart_postgres {
        faults.push((0.6, "postgres"));
    }
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut faults = faults.into_iter().peekable();
    let mut kills_done = 0;
    let mut sigterm_exits = Vec::new();
    let mut last_progress = (0usize, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let received = receiver.seen.lock().unwrap().ids.len();
        if received != last_progress.0 {
            last_progress = (received, Instant::now());
        }
        if let Some(&(at, what)) = faults.peek()
            && received as f64 >= at * expected as f64
        {
            faults.next();
            match what {
                "kill" => {
                    worker.kill9();
                    kills_done += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    worker = Worker::spawn(&env, binary);
                }
                "term" => {
                    let (exit, w) = tokio::task::spawn_blocking(move || {
                        (worker.terminate(Duration::from_secs(40)), worker)
                    })
                    .await
                    .unwrap();
                    sigterm_exits.push(exit.and_then(|s| s.code()));
                    drop(w);
                    worker = Worker::spawn(&env, binary);
                }
                "rabbitmq" => tokio::task::spawn_blocking(restart_rabbitmq).await.unwrap(),
                _ => tokio::task::spawn_blocking(restart_postgres).await.unwrap(),
            }
            last_progress.1 = Instant::now();
        }
        if received >= expected && faults.peek().is_none() {
            let succeeded = env.succeeded().await;
            if succeeded >= expected {
                break;
            }
        }
        if last_progress.1.elapsed() > plan.stall {
            eprintln!("no progress for {:?}: stopping the wait", plan.stall);
            diagnose(&env).await;
            break;
        }
    }
    let published = publisher.await.unwrap();
    sigterm_exits.push(
        worker
            .terminate(Duration::from_secs(40))
            .and_then(|s| s.code()),
    );
    let verdict = verdict(&env, &receiver, expected).await;
    if verdict.lost > 0 || verdict.records_agree != expected {
        diagnose(&env).await;
    }
    if std::env::var_os("CHAOS_KEEP").is_some() {
        eprintln!("kept database {} and prefix {}", env.database, env.prefix);
    } else {
        env.destroy().await;
    }
    ChaosReport {
        plan,
        published,
        verdict,
        kills_done,
        sigterm_exits,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Where unfinished deliveries are stuck: printed when a run loses something.
async fn diagnose(env: &Env) {
    let by_status: Vec<(String, i32, bool, bool, i64)> = env
        .client()
        .await
        .query(
            "SELECT status, attempts, lease_until IS NOT NULL, next_attempt_at IS NOT NULL, count(*)
               FROM deliveries WHERE status <> 'succeeded' GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "unfinished deliveries (status, attempts, leased, next_attempt_at set, count): {by_status:?}"
    );
    if let Ok(out) = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "-q",
        ])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&env.prefix))
        {
            eprintln!("queue (ready, unacked): {line}");
        }
    }
    if let Ok(conn) = Connection::connect(AMQP, ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        let topology = tagcast::amqp::Topology {
            prefix: env.prefix.clone(),
            events_exchange: env.events_exchange(),
            status_exchange: env.status_exchange(),
            quorum_group_size: None,
        };
        for q in topology.queues() {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Ok(queue) = ch
                .queue_declare(q.as_str().into(), passive, FieldTable::default())
                .await
                && queue.message_count() > 0
            {
                eprintln!("queue {q}: {} messages", queue.message_count());
            }
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}
