//! CPU and memory readings from /proc: of a process, of this thread, of the whole machine, and of
//! every process of one name (the broker's, the database's).

/// CPU seconds (user + system) and peak RSS (KiB) of a process, from /proc.
pub(crate) fn process_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / ticks
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// CPU seconds (user + system) used so far by the calling thread.
pub(crate) fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ticks: f64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    ticks / 100.0 // USER_HZ on Linux
}

/// Busy and idle CPU seconds of the whole machine so far, from /proc/stat.
pub(crate) fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - idle;
    (busy / 100.0, idle / 100.0)
}

/// CPU seconds used so far by every process whose command name is `name`.
pub(crate) fn cpu_of(name: &str) -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == name {
            total += process_usage(pid.parse().unwrap_or(0)).0;
        }
    }
    total
}

/// Waits until the machine has been at least 80 % idle for a second (at most `limit`), so that
/// a measure does not start while a load's aftermath (a checkpoint, autovacuum) or anything else
/// still runs.
pub(crate) async fn settle(limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        let (busy0, idle0) = machine_cpu();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let (busy1, idle1) = machine_cpu();
        let idle = idle1 - idle0;
        if idle / (idle + busy1 - busy0) >= 0.8 {
            return;
        }
    }
}
