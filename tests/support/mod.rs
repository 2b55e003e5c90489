//! What the integration tests, the chaos run and the benchmark share: the local services'
//! addresses, databases and environments of their own that are removed again, a running tagcast
//! in the test process ([`app`]), a scripted HTTP receiver ([`receiver`]), and load against
//! tagcast as a child process ([`workload`]).
#![allow(dead_code)]

pub mod app;
pub mod browser;
pub mod receiver;
pub mod workload;

use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use uuid::Uuid;

// Each of the test binaries and examples that include this module uses a part of it.
#[allow(unused_imports)]
pub use app::*;
#[allow(unused_imports)]
pub use workload::*;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A connection of its own to `url`, driven by a task of its own.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL is not running");
    tokio::spawn(connection);
    client
}

/// A database of its own, for a test that runs tagcast's commands without a `TestApp`; dropped
/// with the guard.
pub struct ScratchDatabase {
    pub url: String,
    name: String,
}

impl ScratchDatabase {
    pub async fn create() -> ScratchDatabase {
        let name = format!("tagcast_s{}", &Uuid::new_v4().simple().to_string()[..12]);
        pg_connect(PG_ADMIN)
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        ScratchDatabase {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        if !run_detached(async move { drop_database(&name).await }) {
            eprintln!("could not drop database {}", self.name);
        }
    }
}

/// Runs `work` to its end on a thread and runtime of its own, for destructors: they cannot
/// await, and may run inside a test's runtime or outside any. False if it could not run.
pub fn run_detached<F>(work: F) -> bool
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(work))
    })
    .join()
    .is_ok_and(|ran| ran.is_ok())
}

/// Calls `check` until it yields a value, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Creates a database, unless it exists.
pub async fn create_database(name: &str) {
    let admin = pg_connect(PG_ADMIN).await;
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
    }
}

/// Deletes everything tagcast declares for `prefix`, the two exchanges, `extra_queues`, and the
/// database. Whatever is already gone is skipped.
pub async fn remove_environment(
    prefix: &str,
    exchanges: [&String; 2],
    extra_queues: &[String],
    database: &str,
) {
    let topology = tagcast::amqp::Topology {
        prefix: prefix.to_owned(),
        events_exchange: exchanges[0].clone(),
        status_exchange: exchanges[1].clone(),
        quorum_group_size: None,
    };
    if let Ok(amqp) = Connection::connect(AMQP, ConnectionProperties::default()).await {
        if let Ok(channel) = amqp.create_channel().await {
            for queue in topology.queues().iter().chain(extra_queues) {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in exchanges {
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = amqp.close(200, "bye".into()).await;
    }
    drop_database(database).await;
}

/// Drops a database, closing its connections; one that does not exist is skipped.
pub async fn drop_database(name: &str) {
    if let Ok((admin, connection)) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await
    {
        tokio::spawn(connection);
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}
