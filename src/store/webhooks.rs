//! Webhook rows and the cache that spares each event a query: bounded, told of each change
//! with its repository (LISTEN/NOTIFY), which alone it drops, and bypassed whenever the
//! listener is not connected, so it is never stale.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::{Batcher, Pool, StoreError};
use crate::backoff::Waits;
use crate::disabling::Reason;
use crate::metrics::{Invalidated, Metrics};
use crate::payload::{self, SignatureError};
use crate::redact::redact_url;
use crate::trigger::{Trigger, TriggerError};

/// Channel the `webhooks_changed` trigger notifies (see `sql/`).
const CHANNEL: &str = "tagcast_webhooks";

/// An enabled webhook, with its rule compiled once when the row is loaded.
pub struct Webhook {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub secrets: Secrets,
    pub rule: Rule,
    /// Its own cap on attempts in flight per replica, if it has one.
    pub max_in_flight: Option<u32>,
}

/// What the job stage needs to know of a webhook before it claims an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub enabled: bool,
    pub max_in_flight: Option<u32>,
}

/// A webhook's signing secrets: its own, and the one a rotation replaced with when that stops
/// signing beside it (contract section 12). Every path that signs reads them with
/// [`Secrets::from_row`] and signs with [`Secrets::signing`].
#[derive(Clone, Default)]
pub struct Secrets {
    pub current: Option<String>,
    pub previous: Option<(String, DateTime<Utc>)>,
}

/// The columns [`Secrets::from_row`] reads, on `webhooks w`.
pub const SECRET_COLUMNS: &str = "w.secret, w.previous_secret, w.previous_secret_expires_at";

impl Secrets {
    pub fn from_row(row: &tokio_postgres::Row) -> Result<Secrets, tokio_postgres::Error> {
        let previous = match (
            row.try_get::<_, Option<String>>("previous_secret")?,
            row.try_get::<_, Option<DateTime<Utc>>>("previous_secret_expires_at")?,
        ) {
            (Some(secret), Some(until)) => Some((secret, until)),
            _ => None,
        };
        Ok(Secrets {
            current: row.try_get("secret")?,
            previous,
        })
    }

    /// The secrets that sign a request made at `now`, space-separated (see [`payload::sign`]):
    /// the current one and, until its grace is over, the one it replaced. A cached row may
    /// outlive that grace, so it is judged at each request.
    pub fn signing(&self, now: DateTime<Utc>) -> Option<Cow<'_, str>> {
        let previous = self
            .previous
            .as_ref()
            .filter(|(_, until)| *until > now)
            .map(|(secret, _)| secret.as_str());
        match (self.current.as_deref(), previous) {
            (Some(current), Some(previous)) => Some(Cow::Owned(format!("{current} {previous}"))),
            (Some(only), None) | (None, Some(only)) => Some(Cow::Borrowed(only)),
            (None, None) => None,
        }
    }
}

// By hand, so that no secret can reach a log line.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("current", &self.current.as_ref().map(|_| "REDACTED"))
            .field(
                "previous_until",
                &self.previous.as_ref().map(|(_, until)| until),
            )
            .finish()
    }
}

/// A webhook's rule, as loaded: ready to evaluate, or why the row cannot be used. An unusable
/// row is kept, not dropped: each event gets a `failed` record naming what is wrong.
#[derive(Debug)]
pub enum Rule {
    Usable(Trigger),
    Unusable(Unusable),
}

/// What makes a webhook row unusable.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    /// A `secret` column that cannot sign.
    #[error(transparent)]
    Secret(#[from] SignatureError),
}

// By hand, so that neither the secret nor the URL's query string can reach a log line.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("secrets", &self.secrets)
            .field("rule", &self.rule)
            .finish()
    }
}

type Key = (String, String);
type Hooks = Arc<[Arc<Webhook>]>;

/// A repository's entry weighs one, and one more for each of its webhooks: the cache's bound is
/// about webhooks held, however they spread over repositories.
#[derive(Clone)]
struct ByWebhooks;

impl quick_cache::Weighter<Key, Hooks> for ByWebhooks {
    fn weight(&self, _key: &Key, hooks: &Hooks) -> u64 {
        1 + hooks.len() as u64
    }
}

/// Repositories loaded in one query at most.
const MAX_LOAD_BATCH: usize = 256;

