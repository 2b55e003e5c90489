//! Webhook rows and the cache that spares each event a query: it is dropped on every change
//! (LISTEN/NOTIFY) and bypassed whenever the listener is not connected, so it is never stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use crate::config::redact_url;
use crate::metrics::Metrics;
use crate::payload::{self, SignatureError};
use crate::trigger::{Trigger, TriggerError};

/// Channel the `webhooks_changed` trigger notifies (see `sql/`).
const CHANNEL: &str = "tagcast_webhooks";
/// Beyond this many cached repositories the cache starts again empty: memory stays bounded
/// however many repositories events name.
const MAX_CACHED_REPOSITORIES: usize = 100_000;

/// An enabled webhook, with its rule compiled once when the row is loaded.
pub struct Webhook {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub secret: Option<String>,
    /// An unusable rule is kept, not dropped: the webhook gets a `failed` record naming it.
    pub trigger: Result<Trigger, TriggerError>,
    /// A `secret` column that cannot sign; such a webhook gets a `failed` record too.
    pub secret_error: Option<SignatureError>,
}

// By hand, so that neither the secret nor the URL's query string can reach a log line.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "REDACTED"))
            .field("trigger", &self.trigger)
            .finish()
    }
}

type Key = (String, String);

/// The enabled webhooks per repository. Cheap to clone.
#[derive(Clone)]
pub struct WebhookCache {
    pool: PgPool,
    inner: Arc<Inner>,
}

struct Inner {
    // A std lock: held only to look up or swap an Arc, never across an await.
    map: RwLock<HashMap<Key, Arc<[Arc<Webhook>]>>>,
    /// Bumped on every invalidation, so a load that raced a change is not cached.
    generation: AtomicU64,
    /// True only while the listener is connected: otherwise changes could go unseen.
    listening: AtomicBool,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    name: String,
    url: String,
    secret: Option<String>,
    trigger_type: String,
    trigger_expression: Option<String>,
    trigger_tags: Option<Vec<String>>,
}

impl From<Row> for Webhook {
    fn from(row: Row) -> Webhook {
        let trigger = Trigger::from_row(
            &row.trigger_type,
            row.trigger_expression.as_deref(),
            row.trigger_tags.as_deref(),
        );
        let secret_error = row
            .secret
            .as_deref()
            .and_then(|s| payload::sign(s, "", 0, "").err());
        Webhook {
            id: row.id,
            name: row.name,
            url: row.url,
            secret: row.secret,
            trigger,
            secret_error,
        }
    }
}

impl WebhookCache {
    pub fn new(pool: PgPool) -> WebhookCache {
        WebhookCache {
            pool,
            inner: Arc::new(Inner {
                map: RwLock::default(),
                generation: AtomicU64::new(0),
                listening: AtomicBool::new(false),
            }),
        }
    }

    /// The enabled webhooks of a repository, from the cache when it can be trusted.
    pub async fn get(
        &self,
        namespace: &str,
        repository: &str,
    ) -> Result<Arc<[Arc<Webhook>]>, StoreError> {
        let key = (namespace.to_owned(), repository.to_owned());
        let listening = self.inner.listening.load(Ordering::Acquire);
        if listening && let Some(hit) = self.read().get(&key) {
            return Ok(hit.clone());
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, name, url, secret, trigger_type, trigger_expression, trigger_tags
               FROM webhooks WHERE namespace = $1 AND repository = $2 AND enabled ORDER BY id",
        )
        .bind(namespace)
        .bind(repository)
        .fetch_all(&self.pool)
        .await?;
        let webhooks: Arc<[Arc<Webhook>]> = rows
            .into_iter()
            .map(|r| Arc::new(Webhook::from(r)))
            .collect();
        if listening {
            let mut map = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
            // Checked under the write lock: an invalidation either happened before (skip) or
            // will clear this entry after.
            if self.inner.generation.load(Ordering::Acquire) == generation {
                if map.len() >= MAX_CACHED_REPOSITORIES {
                    map.clear();
                }
                map.insert(key, webhooks.clone());
            }
        }
        Ok(webhooks)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Arc<[Arc<Webhook>]>>> {
        // A panic while holding the lock cannot leave the map half-written (insert and clear
        // are single calls), so a poisoned lock is still sound to use.
        self.inner.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn invalidate(&self, metrics: &Metrics) {
        let mut map = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
        metrics.webhook_cache_reloads.inc();
    }

    /// Listens for changes until cancelled, reconnecting with backoff. While not connected the
    /// cache is bypassed, so a change is never missed, only the saving is.
    pub async fn listen(self, metrics: Metrics, cancel: CancellationToken) {
        let mut delay = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            let mut listener = match self.subscribe().await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook change listener cannot connect; reading webhooks uncached");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            // Whatever changed while nobody listened is unknown: start from empty.
            self.invalidate(&metrics);
            self.inner.listening.store(true, Ordering::Release);
            loop {
                let next = tokio::select! {
                    () = cancel.cancelled() => break,
                    next = listener.try_recv() => next,
                };
                match next {
                    Ok(Some(_)) => self.invalidate(&metrics),
                    Ok(None) | Err(_) => {
                        tracing::warn!("webhook change listener lost its connection");
                        break;
                    }
                }
            }
            self.inner.listening.store(false, Ordering::Release);
            self.invalidate(&metrics);
        }
    }

    async fn subscribe(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}
