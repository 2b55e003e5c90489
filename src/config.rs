//! Typed settings (contract section 9): every environment variable is also a command-line flag.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::guard::Cidr;
use crate::nodes::Nodes;
use crate::redact::SecretUrl;

#[derive(Debug, Parser)]
#[command(
    name = "tagcast",
    version,
    about = "Webhook delivery worker for container registry build events"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then consume events and deliver webhooks until SIGTERM.
    Run,
    /// Apply pending migrations to TAGCAST_DATABASE_URL and exit.
    Migrate,
    /// Serve the admin API on TAGCAST_API_ADDR alone, without consuming (scaled on its own).
    ServeApi,
    /// Manage API tokens, in PostgreSQL directly (the first token has to come from somewhere).
    #[command(subcommand)]
    Tokens(crate::cli::TokensCommand),
    /// Manage webhooks through the admin API.
    #[command(subcommand)]
    Webhooks(crate::cli::WebhooksCommand),
    /// Read access records and attempt deliveries again, through the admin API.
    #[command(subcommand)]
    Deliveries(crate::cli::DeliveriesCommand),
    /// Publish one build.completed event to TAGCAST_EVENTS_EXCHANGE, as a registry would.
    Publish(crate::publish::Sample),
    /// Look at, or replay, the messages tagcast could not process.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// Manage the queues tagcast declares.
    #[command(subcommand)]
    Topology(TopologyCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeadLetters {
    /// List dead-lettered messages (they stay where they are): event_id, why, size and body.
    List {
        #[command(flatten)]
        selection: crate::operate::Selection,
        /// One JSON object per message instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead-lettered messages back on the queue they came from, for tagcast to process
    /// again (once what made them fail is fixed).
    Replay {
        #[command(flatten)]
        selection: crate::operate::Selection,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum TopologyCommand {
    /// Delete every queue of a prefix, messages included (the exchanges stay: others share
    /// them). Asks first, unless --yes; refuses while a tagcast consumes them.
    Delete {
        /// The prefix whose queues go (TAGCAST_QUEUE_PREFIX of the tagcast that declared them).
        #[arg(long)]
        prefix: String,
        /// Delete without asking.
        #[arg(long)]
        yes: bool,
    },
}

/// Every setting. The value names are the environment variables, so a parse error names the
/// variable to fix.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// RabbitMQ to consume events from and publish status events to (amqp:// or amqps://): one
    /// URL, or the comma-separated URLs of one cluster's nodes.
    #[arg(
        long,
        global = true,
        env = "TAGCAST_AMQP_URL",
        value_name = "TAGCAST_AMQP_URL",
        // Its value may hold a password: help never shows it.
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: Nodes,

    /// PostgreSQL holding webhooks and access records.
    #[arg(
        long,
        global = true,
        env = "TAGCAST_DATABASE_URL",
        value_name = "TAGCAST_DATABASE_URL",
        // Its value may hold a password: help never shows it.
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: SecretUrl,

    /// Address of the admin API (and of the console).
    #[arg(
        long,
        global = true,
        env = "TAGCAST_API_ADDR",
        value_name = "TAGCAST_API_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub api_addr: SocketAddr,

    /// How long a rotated-out webhook secret keeps signing beside the new one.
    #[arg(long, global = true, env = "TAGCAST_SECRET_ROTATION_GRACE", value_name = "TAGCAST_SECRET_ROTATION_GRACE",
          default_value = "24h", value_parser = duration)]
    pub secret_rotation_grace: Duration,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        global = true,
        env = "TAGCAST_METRICS_ADDR",
        value_name = "TAGCAST_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: SocketAddr,

    /// Topic exchange the registry publishes build events to.
    #[arg(
        long,
        global = true,
        env = "TAGCAST_EVENTS_EXCHANGE",
        value_name = "TAGCAST_EVENTS_EXCHANGE",
        default_value = "registry.events"
    )]
    pub events_exchange: String,

    /// Topic exchange delivery status events are published to.
    #[arg(
        long,
        global = true,
        env = "TAGCAST_STATUS_EXCHANGE",
        value_name = "TAGCAST_STATUS_EXCHANGE",
        default_value = "tagcast.status"
    )]
    pub status_exchange: String,

    /// Prefix of every queue tagcast declares (<prefix>.events, <prefix>.deliveries, ...).
    #[arg(
        long,
        global = true,
        env = "TAGCAST_QUEUE_PREFIX",
        value_name = "TAGCAST_QUEUE_PREFIX",
        default_value = "tagcast"
    )]
    pub queue_prefix: String,

    /// Wait before the second attempt; each later wait doubles.
    #[arg(long, global = true, env = "TAGCAST_RETRY_INITIAL_DELAY", value_name = "TAGCAST_RETRY_INITIAL_DELAY",
          default_value = "1s", value_parser = duration)]
    pub retry_initial_delay: Duration,

    /// Longest wait between two attempts.
    #[arg(long, global = true, env = "TAGCAST_RETRY_MAX_DELAY", value_name = "TAGCAST_RETRY_MAX_DELAY",
          default_value = "1h", value_parser = duration)]
    pub retry_max_delay: Duration,

    /// Attempts per delivery in all, the first included (1 to 1000).
    #[arg(long, global = true, env = "TAGCAST_RETRY_MAX_ATTEMPTS", value_name = "TAGCAST_RETRY_MAX_ATTEMPTS",
          default_value = "8", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub retry_max_attempts: u32,

    /// Longest wait for a webhook endpoint to accept the connection.
    #[arg(long, global = true, env = "TAGCAST_HTTP_CONNECT_TIMEOUT", value_name = "TAGCAST_HTTP_CONNECT_TIMEOUT",
          default_value = "5s", value_parser = duration)]
    pub http_connect_timeout: Duration,

    /// Longest wait for a whole attempt, connection to response.
    #[arg(long, global = true, env = "TAGCAST_HTTP_TIMEOUT", value_name = "TAGCAST_HTTP_TIMEOUT",
          default_value = "10s", value_parser = duration)]
    pub http_timeout: Duration,

    /// Let deliveries reach loopback, private and link-local addresses (development and tests).
    #[arg(long, global = true, env = "TAGCAST_ALLOW_PRIVATE_TARGETS", value_name = "TAGCAST_ALLOW_PRIVATE_TARGETS",
          default_value = "false", action = clap::ArgAction::Set)]
    pub allow_private_targets: bool,

    /// Comma-separated CIDRs that deliveries may reach although they are not public.
    #[arg(
        long,
        global = true,
        env = "TAGCAST_ALLOW_TARGETS",
        value_name = "TAGCAST_ALLOW_TARGETS",
        value_delimiter = ','
    )]
    pub allow_targets: Vec<Cidr>,

    /// On SIGTERM, how long in-flight work may take to finish.
    #[arg(long, global = true, env = "TAGCAST_SHUTDOWN_GRACE", value_name = "TAGCAST_SHUTDOWN_GRACE",
          default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// A webhook whose deliveries have all failed for this long, since its first failure after
    /// its last success, is disabled (with at least TAGCAST_DISABLE_MIN_FAILED of them).
    #[arg(long, global = true, env = "TAGCAST_DISABLE_AFTER", value_name = "TAGCAST_DISABLE_AFTER",
          default_value = "5d", value_parser = duration)]
    pub disable_after: Duration,

    /// Access records and their attempts are kept this long after their event, then removed a
    /// day's partition at a time (so up to a day later).
    #[arg(long, global = true, env = "TAGCAST_RECORD_RETENTION", value_name = "TAGCAST_RECORD_RETENTION",
          default_value = "30d", value_parser = retention)]
    pub record_retention: Duration,

    /// Webhooks kept in the configuration cache at most, each cached repository counting one
    /// more; beyond it the least used repositories are dropped.
    #[arg(long, global = true, env = "TAGCAST_WEBHOOK_CACHE_SIZE", value_name = "TAGCAST_WEBHOOK_CACHE_SIZE",
          default_value = "200000", value_parser = clap::value_parser!(u64).range(2..))]
    pub webhook_cache_size: u64,

    /// Failed deliveries in that time, at least, for a failing webhook to be disabled.
    #[arg(long, global = true, env = "TAGCAST_DISABLE_MIN_FAILED", value_name = "TAGCAST_DISABLE_MIN_FAILED",
          default_value = "20", value_parser = clap::value_parser!(u32).range(1..))]
    pub disable_min_failed: u32,

    /// Failed attempts in a row (connection errors, timeouts, 5xx, 429) that open a webhook's
    /// circuit breaker on this replica.
    #[arg(long, global = true, env = "TAGCAST_BREAKER_FAILURES", value_name = "TAGCAST_BREAKER_FAILURES",
          default_value = "5", value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failures: u32,

    /// How long an open breaker holds attempts back before one probes; doubles while the
    /// probes fail, up to 10m.
    #[arg(long, global = true, env = "TAGCAST_BREAKER_COOLDOWN", value_name = "TAGCAST_BREAKER_COOLDOWN",
          default_value = "30s", value_parser = duration)]
    pub breaker_cooldown: Duration,

    /// Replicas of each queue tagcast declares (x-quorum-initial-group-size); unset, RabbitMQ
    /// places one on every node of the cluster. Changing it for queues that exist is refused by
    /// RabbitMQ: delete them first, with tagcast topology delete.
    #[arg(long, global = true, env = "TAGCAST_QUORUM_GROUP_SIZE", value_name = "TAGCAST_QUORUM_GROUP_SIZE",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub quorum_group_size: Option<u32>,

    /// Attempts in flight to one webhook on this replica, for a webhook whose max_in_flight
    /// column is null.
    #[arg(long, global = true, env = "TAGCAST_WEBHOOK_MAX_IN_FLIGHT", value_name = "TAGCAST_WEBHOOK_MAX_IN_FLIGHT",
          default_value = "64", value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_max_in_flight: u32,

    /// Events handled at once (the events queue's prefetch is a quarter more).
    #[arg(long, global = true, env = "TAGCAST_EVENT_CONCURRENCY", value_name = "TAGCAST_EVENT_CONCURRENCY",
          default_value = "512", value_parser = clap::value_parser!(u16).range(1..))]
    pub event_concurrency: u16,

    /// Delivery jobs, so webhook requests, handled at once (the queue's prefetch is a quarter more).
    #[arg(long, global = true, env = "TAGCAST_DELIVERY_CONCURRENCY", value_name = "TAGCAST_DELIVERY_CONCURRENCY",
          default_value = "512", value_parser = clap::value_parser!(u16).range(1..))]
    pub delivery_concurrency: u16,

    /// Log lines as text or JSON; auto is text on a terminal, JSON otherwise.
    #[arg(
        long,
        global = true,
        env = "TAGCAST_LOG_FORMAT",
        value_name = "TAGCAST_LOG_FORMAT",
        default_value = "auto"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Text, one line per event.
    Pretty,
    /// One JSON object per line, for a log collector.
    Json,
}

