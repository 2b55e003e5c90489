//! Schema migrations: the files of `sql/`, compiled in, applied in order under an advisory lock
//! (so replicas starting together apply each once), each in its own transaction, and listed in
//! `tagcast_migrations` with a checksum, so an edited migration is refused rather than
//! silently skipped.

use sha2::{Digest as _, Sha256};

use super::{Pool, StoreError};

/// `(version, description, SQL)`, in the order they apply. A new migration is a new file in
/// `sql/` and a new line here; an applied one is never edited.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        20261128000001,
        "webhooks",
        include_str!("../../sql/20261128000001_webhooks.sql"),
    ),
    (
        20261128000002,
        "sweep index",
        include_str!("../../sql/20261128000002_sweep_index.sql"),
    ),
    (
        20261129000001,
        "hot finish",
        include_str!("../../sql/20261129000001_hot_finish.sql"),
    ),
    (
        20261129000002,
        "sweep due",
        include_str!("../../sql/20261129000002_sweep_due.sql"),
    ),
    (
        20261202000001,
        "attempt error detail",
        include_str!("../../sql/20261202000001_attempt_error_detail.sql"),
    ),
    (
        20261203000001,
        "admin api",
        include_str!("../../sql/20261203000001_admin_api.sql"),
    ),
    (
        20261203000002,
        "endpoint health",
        include_str!("../../sql/20261203000002_endpoint_health.sql"),
    ),
    (
        20261203000003,
        "partitioned records",
        include_str!("../../sql/20261203000003_partitioned_records.sql"),
    ),
    (
        20261203000004,
        "repository notifications",
        include_str!("../../sql/20261203000004_repository_notifications.sql"),
    ),
    (
        20261204000001,
        "record key in time order",
        include_str!("../../sql/20261204000001_record_key_in_time_order.sql"),
    ),
];

/// Any 64-bit key will do, as long as nothing else locks it: "tagcast" in ASCII.
const LOCK_KEY: i64 = 0x0074_6167_6361_7374;

/// Applies pending migrations.
pub async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    // Session-level: held across the transactions below, released however this ends (the
    // unlock, or the connection closing).
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let applied = apply(&mut client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    drop(client);
    applied?;
    unlocked?;
    // The days ahead get their partitions now, before anything is recorded; the retention is
    // applied by the sweeper.
    super::partitions::maintain(pool, chrono::Utc::now(), None).await?;
    Ok(())
}

async fn apply(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS tagcast_migrations (
                 version     bigint PRIMARY KEY,
                 description text        NOT NULL,
                 checksum    bytea,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             );
             -- Databases migrated before tagcast ran its own migrations kept the list in sqlx's
             -- table: those count as applied (without a checksum to compare).
             DO $$ BEGIN
               IF to_regclass('_sqlx_migrations') IS NOT NULL THEN
                 INSERT INTO tagcast_migrations (version, description, applied_at)
                 SELECT version, description, installed_on FROM _sqlx_migrations WHERE success
                 ON CONFLICT DO NOTHING;
               END IF;
             END $$;",
        )
        .await?;
    let rows = client
        .query("SELECT version, checksum FROM tagcast_migrations", &[])
        .await?;
    let applied: std::collections::HashMap<i64, Option<Vec<u8>>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for &(version, description, sql) in MIGRATIONS {
        let checksum = Sha256::digest(sql.as_bytes()).to_vec();
        match applied.get(&version) {
            Some(Some(recorded)) if *recorded != checksum => {
                return Err(StoreError::MigrationChanged { version });
            }
            Some(_) => continue,
            None => {}
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO tagcast_migrations (version, description, checksum) VALUES ($1, $2, $3)",
            &[&version, &description, &checksum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, description, "migration applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_every_file_of_sql_in_order() {
        let mut files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|(version, _, _)| version.to_string())
            .collect();
        let on_disk: Vec<String> = files
            .iter()
            .map(|f| f.split('_').next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            listed, on_disk,
            "a file in sql/ is missing from MIGRATIONS, or out of order"
        );
    }
}
