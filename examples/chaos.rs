//! The fault-tolerance proof: publishes N events for W webhooks on a local receiver while
//! killing tagcast with SIGKILL k times and restarting RabbitMQ and PostgreSQL once each, then
//! reports what was lost, what was repeated, and whether the access records agree.
//!
//! Run with `scripts/chaos [--events N] [--webhooks W] [--kills K] [--sigterms S] [--no-rabbitmq] [--no-postgres]`.
//! It restarts the local RabbitMQ and PostgreSQL: do not run it beside the test suite.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let mut plan = support::ChaosPlan {
        events: 20_000,
        webhooks: 3,
        kills: 5,
        sigterms: 1,
        restart_rabbitmq: true,
        restart_postgres: true,
        stall: Duration::from_secs(120),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--events" => plan.events = value(),
            "--webhooks" => plan.webhooks = value(),
            "--kills" => plan.kills = value(),
            "--sigterms" => plan.sigterms = value(),
            "--no-rabbitmq" => plan.restart_rabbitmq = false,
            "--no-postgres" => plan.restart_postgres = false,
            other => panic!("unknown argument {other}"),
        }
    }
    let binary = std::env::var("TAGCAST_BIN").unwrap_or_else(|_| "target/release/tagcast".into());
    let report = support::run_chaos(plan, &binary).await;
    println!("{report}");
    let v = &report.verdict;
    if v.lost > 0
        || v.records_agree != v.expected
        || report.sigterm_exits.iter().any(|c| *c != Some(0))
    {
        std::process::exit(1);
    }
}
