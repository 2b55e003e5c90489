//! tagcast: the webhook delivery worker of a container registry.
//!
//! # Layout
//!
//! Dependencies point one way, each layer importing only those above it:
//!
//! - **Leaves**, pure or nearly: [`model`] (a delivery's status and record, its id),
//!   [`redact`], [`nodes`] (the broker's node URLs and the failover order), [`backoff`],
//!   [`events`], [`trigger`], [`payload`], [`status`], [`retry`], [`guard`],
//!   [`breaker`] and [`disabling`] (endpoint health's rules), [`gate`] (what each webhook is let
//!   through: breaker, cap, inline attempts), [`metrics`], [`health`], [`sampled`] (rate-limited log lines), and [`config`] (the settings, read by `app` alone).
//! - **I/O**: [`store`] (all SQL), [`amqp`] (topology, publisher, connection, acknowledgements,
//!   queue depths), [`client`] (the webhook HTTP client), [`http`] (metrics and health).
//! - **[`consumer`]**: the consume loop, generic over its stage, and the one place where an
//!   outcome becomes ack, reject or requeue.
//! - **[`stages`]**: the event stage and the job stage; [`sweeper`] and [`probe`] beside them.
//! - **[`api`]**: the admin API over [`store`]; [`console`], the web pages, calls it in process.
//! - **[`app`]**: wiring only; [`publish`] (`tagcast publish`) and [`operate`]
//!   (`tagcast dead-letters`, `tagcast topology`), commands for people, beside it.
//!
//! # Flow
//!
//! A `build.completed` event arrives on `<prefix>.events`; the [`consumer`] hands it to
//! [`stages::event`]: [`events`] validates it, [`store`] yields the repository's webhooks from a
//! live cache, [`trigger`] decides each rule, [`payload`] renders the body, and every decision
//! is recorded, group-committed with other events' in one statement. A webhook that fires and
//! that the [`gate`] finds healthy gets its first attempt right there, claimed with the insert
//! ([`stages::attempt`]); the others become jobs on `<prefix>.deliveries`; every other decision
//! gets its status event ([`status`]).
//!
//! A job goes to [`stages::job`]: it claims the attempt in the database, then makes it the same
//! way: POST ([`client`], behind the address [`guard`]), record the attempt (group-committed
//! too), publish the status event and, when the attempt is to be retried, park the next job in
//! a delay queue, from which it expires back into `<prefix>.deliveries` when due. No wait is ever
//! held in tagcast.
//!
//! A stage answers with its outcome, `Result<Done, StageError>`, and the span that names the
//! message ([`consumer::Handled`]); the consumer waits for the broker's confirms of everything
//! the stage published, then acknowledges, coalescing runs of finished messages into one
//! `basic.ack` ([`amqp::acks`]), or rejects or requeues, logging a failure once, in that span.
//!
//! Under it all, [`sweeper`] re-queues any unfinished delivery whose job went missing: the
//! database, not the broker, is the record of what is left to do.

pub mod amqp;
pub mod api;
pub mod app;
pub mod backoff;
pub mod breaker;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod consumer;
pub mod disabling;
pub mod events;
pub mod gate;
pub mod guard;
pub mod health;
pub mod http;
pub mod metrics;
pub mod model;
pub mod nodes;
pub mod operate;
pub mod payload;
pub mod probe;
pub mod publish;
pub mod redact;
pub mod retry;
pub mod sampled;
pub mod stages;
pub mod status;
pub mod store;
pub mod sweeper;
pub mod trigger;

pub use app::App;
pub use config::Settings;