/// The enabled webhooks per repository, in a bounded cache (an S3-FIFO, `quick_cache`): a
/// change drops only its repository, and misses queued up together are loaded in one query.
/// Cheap to clone.
#[derive(Clone)]
pub struct WebhookCache {
    pool: Pool,
    metrics: Metrics,
    loader: Batcher<Key, Hooks>,
    inner: Arc<Inner>,
}

struct Inner {
    repositories: quick_cache::sync::Cache<Key, Hooks, ByWebhooks>,
    /// By id, for jobs; `None` for a webhook that does not exist.
    limits: quick_cache::sync::Cache<i64, Option<Limits>>,
    /// Bumped on every invalidation, so a load that raced a change is not cached.
    generation: AtomicU64,
    /// True only while the listener is connected: otherwise changes could go unseen.
    listening: AtomicBool,
}

/// What a notification on [`CHANNEL`] says changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One webhook, of this repository.
    Webhook {
        id: i64,
        namespace: String,
        repository: String,
    },
    /// Anything: drop it all.
    All,
}

impl Change {
    /// The notification's payload, as `sql/` writes it; anything else counts as everything.
    pub fn parse(payload: &str) -> Change {
        #[derive(serde::Deserialize)]
        struct Wire {
            id: i64,
            namespace: String,
            repository: String,
        }
        match serde_json::from_str::<Wire>(payload) {
            Ok(w) => Change::Webhook {
                id: w.id,
                namespace: w.namespace,
                repository: w.repository,
            },
            Err(_) => Change::All,
        }
    }
}

impl Webhook {
    fn from_row(row: &tokio_postgres::Row) -> Result<Webhook, StoreError> {
        let secrets = Secrets::from_row(row)?;
        let trigger = Trigger::from_row(
            row.try_get("trigger_type")?,
            row.try_get("trigger_expression")?,
            row.try_get::<_, Option<Vec<String>>>("trigger_tags")?
                .as_deref(),
        );
        let rule = match (
            trigger,
            secrets
                .current
                .as_deref()
                .map(|s| payload::sign(s, "", 0, "")),
        ) {
            (Err(e), _) => Rule::Unusable(e.into()),
            (Ok(_), Some(Err(e))) => Rule::Unusable(e.into()),
            (Ok(trigger), _) => Rule::Usable(trigger),
        };
        Ok(Webhook {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            url: row.try_get("url")?,
            secrets,
            rule,
            max_in_flight: cap(row.try_get("max_in_flight")?),
        })
    }
}

/// The column as a cap: the database allows only 1 or more.
fn cap(column: Option<i32>) -> Option<u32> {
    column
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
}

impl WebhookCache {
    /// A cache holding about `capacity` webhooks (see [`ByWebhooks`]).
    pub fn new(pool: Pool, capacity: u64, metrics: Metrics) -> WebhookCache {
        let loader = {
            let pool = pool.clone();
            Batcher::spawn(MAX_LOAD_BATCH, move |keys| {
                let pool = pool.clone();
                async move { load(&pool, keys).await }
            })
        };
        let estimated = usize::try_from(capacity / 2).unwrap_or(usize::MAX).max(16);
        WebhookCache {
            pool,
            metrics,
            loader,
            inner: Arc::new(Inner {
                repositories: quick_cache::sync::Cache::with_weighter(
                    estimated,
                    capacity.max(2),
                    ByWebhooks,
                ),
                limits: quick_cache::sync::Cache::new(
                    usize::try_from(capacity).unwrap_or(usize::MAX).max(16),
                ),
                generation: AtomicU64::new(0),
                listening: AtomicBool::new(false),
            }),
        }
    }

    /// The enabled webhooks of a repository, from the cache when it can be trusted. Lookups of
    /// one repository at once wait for a single load.
    pub async fn get(&self, namespace: &str, repository: &str) -> Result<Hooks, StoreError> {
        let key = (namespace.to_owned(), repository.to_owned());
        if !self.inner.listening.load(Ordering::Acquire) {
            self.metrics.cache_lookup(false);
            return self.loader.submit(key).await;
        }
        let guard = match self.inner.repositories.get_value_or_guard_async(&key).await {
            Ok(hit) => {
                self.metrics.cache_lookup(true);
                return Ok(hit);
            }
            Err(guard) => guard,
        };
        self.metrics.cache_lookup(false);
        let generation = self.inner.generation.load(Ordering::Acquire);
        let webhooks = self.loader.submit(key).await?;
        // A change seen while loading may have come after the read: not cached (the guard
        // dropped lets a waiting lookup load again).
        if self.inner.generation.load(Ordering::Acquire) == generation
            && self.inner.listening.load(Ordering::Acquire)
        {
            let _ = guard.insert(webhooks.clone());
            self.gauges();
        }
        Ok(webhooks)
    }

