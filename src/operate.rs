//! Operator commands on the broker: look at and replay dead-lettered messages
//! (`tagcast dead-letters`), and delete the queues a prefix declared (`tagcast topology delete`).

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;

use crate::amqp::connection::connect_any;
use crate::amqp::{AmqpError, Topology};
use crate::events;
use crate::nodes::Nodes;

#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("rabbitmq refused to take the replayed message back (publisher nack)")]
    Nacked,
    #[error("{0} has a consumer (a running tagcast?): stop it first")]
    InUse(String),
    #[error("not deleted: {0}")]
    NotConfirmed(&'static str),
    #[error("cannot write the listing: {0}")]
    Output(#[from] std::io::Error),
}

impl From<lapin::Error> for OperateError {
    fn from(e: lapin::Error) -> OperateError {
        OperateError::Broker(AmqpError::Lapin(e))
    }
}

/// Which dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeadQueue {
    /// `<prefix>.events.dead`: events that could not be processed.
    Events,
    /// `<prefix>.deliveries.dead`: delivery jobs that could not be processed.
    Deliveries,
}

impl DeadQueue {
    /// The dead-letter queue and the queue its messages came from.
    fn names(self, topology: &Topology) -> (String, String) {
        match self {
            DeadQueue::Events => (topology.events_dead_queue(), topology.events_queue()),
            DeadQueue::Deliveries => (
                topology.deliveries_dead_queue(),
                topology.deliveries_queue(),
            ),
        }
    }
}

/// What `dead-letters list` and `replay` act on.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// The dead-letter queue to read.
    #[arg(long, value_enum, default_value = "events")]
    pub queue: DeadQueue,
    /// Only the message(s) of this event_id.
    #[arg(long)]
    pub event_id: Option<String>,
    /// At most this many messages.
    #[arg(long, default_value = "100")]
    pub limit: usize,
}

/// One dead-lettered message, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub event_id: Option<String>,
    /// Why the broker dead-lettered it: `rejected` (tagcast refused it) or `delivery_limit`
    /// (handed out ten times without being settled).
    pub reason: Option<String>,
    pub bytes: usize,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
}

async fn open(amqp: &Nodes, name: &str) -> Result<(Connection, Channel), OperateError> {
    let (connection, _) = connect_any(amqp, 0..amqp.urls().len(), name).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// Takes up to `limit` messages of the selection off the queue, unacknowledged: they return to
/// it when the channel closes, unless acknowledged first.
async fn take(
    channel: &Channel,
    queue: &str,
    selection: &Selection,
) -> Result<Vec<(DeadLetter, lapin::message::BasicGetMessage)>, OperateError> {
    let mut taken = Vec::new();
    while taken.len() < selection.limit {
        let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let letter = DeadLetter {
            event_id: events::event_id_of(&message.delivery.data),
            reason: first_death_reason(&message.delivery.properties),
            bytes: message.delivery.data.len(),
            body: String::from_utf8_lossy(&message.delivery.data).into_owned(),
        };
        let wanted = selection
            .event_id
            .as_ref()
            .is_none_or(|id| letter.event_id.as_ref() == Some(id));
        // One not wanted stays unacknowledged, so it goes back to the queue at the end.
        if wanted {
            taken.push((letter, message));
        }
    }
    Ok(taken)
}

fn first_death_reason(properties: &BasicProperties) -> Option<String> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get("x-first-death-reason")?
    {
        AMQPValue::LongString(reason) => Some(reason.to_string()),
        _ => None,
    }
}

/// Lists dead-lettered messages, leaving them where they are.
pub async fn list(
    amqp: &Nodes,
    topology: &Topology,
    selection: &Selection,
) -> Result<Vec<DeadLetter>, OperateError> {
    let (connection, channel) = open(amqp, "tagcast dead-letters list").await?;
    let (dead, _) = selection.queue.names(topology);
    let taken = take(&channel, &dead, selection).await?;
    // Closing returns every message taken to the queue.
    let _ = connection.close(200, "listed".into()).await;
    Ok(taken.into_iter().map(|(letter, _)| letter).collect())
}

