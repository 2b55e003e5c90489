//! Prometheus metrics (contract section 8): one struct of typed handles. Every label value comes from
//! a closed enum, never from input.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::breaker::To;
use crate::disabling::Reason;
use crate::trigger::TriggerKind;

/// `result` of `tagcast_events_received_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    Accepted,
    Invalid,
    Ignored,
}

/// `outcome` of `tagcast_delivery_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptLabel {
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    Timeout,
    Connect,
    Blocked,
}

/// How a delivery ended: the `status` label of `tagcast_deliveries_completed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    Succeeded,
    /// After its last attempt, or at once for a webhook row that cannot be used.
    Failed,
}

/// Where a first attempt was made: the `path` label of `tagcast_first_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstAttempt {
    /// By the event stage itself.
    Inline,
    /// Handed to the delivery queue.
    Queued,
}

/// Why a job waited in the broker instead of making its attempt: the `reason` label of
/// `tagcast_deliveries_deferred_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    /// Its webhook's breaker is open.
    Breaker,
    /// Its webhook has `max_in_flight` attempts under way on this replica.
    MaxInFlight,
}

impl Deferred {
    fn as_str(self) -> &'static str {
        match self {
            Deferred::Breaker => "breaker",
            Deferred::MaxInFlight => "max_in_flight",
        }
    }
}

/// Which broker queue a dead-lettered or redelivered message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Events,
    Deliveries,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Events => "events",
            Stage::Deliveries => "deliveries",
        }
    }
}

/// `queue` of `tagcast_queue_messages`: the queues an operator watches (not the delay steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLabel {
    Events,
    EventsDead,
    Deliveries,
    DeliveriesDead,
}

/// Buckets for webhook latencies: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Event to delivery also spans retries: up to an hour and more.
const END_TO_END_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14_400.0,
];

/// How much of the webhook cache a change dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidated {
    /// One repository's webhooks (the notification named it).
    Repository,
    /// Everything: the listener reconnected (changes may have gone unseen), or a TRUNCATE.
    All,
}

impl Invalidated {
    pub fn as_str(self) -> &'static str {
        match self {
            Invalidated::Repository => "repository",
            Invalidated::All => "all",
        }
    }
}

