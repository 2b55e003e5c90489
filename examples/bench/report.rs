//! Medians, percentiles and the printed lines.

use crate::floor::Floor;
use crate::growth::Grown;
use crate::measures::Drain;

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn percentile(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize] as f64
}

pub(crate) fn print_floor(f: &Floor) {
    println!(
        "floor, CPU s per 1,000: status event {:.3} and event consumed {:.3} (RabbitMQ), records {:.3} (PostgreSQL; {:.3} as tagcast writes them), POST {:.3} (receiver) + {:.3} (reqwest)",
        f.status_event, f.event, f.records, f.records_as_tagcast, f.receiver, f.http_client
    );
    for fanout in [1, 10] {
        println!(
            "floor, fan-out {fanout}: {:.3} s per 1,000 deliveries; every core busy allows at most {:.0} deliveries/s",
            f.per_delivery(fanout),
            f.rate(fanout)
        );
    }
}

pub(crate) fn print_drain(name: &str, d: &Drain) {
    println!(
        "{name}: {:.0} deliveries/s; CPU s per 1,000 deliveries: tagcast {:.3}, RabbitMQ {:.3}, PostgreSQL {:.3}, receiver {:.3}; machine idle {:.0}%; peak RSS {:.1} MiB",
        d.per_second,
        d.cpu_per_1000,
        d.broker_per_1000,
        d.database_per_1000,
        d.receiver_per_1000,
        d.idle * 100.0,
        d.peak_rss_kib as f64 / 1024.0
    );
}

/// Medians per table size, and each as a share of the empty table's.
pub(crate) fn print_growth(grown: &[Grown]) {
    let of = |g: &Grown, part: fn(&Drain) -> f64| median(g.drains.iter().map(part).collect());
    let base = grown
        .first()
        .map(|g| (of(g, |d| d.per_second), of(g, |d| d.database_per_1000)));
    println!(
        "| records already present | deliveries/s | PostgreSQL CPU s per 1,000 | tagcast CPU s per 1,000 |"
    );
    println!("|---|---|---|---|");
    for g in grown {
        let (rate, database) = (of(g, |d| d.per_second), of(g, |d| d.database_per_1000));
        let (rate0, database0) = base.unwrap_or((rate, database));
        println!(
            "| {} | {rate:.0} ({:.2}) | {database:.3} ({:.2}) | {:.3} |",
            g.records,
            rate / rate0,
            database / database0,
            of(g, |d| d.cpu_per_1000)
        );
    }
}