/// Puts dead-lettered messages back on the queue they came from, each acknowledged off the
/// dead-letter queue only once the broker has confirmed it back. Returns how many.
pub async fn replay(
    amqp: &Nodes,
    topology: &Topology,
    selection: &Selection,
) -> Result<usize, OperateError> {
    let (connection, channel) = open(amqp, "tagcast dead-letters replay").await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (dead, origin) = selection.queue.names(topology);
    let taken = take(&channel, &dead, selection).await?;
    let mut replayed = 0;
    for (_, message) in taken {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = channel
            .basic_publish(
                "".into(),
                origin.as_str().into(),
                BasicPublishOptions::default(),
                &message.delivery.data,
                properties,
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            return Err(OperateError::Nacked);
        }
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await?;
        replayed += 1;
    }
    let _ = connection.close(200, "replayed".into()).await;
    Ok(replayed)
}

/// Writes the listing: a table, or JSON lines.
pub fn print(
    letters: &[DeadLetter],
    json: bool,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    if json {
        for letter in letters {
            serde_json::to_writer(&mut *out, letter)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<38} {:<15} {:>6}  BODY",
        "EVENT_ID", "REASON", "BYTES"
    )?;
    for letter in letters {
        // Untrusted text bound for a terminal: no control characters.
        let body: String = letter
            .body
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(60)
            .collect();
        writeln!(
            out,
            "{:<38} {:<15} {:>6}  {body}",
            letter.event_id.as_deref().unwrap_or("-"),
            letter.reason.as_deref().unwrap_or("-"),
            letter.bytes,
        )?;
    }
    writeln!(out, "{} message(s)", letters.len())
}

/// How many messages and consumers a queue has (`None`: it does not exist).
async fn depth(connection: &Connection, queue: &str) -> Result<Option<(u32, u32)>, OperateError> {
    // A passive declare on a missing queue closes its channel: one channel per question.
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
    {
        Ok(q) => {
            let _ = channel.close(200, "asked".into()).await;
            Ok(Some((q.message_count(), q.consumer_count())))
        }
        Err(_) => Ok(None),
    }
}

/// Deletes every queue `topology` declares, after asking (unless `yes`). The exchanges are
/// left: the registry and status consumers share them.
pub async fn delete_topology(
    amqp: &Nodes,
    topology: &Topology,
    yes: bool,
) -> Result<Vec<(String, u32)>, OperateError> {
    let (connection, channel) = open(amqp, "tagcast topology delete").await?;
    let mut present = Vec::new();
    for queue in topology.queues() {
        match depth(&connection, &queue).await? {
            // A running tagcast consumes its queues: deleting them under it would lose
            // what it is handling, and it would declare them again at once.
            Some((_, consumers)) if consumers > 0 => {
                let _ = connection.close(200, "in use".into()).await;
                return Err(OperateError::InUse(queue));
            }
            Some((messages, _)) => present.push((queue, messages)),
            None => {}
        }
    }
    if present.is_empty() {
        let _ = connection.close(200, "nothing to delete".into()).await;
        return Ok(present);
    }
    if !yes {
        confirm(&topology.prefix, &present)?;
    }
    for (queue, _) in &present {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "deleted".into()).await;
    Ok(present)
}

/// Asks on the terminal; without one, refuses (a script passes `--yes`).
fn confirm(prefix: &str, present: &[(String, u32)]) -> Result<(), OperateError> {
    if !std::io::stdin().is_terminal() {
        return Err(OperateError::NotConfirmed(
            "not a terminal to ask on: pass --yes to delete without asking",
        ));
    }
    let mut err = std::io::stderr();
    let messages: u64 = present.iter().map(|(_, n)| u64::from(*n)).sum();
    writeln!(
        err,
        "These queues of prefix {prefix} will be deleted, with {messages} message(s):"
    )?;
    for (queue, n) in present {
        writeln!(err, "  {queue} ({n})")?;
    }
    write!(err, "Delete them? [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(OperateError::NotConfirmed("you did not confirm"))
    }
}
