//! The reduced chaos run: a few thousand deliveries while tagcast is killed with SIGKILL once and stopped with SIGTERM once;
//! nothing may be lost and the access records must agree with what the receiver saw. (The full
//! run, with broker and database restarts, is `scripts/chaos`: it restarts shared services, so
//! it cannot run beside the other tests.)

mod support;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_and_a_sigterm_under_load_lose_nothing() {
    let plan = support::ChaosPlan {
        events: 1_500,
        webhooks: 2,
        kills: 1,
        sigterms: 1,
        restart_rabbitmq: false,
        restart_postgres: false,
        stall: Duration::from_secs(60),
    };
    let report = support::run_chaos(plan, env!("CARGO_BIN_EXE_tagcast")).await;
    eprintln!("{report}");
    let v = &report.verdict;
    assert_eq!(report.kills_done, 1);
    assert_eq!(report.published, 1_500);
    assert_eq!(v.lost, 0, "{report}");
    assert_eq!(
        v.records, v.expected,
        "one record per (event, webhook): {report}"
    );
    assert_eq!(v.records_agree, v.expected, "{report}");
    assert_eq!(
        report.sigterm_exits,
        [Some(0), Some(0)],
        "SIGTERM under load and at the end exit 0"
    );
}
