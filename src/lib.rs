//! tagcast: the webhook delivery worker of a container registry.
//!
//! # Flow
//!
//! A `build.completed` event arrives on `<prefix>.events` ([`app`] consumes it) and goes to
//! [`pipeline::handle_event`]: [`events`] validates it, [`store`] yields the repository's
//! webhooks from a live cache, [`trigger`] decides each rule, [`payload`] renders the body, and
//! every decision is recorded in one statement. Each webhook that fires becomes a job on
//! `<prefix>.deliveries` ([`amqp`]); the others get their status event ([`status`]). The event is
//! acknowledged once the records are committed and the broker has confirmed every message.
//!
//! A job goes to [`delivery::handle_job`]: it claims the attempt in the database, POSTs
//! ([`delivery`]'s client, behind the address guard), records the attempt, publishes the status
//! event and, when the attempt is to be retried, parks the next job in a delay queue, from which
//! it expires back into `<prefix>.deliveries` when due. No wait is ever held in tagcast.
//!
//! Under it all, [`sweeper`] re-queues any unfinished delivery whose job went missing: the
//! database, not the broker, is the record of what is left to do.
//!
//! [`metrics`] and [`http`] expose what happens; [`config`] reads the settings.

pub mod acks;
pub mod amqp;
pub mod app;
pub mod config;
pub mod delivery;
pub mod events;
pub mod http;
pub mod metrics;
pub mod payload;
pub mod pipeline;
pub mod status;
pub mod store;
pub mod sweeper;
pub mod trigger;

pub use app::App;
pub use config::Settings;