impl Settings {
    /// The settings with every default, as `tagcast run` sees them with an empty environment.
    pub fn defaults() -> Settings {
        // Parsing no arguments uses the declared defaults, which are valid by construction.
        Cli::try_parse_from(["tagcast", "run"])
            .map(|cli| cli.settings)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A setting that cannot work, found out at start: tagcast exits, naming it, rather than retry
/// forever what waiting does not cure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct Misconfigured {
    pub setting: &'static str,
    pub problem: String,
}

/// How long a start-up refusal (a missing database, a wrong password) is retried before it is
/// taken for a configuration error: long enough for services that start together to settle.
pub const STARTUP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A duration setting; the error says what one looks like, not only where parsing stopped.
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("{e}: write a duration as a number and a unit, like 500ms, 5s, 1m or 1h")
    })
}

/// The retention of access records: a duration from an hour to a hundred years.
fn retention(text: &str) -> Result<Duration, String> {
    const YEARS_100: Duration = Duration::from_secs(100 * 365 * 86_400);
    match duration(text)? {
        d if d < Duration::from_secs(3600) => Err("keep records an hour at least".to_owned()),
        d if d > YEARS_100 => Err("keep records a hundred years at most".to_owned()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::defaults();
        assert_eq!(
            s.amqp_url.get(0).expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            s.database_url.expose(),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(s.metrics_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(
            (
                s.events_exchange.as_str(),
                s.status_exchange.as_str(),
                s.queue_prefix.as_str()
            ),
            ("registry.events", "tagcast.status", "tagcast")
        );
        assert_eq!(
            (
                s.retry_initial_delay,
                s.retry_max_delay,
                s.retry_max_attempts
            ),
            (Duration::from_secs(1), Duration::from_secs(3600), 8)
        );
        assert_eq!(
            (s.http_connect_timeout, s.http_timeout),
            (Duration::from_secs(5), Duration::from_secs(10))
        );
        assert!(!s.allow_private_targets);
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.record_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(s.webhook_cache_size, 200_000);
        assert_eq!(
            (s.disable_after, s.disable_min_failed),
            (Duration::from_secs(5 * 86_400), 20)
        );
        assert_eq!(
            (
                s.breaker_failures,
                s.breaker_cooldown,
                s.webhook_max_in_flight
            ),
            (5, Duration::from_secs(30), 64)
        );
    }

    #[test]
    fn every_flag_of_every_command_says_what_it_is_for() {
        use clap::CommandFactory as _;
        let cli = Cli::command();
        let mut commands: Vec<&clap::Command> = vec![&cli];
        let mut seen = 0;
        while let Some(command) = commands.pop() {
            assert!(
                command.get_about().is_some() || command.get_name() == "tagcast",
                "{} has no description",
                command.get_name()
            );
            for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
                seen += 1;
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                assert!(
                    !help.is_empty(),
                    "--{} of {} has no help",
                    arg.get_id(),
                    command.get_name()
                );
                assert!(
                    !help.contains('`') && !help.contains("::"),
                    "--{} refers to code: {help}",
                    arg.get_id()
                );
                if arg.is_global_set() {
                    let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                    assert_eq!(
                        env.as_deref(),
                        arg.get_value_names()
                            .and_then(|v| v.first())
                            .map(|v| v.as_str()),
                        "--{} is set by the variable it is named after",
                        arg.get_id()
                    );
                }
            }
            commands.extend(command.get_subcommands());
        }
        assert!(seen > 20, "{seen} flags");
    }

    #[test]
    fn help_never_shows_a_url_from_the_environment() {
        use clap::CommandFactory as _;
        let cli = Cli::command();
        for id in ["amqp_url", "database_url"] {
            let arg = cli.get_arguments().find(|a| a.get_id() == id).unwrap();
            assert!(arg.is_hide_env_values_set(), "{id}");
        }
    }

    #[test]
    fn a_bad_setting_names_its_variable() {
        let err =
            Cli::try_parse_from(["tagcast", "run", "--retry-max-delay", "forever"]).unwrap_err();
        assert!(err.to_string().contains("TAGCAST_RETRY_MAX_DELAY"), "{err}");
        let err = Cli::try_parse_from(["tagcast", "run", "--retry-max-attempts", "0"]).unwrap_err();
        assert!(
            err.to_string().contains("TAGCAST_RETRY_MAX_ATTEMPTS"),
            "{err}"
        );
    }

    #[test]
    fn a_retention_is_an_hour_to_a_hundred_years() {
        let cases = [
            ("7d", Ok(7 * 86_400)),
            ("1h", Ok(3600)),
            ("59m", Err("an hour at least")),
            ("101years", Err("a hundred years at most")),
            ("a month", Err("like 500ms")),
        ];
        for (text, expected) in cases {
            let parsed = Cli::try_parse_from(["tagcast", "run", "--record-retention", text]);
            match (parsed, expected) {
                (Ok(cli), Ok(secs)) => {
                    assert_eq!(
                        cli.settings.record_retention,
                        Duration::from_secs(secs),
                        "{text}"
                    )
                }
                (Err(e), Err(says)) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("TAGCAST_RECORD_RETENTION") && e.contains(says),
                        "{text}: {e}"
                    );
                }
                (parsed, expected) => panic!("{text}: {:?}, expected {expected:?}", parsed.is_ok()),
            }
        }
    }

    #[test]
    fn a_bad_duration_says_what_a_duration_looks_like() {
        let err = Cli::try_parse_from(["tagcast", "run", "--http-timeout", "soon"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("TAGCAST_HTTP_TIMEOUT") && text.contains("like 500ms, 5s"),
            "{text}"
        );
    }

    #[test]
    fn durations_are_written_like_500ms_5s_1h() {
        let cli = Cli::try_parse_from([
            "tagcast",
            "run",
            "--http-timeout",
            "500ms",
            "--retry-max-delay",
            "2h",
        ])
        .unwrap();
        assert_eq!(cli.settings.http_timeout, Duration::from_millis(500));
        assert_eq!(cli.settings.retry_max_delay, Duration::from_secs(7200));
    }
}
