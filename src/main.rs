//! The `tagcast` binary: parse settings, set up logging, then run, migrate, or carry out an
//! operator command; a configuration error exits 78.

use std::future::Future;
use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use tagcast::amqp::Topology;
use tagcast::cli::CliError;
use tagcast::config::{
    Cli, Command, DeadLetters, LogFormat, Misconfigured, Settings, TopologyCommand,
};
use tagcast::operate;
use tracing_subscriber::EnvFilter;

/// jemalloc: less CPU per delivery than glibc's malloc, whose calls were a large share of
/// tagcast's profile (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages go back to the system after a second, not
/// ten, which keeps the peak RSS of a busy worker as low as glibc's (docs/performance.md).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// The exit status of a configuration error (`EX_CONFIG` of sysexits.h), so a supervisor can tell
/// it from a crash and stop restarting.
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.settings.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match (
            e.downcast_ref::<Misconfigured>(),
            e.downcast_ref::<CliError>(),
        ) {
            (Some(misconfigured), _) => {
                tracing::error!(setting = misconfigured.setting, "{misconfigured}");
                ExitCode::from(EXIT_CONFIG)
            }
            // A command for people: its error goes to them plainly, with what the API said.
            (None, Some(refused)) => {
                eprintln!("error: {refused}");
                for (field, message) in refused.fields() {
                    eprintln!("  {field}: {message}");
                }
                ExitCode::from(refused.exit_code())
            }
            (None, None) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => {
            let pool = tagcast::store::connect(&cli.settings.database_url, 2)?;
            tagcast::store::migrate(&pool).await?;
            tracing::info!("migrations applied");
        }
        Command::Publish(sample) => {
            let s = &cli.settings;
            let event_id =
                tagcast::publish::publish(&s.amqp_url, &s.events_exchange, &sample).await?;
            println!(
                "published build.completed {event_id} for {}/{} tag {} to {}",
                sample.namespace, sample.repository, sample.tag, s.events_exchange
            );
        }
        Command::DeadLetters(command) => {
            let s = &cli.settings;
            let topology = topology(s, &s.queue_prefix);
            match command {
                DeadLetters::List { selection, json } => {
                    let letters = operate::list(&s.amqp_url, &topology, &selection).await?;
                    operate::print(&letters, json, &mut std::io::stdout().lock())?;
                }
                DeadLetters::Replay { selection } => {
                    let n = operate::replay(&s.amqp_url, &topology, &selection).await?;
                    println!("replayed {n} message(s) of {}", topology.prefix);
                }
            }
        }
        Command::Topology(TopologyCommand::Delete { prefix, yes }) => {
            let s = &cli.settings;
            let deleted = operate::delete_topology(&s.amqp_url, &topology(s, &prefix), yes).await?;
            if deleted.is_empty() {
                println!("no queues of prefix {prefix}");
            }
            for (queue, messages) in deleted {
                println!("deleted {queue} ({messages} message(s))");
            }
        }
        command @ (Command::Run | Command::ServeApi) => {
            let stop = shutdown_signal();
            tokio::pin!(stop);
            // A signal while starting (PostgreSQL awaited, say) stops it before anything was
            // consumed: nothing to hand back.
            let app = tokio::select! {
                app = tagcast::App::build(cli.settings) => app?,
                () = stop.as_mut() => {
                    tracing::info!("stopped while starting");
                    return Ok(());
                }
            };
            match command {
                Command::ServeApi => app.serve_api_until(stop).await?,
                _ => app.run_until(stop).await?,
            }
        }
        Command::Tokens(command) => {
            let pool = tagcast::store::connect(&cli.settings.database_url, 2)?;
            tagcast::store::migrate(&pool).await?;
            tagcast::cli::tokens(&pool, command).await?;
        }
        Command::Webhooks(command) => {
            tagcast::cli::webhooks(command, cli.settings.api_addr).await?;
        }
        Command::Deliveries(command) => {
            tagcast::cli::deliveries(command, cli.settings.api_addr).await?;
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    // lapin logs each failed connection at ERROR, several lines a try, and tokio_postgres each
    // server notice at INFO: tagcast says what a person needs of both itself, once.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=off,tokio_postgres=warn"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

/// The names a tagcast with these settings declares, under `prefix`.
fn topology(settings: &Settings, prefix: &str) -> Topology {
    Topology {
        prefix: prefix.to_owned(),
        events_exchange: settings.events_exchange.clone(),
        status_exchange: settings.status_exchange.clone(),
        quorum_group_size: settings.quorum_group_size,
    }
}

/// Completes on SIGTERM or SIGINT. Both are listened for from the call on, so that one sent while
/// tagcast is still starting stops it cleanly rather than killing it.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| {
        let listening = signal(kind);
        async move {
            match listening {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, signal = name, "cannot listen for the signal");
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            () = terminate => {}
            () = interrupt => {}
        }
    }
}