    /// Whether a webhook is enabled and its cap, or `None` when there is no such webhook,
    /// from the cache when it can be trusted.
    pub async fn limits(&self, id: i64) -> Result<Option<Limits>, StoreError> {
        let listening = self.inner.listening.load(Ordering::Acquire);
        if listening && let Some(hit) = self.inner.limits.get(&id) {
            return Ok(hit);
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT enabled, max_in_flight FROM webhooks WHERE id = $1")
            .await?;
        let found = match client.query_opt(&statement, &[&id]).await? {
            Some(row) => Some(Limits {
                enabled: row.try_get("enabled")?,
                max_in_flight: cap(row.try_get("max_in_flight")?),
            }),
            None => None,
        };
        drop(client);
        if listening && self.inner.generation.load(Ordering::Acquire) == generation {
            self.inner.limits.insert(id, found);
        }
        Ok(found)
    }

    fn invalidate(&self, change: &Change) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        match change {
            Change::Webhook {
                id,
                namespace,
                repository,
            } => {
                self.inner
                    .repositories
                    .remove(&(namespace.clone(), repository.clone()));
                self.inner.limits.remove(id);
                self.metrics.cache_invalidated(Invalidated::Repository);
            }
            Change::All => {
                self.inner.repositories.clear();
                self.inner.limits.clear();
                self.metrics.cache_invalidated(Invalidated::All);
            }
        }
        self.gauges();
    }

    fn gauges(&self) {
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .cache_repositories
            .set(to_i64(self.inner.repositories.len() as u64));
        self.metrics
            .cache_webhooks
            .set(to_i64(self.inner.repositories.weight()));
    }

    /// Listens for changes until cancelled, reconnecting with backoff. While not connected the
    /// cache is bypassed, so a change is never missed, only the saving is.
    pub async fn listen(self, cancel: CancellationToken) {
        let backoff = || Waits::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut waits = backoff();
        while !cancel.is_cancelled() {
            match self.subscribe().await {
                Ok((client, mut notifications)) => {
                    waits = backoff();
                    // Whatever changed while nobody listened is unknown: start from empty.
                    self.invalidate(&Change::All);
                    self.inner.listening.store(true, Ordering::Release);
                    loop {
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            next = notifications.recv() => match next {
                                Some(change) => self.invalidate(&change),
                                None => {
                                    tracing::warn!("webhook change listener lost its connection; reading webhooks uncached");
                                    break;
                                }
                            },
                        }
                    }
                    self.inner.listening.store(false, Ordering::Release);
                    self.invalidate(&Change::All);
                    drop(client);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "webhook change listener cannot connect; reading webhooks uncached");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(waits.next_delay()) => {}
            }
        }
    }

    /// A connection of its own that listens on [`CHANNEL`], and a receiver that yields each
    /// change and ends when the connection does.
    async fn subscribe(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<Change>,
        ),
        StoreError,
    > {
        let (client, mut connection) = self.pool.config.connect(NoTls).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // The connection does its I/O only while polled: this task drives it and forwards the
        // notifications; it ends with the connection (dropping the client closes it).
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message
                    && tx.send(Change::parse(n.payload())).is_err()
                {
                    return;
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok((client, rx))
    }
}

/// The enabled webhooks of each repository, in order, in one query: an index range of
/// `webhooks_by_repository` each.
async fn load(pool: &Pool, keys: Vec<Key>) -> Result<Vec<Hooks>, StoreError> {
    let (namespaces, repositories): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(n, r)| (n.as_str(), r.as_str())).unzip();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT k.n, w.id, w.name, w.url, {SECRET_COLUMNS}, w.trigger_type, w.trigger_expression,
                    w.trigger_tags, w.max_in_flight
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(namespace, repository, n)
               JOIN webhooks w ON w.namespace = k.namespace AND w.repository = k.repository AND w.enabled
              ORDER BY k.n, w.id"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&namespaces, &repositories])
        .await?;
    drop(client);
    let mut found: Vec<Vec<Arc<Webhook>>> = vec![Vec::new(); keys.len()];
    for row in &rows {
        let n: i64 = row.try_get(0)?;
        let slot = usize::try_from(n - 1)
            .ok()
            .and_then(|i| found.get_mut(i))
            .ok_or(StoreError::BatchLength {
                got: rows.len(),
                expected: keys.len(),
            })?;
        slot.push(Arc::new(Webhook::from_row(row)?));
    }
    Ok(found.into_iter().map(Hooks::from).collect())
}