fn lookup(hit: bool) -> &'static str {
    if hit { "hit" } else { "miss" }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    events_received: IntCounterVec,
    trigger_evaluations: IntCounterVec,
    attempts: IntCounterVec,
    completed: IntCounterVec,
    pub attempt_duration: Histogram,
    pub event_to_delivery: Histogram,
    pub in_flight: IntGauge,
    pub retries_scheduled: IntCounter,
    dead_lettered: IntCounterVec,
    redelivered: IntCounterVec,
    first_attempts: IntCounterVec,
    pub broker_connections: IntCounter,
    cache_invalidations: IntCounterVec,
    cache_lookups: IntCounterVec,
    pub cache_repositories: IntGauge,
    pub cache_webhooks: IntGauge,
    pub database_retries: IntCounter,
    pub status_publish_failures: IntCounter,
    pub swept: IntCounter,
    webhooks_disabled: IntCounterVec,
    pub breakers_open: IntGauge,
    breaker_transitions: IntCounterVec,
    deferred: IntCounterVec,
    up: IntGaugeVec,
    queue_messages: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let metrics = Metrics {
            events_received: counter_vec(
                r,
                "tagcast_events_received_total",
                "Inbound messages, by what they turned out to be.",
                &["result"],
            ),
            trigger_evaluations: counter_vec(
                r,
                "tagcast_trigger_evaluations_total",
                "Trigger rules evaluated, by kind and result.",
                &["trigger", "result"],
            ),
            attempts: counter_vec(
                r,
                "tagcast_delivery_attempts_total",
                "HTTP delivery attempts, by outcome.",
                &["outcome"],
            ),
            completed: counter_vec(
                r,
                "tagcast_deliveries_completed_total",
                "Deliveries that reached a final status.",
                &["status"],
            ),
            attempt_duration: histogram(
                r,
                "tagcast_delivery_attempt_duration_seconds",
                "Duration of one HTTP delivery attempt.",
                LATENCY_BUCKETS,
            ),
            event_to_delivery: histogram(
                r,
                "tagcast_event_to_delivery_seconds",
                "From the event's occurred_at to the webhook's successful response.",
                END_TO_END_BUCKETS,
            ),
            in_flight: gauge(
                r,
                "tagcast_deliveries_in_flight",
                "HTTP delivery attempts in progress.",
            ),
            retries_scheduled: counter(
                r,
                "tagcast_retries_scheduled_total",
                "Retries scheduled after a failed attempt.",
            ),
            dead_lettered: counter_vec(
                r,
                "tagcast_messages_dead_lettered_total",
                "Messages rejected to a dead-letter queue, by stage.",
                &["stage"],
            ),
            redelivered: counter_vec(
                r,
                "tagcast_messages_redelivered_total",
                "Messages the broker handed out again (after a crash, a requeue or a lost connection), by stage.",
                &["stage"],
            ),
            first_attempts: counter_vec(
                r,
                "tagcast_first_attempts_total",
                "First attempts, by where they were made: inline in the event stage, or queued for the delivery stage (slow or busy endpoint).",
                &["path"],
            ),
            broker_connections: counter(
                r,
                "tagcast_broker_connections_total",
                "Connections opened to RabbitMQ (more than one means reconnections).",
            ),
            cache_invalidations: counter_vec(
                r,
                "tagcast_webhook_cache_invalidations_total",
                "Webhook configuration dropped from the cache after a change: one repository's, or all of it (on reconnecting, or a TRUNCATE).",
                &["scope"],
            ),
            cache_lookups: counter_vec(
                r,
                "tagcast_webhook_cache_lookups_total",
                "A repository's webhooks looked up for an event: found in the cache, or loaded (hit ratio: hit / all).",
                &["result"],
            ),
            cache_repositories: gauge(
                r,
                "tagcast_webhook_cache_repositories",
                "Repositories whose webhooks are cached.",
            ),
            cache_webhooks: gauge(
                r,
                "tagcast_webhook_cache_webhooks",
                "Webhooks cached, with one for each cached repository (the weight TAGCAST_WEBHOOK_CACHE_SIZE bounds).",
            ),
            database_retries: counter(
                r,
                "tagcast_database_retries_total",
                "Database operations retried after a transient error.",
            ),
            swept: counter(
                r,
                "tagcast_deliveries_requeued_by_sweeper_total",
                "Unfinished deliveries whose job was lost, queued again by the sweeper.",
            ),
            status_publish_failures: counter(
                r,
                "tagcast_status_publish_failures_total",
                "Status events or jobs the broker did not confirm.",
            ),
            webhooks_disabled: counter_vec(
                r,
                "tagcast_webhooks_disabled_total",
                "Webhooks tagcast disabled, by reason: gone (410) or failing.",
                &["reason"],
            ),
            breakers_open: gauge(
                r,
                "tagcast_breakers_open",
                "Webhooks whose circuit breaker is open or half open on this replica.",
            ),
            breaker_transitions: counter_vec(
                r,
                "tagcast_breaker_transitions_total",
                "Circuit breaker state changes on this replica, by the state entered.",
                &["to"],
            ),
            deferred: counter_vec(
                r,
                "tagcast_deliveries_deferred_total",
                "Jobs sent back to wait in the broker without an attempt, by reason: breaker or max_in_flight.",
                &["reason"],
            ),
            up: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tagcast_dependency_up",
                        "1 while the dependency is reachable.",
                    ),
                    &["dependency"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                register(r, g.clone());
                g
            },
            queue_messages: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tagcast_queue_messages",
                        "Messages ready in tagcast's queues, as last seen by this replica.",
                    ),
                    &["queue"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                register(r, g.clone());
                g
            },
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new("tagcast_build_info", "The running version of tagcast."),
            &["version"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(&metrics.registry, build);
        register(
            &metrics.registry,
            prometheus::process_collector::ProcessCollector::for_self(),
        );
        // Every series of these exists from the start, so an alert on their increase sees
        // the first one.
        for reason in [Reason::Gone, Reason::Failing] {
            metrics
                .webhooks_disabled
                .with_label_values(&[reason.as_str()]);
        }
        for to in [To::Open, To::HalfOpen, To::Closed] {
            metrics
                .breaker_transitions
                .with_label_values(&[to.as_str()]);
        }
        for why in [Deferred::Breaker, Deferred::MaxInFlight] {
            metrics.deferred.with_label_values(&[why.as_str()]);
        }
        for scope in [Invalidated::Repository, Invalidated::All] {
            metrics
                .cache_invalidations
                .with_label_values(&[scope.as_str()]);
        }
        for hit in [true, false] {
            metrics.cache_lookups.with_label_values(&[lookup(hit)]);
        }
        metrics
    }

    pub fn cache_invalidated(&self, scope: Invalidated) {
        self.cache_invalidations
            .with_label_values(&[scope.as_str()])
            .inc();
    }

    /// A repository's webhooks were found in the cache (`hit`), or had to be loaded.
    pub fn cache_lookup(&self, hit: bool) {
        self.cache_lookups.with_label_values(&[lookup(hit)]).inc();
    }

    pub fn event(&self, result: EventResult) {
        let label = match result {
            EventResult::Accepted => "accepted",
            EventResult::Invalid => "invalid",
            EventResult::Ignored => "ignored",
        };
        self.events_received.with_label_values(&[label]).inc();
    }

    pub fn trigger_evaluated(&self, kind: TriggerKind, fired: bool) {
        let result = if fired { "triggered" } else { "not_triggered" };
        self.trigger_evaluations
            .with_label_values(&[kind.as_str(), result])
            .inc();
    }

    pub fn attempt(&self, label: AttemptLabel, seconds: f64) {
        let outcome = match label {
            AttemptLabel::Status2xx => "2xx",
            AttemptLabel::Status3xx => "3xx",
            AttemptLabel::Status4xx => "4xx",
            AttemptLabel::Status5xx => "5xx",
            AttemptLabel::Timeout => "timeout",
            AttemptLabel::Connect => "connect",
            AttemptLabel::Blocked => "blocked",
        };
        self.attempts.with_label_values(&[outcome]).inc();
        self.attempt_duration.observe(seconds);
    }

    pub fn completed(&self, completed: Completed) {
        let label = match completed {
            Completed::Succeeded => "succeeded",
            Completed::Failed => "failed",
        };
        self.completed.with_label_values(&[label]).inc();
    }

    pub fn dead_lettered(&self, stage: Stage) {
        self.dead_lettered
            .with_label_values(&[stage.as_str()])
            .inc();
    }

    pub fn first_attempt(&self, first: FirstAttempt) {
        let label = match first {
            FirstAttempt::Inline => "inline",
            FirstAttempt::Queued => "queued",
        };
        self.first_attempts.with_label_values(&[label]).inc();
    }

    pub fn webhook_disabled(&self, reason: Reason) {
        self.webhooks_disabled
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn breaker_transition(&self, to: To) {
        self.breaker_transitions
            .with_label_values(&[to.as_str()])
            .inc();
    }

    pub fn deferred(&self, why: Deferred) {
        self.deferred.with_label_values(&[why.as_str()]).inc();
    }

    pub fn redelivered(&self, stage: Stage) {
        self.redelivered.with_label_values(&[stage.as_str()]).inc();
    }

    pub fn set_up(&self, broker: bool, database: bool) {
        self.up.with_label_values(&["rabbitmq"]).set(broker.into());
        self.up
            .with_label_values(&["postgresql"])
            .set(database.into());
    }

    pub fn queue_depth(&self, queue: QueueLabel, messages: u32) {
        let label = match queue {
            QueueLabel::Events => "events",
            QueueLabel::EventsDead => "events_dead",
            QueueLabel::Deliveries => "deliveries",
            QueueLabel::DeliveriesDead => "deliveries_dead",
        };
        self.queue_messages
            .with_label_values(&[label])
            .set(messages.into());
    }

    /// The text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on an invalid metric, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

// Metric names and help texts are constants above: creating or registering them can only fail
// on a programming error, caught by every test that builds a Metrics.
fn register<C: prometheus::core::Collector + 'static>(registry: &Registry, collector: C) {
    registry
        .register(Box::new(collector))
        .unwrap_or_else(|e| panic!("metric registration: {e}"));
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    register(r, c.clone());
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
    register(r, c.clone());
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
    register(r, g.clone());
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    register(r, h.clone());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_required_family_is_exposed() {
        let m = Metrics::new();
        // Labelled families appear once a series exists; touch one of each.
        m.event(EventResult::Accepted);
        m.trigger_evaluated(TriggerKind::Tags, false);
        m.attempt(AttemptLabel::Status2xx, 0.01);
        m.completed(Completed::Succeeded);
        let text = m.render();
        for family in [
            "tagcast_events_received_total{result=\"accepted\"} 1",
            "tagcast_trigger_evaluations_total{result=\"not_triggered\",trigger=\"tags\"} 1",
            "tagcast_delivery_attempts_total{outcome=\"2xx\"} 1",
            "tagcast_deliveries_completed_total{status=\"succeeded\"} 1",
            "tagcast_delivery_attempt_duration_seconds_bucket",
            "tagcast_event_to_delivery_seconds_bucket",
            "tagcast_deliveries_in_flight 0",
            "tagcast_retries_scheduled_total 0",
            "tagcast_build_info{version=",
            "process_resident_memory_bytes",
            "tagcast_webhooks_disabled_total{reason=\"gone\"} 0",
            "tagcast_webhooks_disabled_total{reason=\"failing\"} 0",
            "tagcast_breakers_open 0",
            "tagcast_breaker_transitions_total{to=\"open\"} 0",
            "tagcast_deliveries_deferred_total{reason=\"max_in_flight\"} 0",
        ] {
            assert!(text.contains(family), "missing {family} in\n{text}");
        }
    }
}
