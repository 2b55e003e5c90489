//! API tokens (contract section 12): rows of `api_tokens`, which hold a hash of each token and
//! never the token.

use chrono::{DateTime, Utc};

use super::{Pool, StoreError};
use crate::model::utc_millis;

/// What a token may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read webhooks and access records.
    Read,
    /// Read, and change webhooks, send tests, redeliver.
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }

    fn from_sql(text: &str) -> Result<Scope, StoreError> {
        match text {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            other => Err(StoreError::Data {
                column: "scope",
                value: other.to_owned(),
            }),
        }
    }
}

/// A token as listed: everything but its hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub scope: Scope,
    #[serde(with = "utc_millis")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "utc_millis::option::serialize")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "utc_millis::option::serialize")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A live token found by its lookup part, with the hash to compare.
pub struct Stored {
    pub id: i64,
    pub name: String,
    pub scope: Scope,
    pub hash: Vec<u8>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// How stale `last_used_at` may grow before a use is noted: reads should not each write.
pub const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// Why a token was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a live token is named {0:?} already: revoke it first, or pick another name")]
    NameTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn create(
    pool: &Pool,
    name: &str,
    scope: Scope,
    lookup: &str,
    hash: &[u8],
) -> Result<(), CreateError> {
    let client = pool.get().await?;
    let inserted = client
        .execute(
            "INSERT INTO api_tokens (name, lookup, hash, scope) VALUES ($1, $2, $3, $4)",
            &[&name, &lookup, &hash, &scope.as_str()],
        )
        .await
        .map_err(StoreError::from);
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if e.violated_constraint() == Some("api_tokens_live_name") => {
            Err(CreateError::NameTaken(name.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Every token, live and revoked, oldest first.
pub async fn list(pool: &Pool) -> Result<Vec<TokenInfo>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT name, scope, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(TokenInfo {
                name: row.try_get("name")?,
                scope: Scope::from_sql(row.try_get("scope")?)?,
                created_at: row.try_get("created_at")?,
                last_used_at: row.try_get("last_used_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        })
        .collect()
}

/// Revokes the live token of that name; false if there is none.
pub async fn revoke(pool: &Pool, name: &str) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
            &[&name],
        )
        .await?;
    Ok(n > 0)
}

/// The live token with this lookup part, if any.
pub async fn find(pool: &Pool, lookup: &str) -> Result<Option<Stored>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT id, name, scope, hash, last_used_at FROM api_tokens WHERE lookup = $1 AND revoked_at IS NULL",
        )
        .await?;
    let Some(row) = client.query_opt(&statement, &[&lookup]).await? else {
        return Ok(None);
    };
    Ok(Some(Stored {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        scope: Scope::from_sql(row.try_get("scope")?)?,
        hash: row.try_get("hash")?,
        last_used_at: row.try_get("last_used_at")?,
    }))
}

/// Notes that a token was used now.
pub async fn touch(pool: &Pool, id: i64) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
        .await?;
    client.execute(&statement, &[&id]).await?;
    Ok(())
}
