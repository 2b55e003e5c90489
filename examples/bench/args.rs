//! The benchmark's command line.

pub(crate) struct Args {
    pub(crate) events: usize,
    pub(crate) runs: usize,
    pub(crate) rate_seconds: u64,
    pub(crate) binary: String,
    /// Run one measure only: raw, drain1, drain10, latency, floor, down, growth or
    /// repositories.
    pub(crate) only: Option<String>,
    /// For `--only growth`: the table sizes, in records, and the days the records span.
    pub(crate) sizes: Vec<u64>,
    pub(crate) days: u32,
    /// For `--only repositories`: how many, and webhook changes per second meanwhile.
    pub(crate) repositories: usize,
    pub(crate) changes: u32,
    /// Bind a durable queue to the status exchange, as a consumer of status events would.
    pub(crate) status_queue: bool,
}

pub(crate) fn args() -> Args {
    let mut a = Args {
        events: 20_000,
        runs: 3,
        rate_seconds: 10,
        binary: std::env::var("TAGCAST_BIN").unwrap_or_else(|_| "target/release/tagcast".into()),
        only: None,
        status_queue: true,
        sizes: vec![0, 10_000_000, 30_000_000],
        days: 30,
        repositories: 50_000,
        changes: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--only" {
            a.only = it.next();
            continue;
        }
        if arg == "--sizes" {
            a.sizes = it
                .next()
                .map(|v| {
                    v.split(',')
                        .map(|n| n.parse().expect("--sizes: records, comma-separated"))
                        .collect()
                })
                .expect("--sizes needs a list");
            continue;
        }
        if arg == "--no-status-queue" {
            a.status_queue = false;
            continue;
        }
        let mut value = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--events" => a.events = value() as usize,
            "--runs" => a.runs = value() as usize,
            "--rate-seconds" => a.rate_seconds = value(),
            "--days" => a.days = value() as u32,
            "--repositories" => a.repositories = value() as usize,
            "--changes" => a.changes = value() as u32,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}
