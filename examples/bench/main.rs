//! The benchmark: tagcast against the local RabbitMQ and PostgreSQL and a local receiver, beside
//! a raw ceiling measured in the same run on the same parts. Prints medians of `--runs` runs.
//!
//! `scripts/bench [--events N] [--runs R] [--rate-seconds S] [--no-status-queue]`
//!
//! A durable quorum queue is bound to the status exchange, as a consumer of status events would
//! have it (nobody reads it during the run); `--no-status-queue` leaves the exchange unbound, so
//! the broker drops each status event after confirming it.
//!
//! Measures: the receiver's own capacity; the raw ceiling (consume → POST → INSERT → ack, no
//! webhook logic); tagcast draining a backlog with fan-out 1 and 10 (deliveries per second, CPU
//! seconds per 1,000 deliveries, peak RSS); latency from the event's send time to the receiver at
//! 1,000 events per second offered; trigger evaluation per webhook; and the floor, the CPU that
//! each part the contract asks of a delivery costs on its own (see `Floor`), with the rate it allows.
//!
//! Two measures of scale run only when asked for: `--only growth [--sizes 0,10000000,30000000]
//! [--days 30]` drains on tables already holding that many records (see `growth`), and `--only
//! repositories [--repositories 50000] [--changes 10]` a backlog spread over many repositories
//! while webhooks change (see `repositories`). `TAGCAST_BIN` picks the tagcast binary, so that
//! an earlier build can be measured beside this one.

#[path = "../../tests/support/mod.rs"]
mod support;

mod args;
mod cpu;
mod floor;
mod growth;
mod isolation;
mod measures;
mod report;
mod repositories;

