//! A running tagcast inside the test process, on a database, queue prefix and exchanges of its
//! own, with helpers to act and observe; what it made is removed when it is dropped, passed or
//! failed. Set TEST_LOG=debug (or any filter) to see tagcast's logs.

use std::net::SocketAddr;
use std::sync::Once;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use serde_json::Value;
use tagcast::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{AMQP, eventually, pg_connect, remove_environment};

static LOGS: Once = Once::new();

fn init_logs() {
    LOGS.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// Settings for a test: unique prefix, exchanges and database, private targets allowed (the
/// receiver is on loopback), short delays.
pub fn test_settings() -> Settings {
    let id = Uuid::new_v4().simple().to_string();
    let prefix = format!("t{}", &id[..12]);
    let mut s = Settings::defaults();
    s.queue_prefix = prefix.clone();
    s.events_exchange = format!("{prefix}.registry.events");
    s.status_exchange = format!("{prefix}.status");
    s.database_url = format!("postgres://postgres@127.0.0.1:5432/tagcast_{prefix}")
        .parse()
        .unwrap();
    s.metrics_addr = "127.0.0.1:0".parse().unwrap();
    s.api_addr = "127.0.0.1:0".parse().unwrap();
    s.allow_private_targets = true;
    s.retry_initial_delay = Duration::from_millis(200);
    s.retry_max_delay = Duration::from_secs(2);
    s.retry_max_attempts = 3;
    s.http_connect_timeout = Duration::from_secs(1);
    s.http_timeout = Duration::from_secs(2);
    s.shutdown_grace = Duration::from_secs(5);
    s
}

/// The name of the test's own database.
pub fn database_name(settings: &Settings) -> String {
    let url = settings.database_url.expose();
    url.rsplit('/').next().unwrap_or(url).to_owned()
}

/// A running tagcast and everything a test needs around it.
pub struct TestApp {
    pub settings: Settings,
    /// The test's own database.
    pub pg: tokio_postgres::Client,
    pub metrics_addr: SocketAddr,
    /// The admin API.
    pub api_addr: SocketAddr,
    amqp: Connection,
    channel: Channel,
    status: Consumer,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    torn_down: bool,
}

impl Drop for TestApp {
    /// A test that failed (or forgot `teardown`) still leaves nothing behind. tagcast is told
    /// to stop first, so it does not declare the queues again once they are gone.
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if let Some(task) = self.task.take() {
            if multi_thread {
                // tagcast's tasks run on the other workers meanwhile: let it stop.
                let deadline = Instant::now() + self.settings.shutdown_grace + SECOND;
                while !task.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            // On a single-threaded runtime nothing else runs until the test's runtime is
            // dropped, which drops tagcast's tasks unpolled.
            task.abort();
        }
        let settings = self.settings.clone();
        if !super::run_detached(async move { remove(&settings).await }) {
            eprintln!("could not remove the test's queues and database");
        }
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(test_settings()).await
    }

    pub async fn spawn_with(settings: Settings) -> TestApp {
        init_logs();
        let db = database_name(&settings);
        super::create_database(&db).await;
        let amqp = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .expect("RabbitMQ is not running");
        let channel = amqp.create_channel().await.unwrap();
        // Declared here as tagcast declares them, so the status queue can be bound before
        // tagcast is up.
        for exchange in [&settings.events_exchange, &settings.status_exchange] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let status_queue = format!("{}.test-status", settings.queue_prefix);
        channel
            .queue_declare(
                status_queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        // Deliveries' status events and webhooks' (`webhook.disabled`).
        for key in ["delivery.#", "webhook.#"] {
            channel
                .queue_bind(
                    status_queue.as_str().into(),
                    settings.status_exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let status = channel
            .basic_consume(
                status_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();

        let mut app = TestApp {
            pg: pg_connect(settings.database_url.expose()).await,
            settings,
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            api_addr: "127.0.0.1:0".parse().unwrap(),
            amqp,
            channel,
            status,
            stop: None,
            task: None,
            torn_down: false,
        };
        app.start().await;
        app
    }

    /// Starts tagcast (again) on this test's database and queues, and waits until it is ready.
    pub async fn start(&mut self) {
        let app = tagcast::App::build(self.settings.clone())
            .await
            .expect("tagcast failed to start");
        self.metrics_addr = app.metrics_addr();
        self.api_addr = app.api_addr();
        let (tx, rx) = oneshot::channel();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        })));
        eventually("tagcast ready", Duration::from_secs(20), || async {
            (self.get("/readyz").await.0 == 200).then_some(())
        })
        .await;
    }

    /// Stops tagcast as SIGTERM would, and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Stops tagcast and removes the test's queues, exchanges and database (which dropping
    /// the `TestApp` does too, as a test that fails never gets here).
    pub async fn teardown(mut self) {
        self.stop().await;
        let _ = self.amqp.close(200, "bye".into()).await;
        remove(&self.settings).await;
        self.torn_down = true;
    }

    /// Inserts a webhook for `namespace/repoTest` and returns its id.
    pub async fn insert_webhook(&self, name: &str, url: &str, trigger: Trigger<'_>) -> i64 {
        self.insert_webhook_for("namespace", "repoTest", name, url, trigger, None)
            .await
    }

    pub async fn insert_webhook_for(
        &self,
        namespace: &str,
        repository: &str,
        name: &str,
        url: &str,
        trigger: Trigger<'_>,
        secret: Option<&str>,
    ) -> i64 {
        let (kind, expression, tags): (&str, Option<&str>, Option<Vec<String>>) = match trigger {
            Trigger::All => ("all", None, None),
            Trigger::Expression(e) => ("expression", Some(e), None),
            Trigger::Tags(t) => (
                "tags",
                None,
                Some(t.iter().map(|s| s.to_string()).collect()),
            ),
        };
        self.pg
            .query_one(
                "INSERT INTO webhooks (namespace, repository, name, url, trigger_type, trigger_expression, trigger_tags, secret)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[&namespace, &repository, &name, &url, &kind, &expression, &tags, &secret],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Publishes raw bytes to the events exchange, as the registry would.
    pub async fn publish_raw(&self, body: &[u8]) {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = self
            .channel
            .basic_publish(
                self.settings.events_exchange.as_str().into(),
                "build.completed.namespace.repoTest".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap();
        drop(confirm);
    }

    pub async fn publish_event(&self, event: &Value) {
        self.publish_raw(&serde_json::to_vec(event).unwrap()).await;
    }

    /// The next status event, or a panic after `timeout`.
    pub async fn next_status(&mut self, timeout: Duration) -> Value {
        let delivery = tokio::time::timeout(timeout, self.status.next())
            .await
            .unwrap_or_else(|_| panic!("no status event within {timeout:?}"))
            .expect("status consumer ended")
            .unwrap();
        serde_json::from_slice(&delivery.data).unwrap()
    }

    /// Status events until `n` have arrived, or a panic after `timeout` in all.
    pub async fn statuses(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            out.push(self.next_status(left).await);
        }
        out
    }

    /// Asserts that no status event arrives within `window`.
    pub async fn no_status_within(&mut self, window: Duration) {
        if let Ok(Some(Ok(d))) = tokio::time::timeout(window, self.status.next()).await {
            panic!(
                "unexpected status event: {}",
                String::from_utf8_lossy(&d.data)
            );
        }
    }

    /// Messages waiting in one of this test's queues (named without the prefix).
    pub async fn queue_messages(&self, suffix: &str) -> Vec<Vec<u8>> {
        let queue = format!("{}.{suffix}", self.settings.queue_prefix);
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(message.delivery.data);
        }
        out
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        match reqwest::get(format!("http://{}{path}", self.metrics_addr)).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    pub async fn metrics_text(&self) -> String {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        text
    }

    /// The value of one series in `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Waits until `series` reaches at least `value`.
    pub async fn wait_metric(&self, series: &str, value: f64, timeout: Duration) {
        eventually(&format!("{series} at {value}"), timeout, || async {
            (self.metric(series).await >= value).then_some(())
        })
        .await;
    }

    /// The first column of the first row `sql` returns.
    pub async fn scalar<T>(&self, sql: &str) -> T
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        self.pg.query_one(sql, &[]).await.unwrap().get(0)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Trigger<'a> {
    All,
    Expression(&'a str),
    Tags(&'a [&'a str]),
}

/// A valid build event for `namespace/repoTest` (the contract's example) with a fresh id.
pub fn event(tag: &str) -> Value {
    event_for("namespace", "repoTest", tag)
}

pub fn event_for(namespace: &str, repository: &str, tag: &str) -> Value {
    let sample = tagcast::publish::Sample {
        namespace: namespace.into(),
        repository: repository.into(),
        tag: tag.into(),
        event_id: None,
        // The contract's example time, which the expected notification bodies carry.
        occurred_at: Some("2016-11-29T12:25:46+08:00".parse().unwrap()),
    };
    serde_json::from_slice(&sample.body(&Uuid::new_v4().to_string())).unwrap()
}

pub const SECOND: Duration = Duration::from_secs(1);

/// Deletes a test's queues, exchanges and database.
async fn remove(settings: &Settings) {
    remove_environment(
        &settings.queue_prefix,
        [&settings.events_exchange, &settings.status_exchange],
        &[],
        &database_name(settings),
    )
    .await;
}

/// An answer of the admin API.
#[derive(Debug)]
pub struct ApiReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    /// A new API token of `scope`, made as `tagcast tokens create` makes one.
    pub async fn token(&self, name: &str, scope: tagcast::store::tokens::Scope) -> String {
        let pool = tagcast::store::connect(&self.settings.database_url, 1).unwrap();
        let made = tagcast::api::auth::new_token().unwrap();
        tagcast::store::tokens::create(&pool, name, scope, &made.lookup, &made.hash)
            .await
            .unwrap();
        tagcast::store::close(&pool);
        made.token
    }

    /// Calls the admin API; `body` is sent as JSON when given.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> ApiReply {
        let mut request = reqwest::Client::new().request(
            method.parse().unwrap(),
            format!("http://{}{path}", self.api_addr),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the admin API answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        ApiReply {
            status,
            headers,
            body,
        }
    }
}