/// A webhook as tagcast disabled it.
#[derive(Debug, Clone)]
pub struct Disabled {
    pub id: i64,
    pub name: String,
    pub namespace: String,
    pub repository: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

impl Disabled {
    fn from_row(row: &tokio_postgres::Row) -> Result<Disabled, StoreError> {
        Ok(Disabled {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            namespace: row.try_get("namespace")?,
            repository: row.try_get("repository")?,
            reason: row.try_get("disabled_reason")?,
            at: row.try_get("disabled_at")?,
        })
    }
}

/// Disables a webhook for `reason`, if it is still enabled: of several replicas that try at
/// once, one gets it back, so it is announced once. Its change notice drops every replica's
/// cached configuration, so events consumed from then on skip it.
pub async fn disable(pool: &Pool, id: i64, reason: Reason) -> Result<Option<Disabled>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE webhooks SET enabled = false, disabled_reason = $2, disabled_at = now(),
                    disabled_announced = false, updated_at = now()
              WHERE id = $1 AND enabled
             RETURNING id, name, namespace, repository, disabled_reason, disabled_at",
        )
        .await?;
    client
        .query_opt(&statement, &[&id, &reason.as_str()])
        .await?
        .map(|row| Disabled::from_row(&row))
        .transpose()
}

/// Notes that the broker confirmed the `webhook.disabled` event of the disabling at `at`.
pub async fn announced(pool: &Pool, id: i64, at: DateTime<Utc>) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE webhooks SET disabled_announced = true
              WHERE id = $1 AND disabled_at = $2 AND NOT disabled_announced",
        )
        .await?;
    client.execute(&statement, &[&id, &at]).await?;
    Ok(())
}

/// Webhooks tagcast disabled longer ago than `after`, still disabled, whose `webhook.disabled`
/// event was never confirmed (at most `limit`, oldest first): marks them announced and hands
/// them to `announce`, committing only if it succeeds. The rows stay locked meanwhile, and
/// other replicas skip them, so each is announced by one replica.
pub async fn announce_unannounced<F, Fut, E>(
    pool: &Pool,
    after: Duration,
    limit: i64,
    announce: F,
) -> Result<usize, E>
where
    F: FnOnce(Vec<Disabled>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<StoreError>,
{
    const SQL: &str = "UPDATE webhooks SET disabled_announced = true
          WHERE id IN (
                SELECT id FROM webhooks
                 WHERE disabled_reason IS NOT NULL AND NOT disabled_announced AND NOT enabled
                   AND disabled_at < now() - make_interval(secs => $1)
                 ORDER BY disabled_at LIMIT $2
                   FOR UPDATE SKIP LOCKED)
          RETURNING id, name, namespace, repository, disabled_reason, disabled_at";
    let mut client = pool.get().await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let found = tx
        .query(SQL, &[&after.as_secs_f64(), &limit])
        .await
        .map_err(StoreError::from)?
        .iter()
        .map(Disabled::from_row)
        .collect::<Result<Vec<_>, StoreError>>()?;
    let n = found.len();
    if n == 0 {
        return Ok(0);
    }
    announce(found).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_secret_signs_beside_the_new_one_until_its_grace_ends() {
        let now = Utc::now();
        let secrets = |current: Option<&str>, previous: Option<(&str, i64)>| Secrets {
            current: current.map(str::to_owned),
            previous: previous
                .map(|(s, secs)| (s.to_owned(), now + chrono::Duration::seconds(secs))),
        };
        let cases = [
            (secrets(None, None), None),
            (secrets(Some("new"), None), Some("new")),
            (secrets(Some("new"), Some(("old", 60))), Some("new old")),
            (secrets(Some("new"), Some(("old", 0))), Some("new")),
            (secrets(Some("new"), Some(("old", -60))), Some("new")),
            (secrets(None, Some(("old", 60))), Some("old")),
        ];
        for (secrets, signing) in cases {
            assert_eq!(secrets.signing(now).as_deref(), signing, "{secrets:?}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let shown = format!(
            "{:?}",
            Secrets {
                current: Some("whsec_current".into()),
                previous: Some(("whsec_previous".into(), Utc::now())),
            }
        );
        assert!(!shown.contains("whsec_"), "{shown}");
    }
}