use args::args;
use floor::{Floor, floor};
use isolation::{Isolation, isolation};
use measures::{drain, latency, raw_ceiling, receiver_capacity, receiver_down, trigger_micro};
use report::{median, print_drain, print_floor};
use support::CountingReceiver;

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "tagcast benchmark: {} events per drain, medians of {} runs, status events {}",
        a.events,
        a.runs,
        if a.status_queue {
            "stored in a bound quorum queue"
        } else {
            "unrouted (no queue bound)"
        }
    );

    for (name, ns) in trigger_micro() {
        println!("trigger evaluation {name:<48} {ns:>8.1} ns/webhook");
    }

    let receiver = CountingReceiver::start().await;
    match a.only.as_deref() {
        Some("raw") => {
            return println!(
                "raw ceiling {:.0}/s",
                raw_ceiling(&receiver, a.events).await
            );
        }
        Some("drain1") => {
            return print_drain(
                "fan-out 1",
                &drain(&a.binary, a.events, 1, a.status_queue).await,
            );
        }
        Some("drain10") => {
            return print_drain(
                "fan-out 10",
                &drain(&a.binary, a.events / 10, 10, a.status_queue).await,
            );
        }
        Some("floor") => return print_floor(&floor(a.events, a.status_queue).await),
        Some("isolation") => {
            let healthy = isolation(&a.binary, a.events / 10 * 2, false).await;
            let failing = isolation(&a.binary, a.events / 10 * 2, true).await;
            return print_isolation(&healthy, &failing);
        }
        Some("growth") => {
            let grown = growth::growth(&a.binary, a.events, &a.sizes, a.days, a.runs).await;
            return report::print_growth(&grown);
        }
        Some("repositories") => {
            let mut runs = Vec::new();
            for _ in 0..a.runs {
                let run =
                    repositories::repositories(&a.binary, a.events, a.repositories, a.changes)
                        .await;
                println!(
                    "one repository {:.0} deliveries/s, {} repositories {:.0} deliveries/s (peak RSS {:.1} MiB)",
                    run.single.per_second,
                    a.repositories,
                    run.spread.per_second,
                    run.spread.peak_rss_kib as f64 / 1024.0
                );
                runs.push(run);
            }
            return repositories::print(&runs);
        }
        Some("down") => return receiver_down(&a.binary, a.events, a.rate_seconds).await,
        Some("latency") => {
            return println!(
                "p50/p99 {:?} ms",
                latency(&a.binary, 1000, a.rate_seconds, a.status_queue).await
            );
        }
        Some(other) => panic!("unknown measure {other}"),
        None => {}
    }
    let capacity = median(
        futures_util::future::join_all((0..1).map(|_| receiver_capacity(&receiver, 40_000))).await,
    );
    println!("receiver capacity                                   {capacity:>8.0} requests/s");

    let mut raw = Vec::new();
    let (mut d1, mut d10) = (Vec::new(), Vec::new());
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    let mut floors = Vec::new();
    let (mut healthy, mut failing) = (Vec::new(), Vec::new());
    for run in 1..=a.runs {
        healthy.push(isolation(&a.binary, a.events / 10 * 2, false).await);
        failing.push(isolation(&a.binary, a.events / 10 * 2, true).await);
        floors.push(floor(a.events, a.status_queue).await);
        raw.push(raw_ceiling(&receiver, a.events).await);
        d1.push(drain(&a.binary, a.events, 1, a.status_queue).await);
        d10.push(drain(&a.binary, a.events / 10 * 2, 10, a.status_queue).await);
        let (p50, p99) = latency(&a.binary, 1000, a.rate_seconds, a.status_queue).await;
        p50s.push(p50);
        p99s.push(p99);
        println!(
            "run {run}: raw {:.0}/s, fan-out 1 {:.0}/s, fan-out 10 {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
            raw[run - 1],
            d1[run - 1].per_second,
            d10[run - 1].per_second,
            p50,
            p99
        );
    }
    let of = |part: fn(&Floor) -> f64| median(floors.iter().map(part).collect());
    let floor_m = Floor {
        status_event: of(|f| f.status_event),
        event: of(|f| f.event),
        records: of(|f| f.records),
        records_as_tagcast: of(|f| f.records_as_tagcast),
        receiver: of(|f| f.receiver),
        http_client: of(|f| f.http_client),
    };
    println!();
    print_floor(&floor_m);
    let raw_m = median(raw);
    let f1 = median(d1.iter().map(|d| d.per_second).collect());
    let f10 = median(d10.iter().map(|d| d.per_second).collect());
    let cpu1 = median(d1.iter().map(|d| d.cpu_per_1000).collect());
    let cpu10 = median(d10.iter().map(|d| d.cpu_per_1000).collect());
    let rss = d1
        .iter()
        .chain(&d10)
        .map(|d| d.peak_rss_kib)
        .max()
        .unwrap_or(0);
    println!();
    println!("| measure | median |");
    println!("|---|---|");
    println!("| receiver capacity | {capacity:.0} requests/s |");
    println!("| raw ceiling (consume → POST → INSERT → ack) | {raw_m:.0} deliveries/s |");
    println!(
        "| tagcast, fan-out 1 | {f1:.0} deliveries/s ({:.2} of raw, {:.2} of the floor's rate) |",
        f1 / raw_m,
        f1 / floor_m.rate(1)
    );
    println!(
        "| tagcast, fan-out 10 | {f10:.0} deliveries/s ({:.2} of raw, {:.2} of the floor's rate) |",
        f10 / raw_m,
        f10 / floor_m.rate(10)
    );
    println!("| CPU per 1,000 deliveries, fan-out 1 / 10 | {cpu1:.3} s / {cpu10:.3} s |");
    let b1 = median(d1.iter().map(|d| d.broker_per_1000).collect());
    let b10 = median(d10.iter().map(|d| d.broker_per_1000).collect());
    let p1 = median(d1.iter().map(|d| d.database_per_1000).collect());
    let p10 = median(d10.iter().map(|d| d.database_per_1000).collect());
    println!("| RabbitMQ CPU per 1,000 deliveries, fan-out 1 / 10 | {b1:.3} s / {b10:.3} s |");
    println!("| PostgreSQL CPU per 1,000 deliveries, fan-out 1 / 10 | {p1:.3} s / {p10:.3} s |");
    let r1 = median(d1.iter().map(|d| d.receiver_per_1000).collect());
    let r10 = median(d10.iter().map(|d| d.receiver_per_1000).collect());
    println!(
        "| receiver (benchmark process) CPU per 1,000 deliveries, fan-out 1 / 10 | {r1:.3} s / {r10:.3} s |"
    );
    let i1 = median(d1.iter().map(|d| d.idle).collect());
    let i10 = median(d10.iter().map(|d| d.idle).collect());
    println!(
        "| machine CPU idle during the drain, fan-out 1 / 10 | {:.0} % / {:.0} % |",
        i1 * 100.0,
        i10 * 100.0
    );
    println!("| peak RSS of tagcast | {:.1} MiB |", rss as f64 / 1024.0);
    for fanout in [1, 10] {
        println!(
            "| floor, fan-out {fanout}: servers, receiver and HTTP client alone | {:.3} s per 1,000 deliveries, at most {:.0} deliveries/s |",
            floor_m.per_delivery(fanout),
            floor_m.rate(fanout)
        );
    }
    println!(
        "| p50 / p99 at 1,000 events/s offered | {:.1} ms / {:.1} ms |",
        median(p50s),
        median(p99s)
    );
    // The run whose ratio is the median, so that its figures belong together.
    let mut pairs: Vec<(Isolation, Isolation)> = healthy.into_iter().zip(failing).collect();
    pairs.sort_by(|a, b| {
        let ratio = |p: &(Isolation, Isolation)| p.1.nine_per_second / p.0.nine_per_second;
        ratio(a).total_cmp(&ratio(b))
    });
    let (h, f) = &pairs[pairs.len() / 2];
    print_isolation(h, f);
}

fn print_isolation(healthy: &Isolation, failing: &Isolation) {
    println!(
        "| nine webhooks beside a healthy / a failing (503) tenth | {:.0} / {:.0} deliveries/s ({:.2} of healthy) |",
        healthy.nine_per_second,
        failing.nine_per_second,
        failing.nine_per_second / healthy.nine_per_second
    );
    println!(
        "| requests to the failing tenth while its breaker was open | {} in {:.1} s (a probe each time its cooldown ends allows {}); {} in all |",
        failing.while_open,
        failing.open_for.as_secs_f64(),
        failing.probes_allowed(),
        failing.dead_requests
    );
}
