//! The floor: what each part the contract asks of a delivery costs when it runs on its own at
//! full speed, with no webhook logic at all.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt as _;
use lapin::options::*;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tagcast::model::{DeliveryRecord, DeliveryStatus, delivery_id};
use tagcast::status::StatusEvent;
use tagcast::store::{Decision, EventDecisions, Lease, NewAttempt, deliveries};
use uuid::Uuid;

use crate::cpu::{cpu_of, process_usage, thread_cpu};
use crate::measures::backlog;
use crate::support::{self, CountingReceiver, Env, event_body};

/// CPU seconds per 1,000 of each part that the contract asks of every delivery, measured on its own at
/// full speed with no webhook logic. Servers and the receiver only, plus an HTTP client: the
/// AMQP and database clients and all of tagcast's own work come on top, so the sum is a floor
/// that no design on these parts can go below.
pub(crate) struct Floor {
    /// RabbitMQ: a persistent status event published with confirms, stored in a bound quorum
    /// queue (dropped unrouted with `--no-status-queue`).
    pub(crate) status_event: f64,
    /// RabbitMQ: an event consumed from a quorum queue and acknowledged (64 per acknowledgement);
    /// a delivery pays 1/fan-out of it.
    pub(crate) event: f64,
    /// PostgreSQL: a delivery row written once, already final, and its attempt row, in tagcast's
    /// schema, 64 deliveries per transaction.
    pub(crate) records: f64,
    /// Not part of the floor: the same rows as tagcast writes them, the decision with its claim
    /// and then the attempt that finishes it, which is what the claim costs PostgreSQL.
    pub(crate) records_as_tagcast: f64,
    /// The benchmark's receiver answering a POST of the notification.
    pub(crate) receiver: f64,
    /// reqwest sending that POST with the contract's headers and signature, on a thread of its own.
    pub(crate) http_client: f64,
}

impl Floor {
    pub(crate) fn per_delivery(&self, fanout: usize) -> f64 {
        self.status_event
            + self.event / fanout as f64
            + self.records
            + self.receiver
            + self.http_client
    }

    /// Deliveries per second the floor allows with every core busy.
    pub(crate) fn rate(&self, fanout: usize) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        cores * 1000.0 / self.per_delivery(fanout)
    }
}

/// A status event as tagcast publishes it, for its size.
pub(crate) fn status_body() -> Vec<u8> {
    let record = DeliveryRecord {
        id: Uuid::new_v4(),
        event_id: Uuid::new_v4().to_string(),
        webhook_id: 42,
        webhook_name: "hook0".into(),
        namespace: "chaos".into(),
        repository: "repo".into(),
        tag: "t1796011200000000".into(),
        digest: "sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917".into(),
        status: DeliveryStatus::Succeeded,
        attempts: 1,
        http_status: Some(200),
        error: None,
        duration_ms: Some(2),
        next_attempt_at: None,
        occurred_at: Utc::now(),
    };
    StatusEvent::of(&record, Utc::now())
        .map(|event| event.to_json())
        .unwrap_or_default()
}

/// The notification tagcast would send for one event.
pub(crate) fn notification() -> String {
    match tagcast::events::decode(&event_body(&Uuid::new_v4().to_string())) {
        Ok(tagcast::events::Decoded::Build(event)) => tagcast::payload::render(&event),
        _ => unreachable!("the benchmark's event is a build event"),
    }
}

pub(crate) async fn floor(n: usize, status_queue: bool) -> Floor {
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
            // now(): the transaction's time, the deliveries' occurred_at above.
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status, response_body, \
             occurred_at) SELECT id, 1, now(), 2, 200, 'ok', now() FROM unnest($1::uuid[]) AS u(id)",
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
                        id: delivery_id(&event.event_id, webhook, event.occurred_at.to_utc()),
                        webhook_id: webhook,
                        status: DeliveryStatus::Pending,
                        error: None,
                        claim_first_attempt: true,
                        hold_until: None,
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
                    error_detail: None,
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
