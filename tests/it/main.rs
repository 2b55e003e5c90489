//! The integration tests, one binary with a module per area, against the real RabbitMQ and
//! PostgreSQL: each test makes its own database, queue prefix and exchanges, and removes them
//! when it ends, passed or failed. (`chaos`, `console` and `secrets_in_logs` are binaries of their
//! own: one runs tagcast as child processes under load, one drives headless browsers, which
//! should not share the two cores with these tests, and one installs the process's log
//! subscriber.)

#[path = "../support/mod.rs"]
mod support;

mod api;
mod cli;
mod endpoints;
mod faults;
mod observability;
mod operator;
mod pipeline;
mod records;
mod retries;
mod security;
