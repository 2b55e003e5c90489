//! The daily partitions of the access records (contract section 15): made a few days ahead, and
//! dropped whole once the retention has passed over every record in them, so removing a day of
//! records costs the same however many there are. One replica at a time does it.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};

use super::{Pool, StoreError};

/// Days of partitions kept ready beyond today, so that a missed round or a clock a little ahead
/// never sends a day's records to the default partition.
pub const AHEAD: u64 = 3;

/// Any 64-bit key nothing else locks: "tagpart" in ASCII.
pub const LOCK_KEY: i64 = 0x0074_6167_7061_7274;

/// The partitioned tables, attempts first: a day's attempts go before the deliveries they
/// reference.
const TABLES: [&str; 2] = ["delivery_attempts", "deliveries"];

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintained {
    /// Another replica was doing it: this one did nothing.
    pub skipped: bool,
    /// The days whose partitions were made.
    pub created: Vec<NaiveDate>,
    /// The partitions of `deliveries` dropped, by name, with their attempts'.
    pub dropped: Vec<String>,
    /// Finished records past the retention, by event time and by their last change, removed one
    /// by one from the default partition, where only events stamped outside the daily
    /// partitions go.
    pub deleted: u64,
}

/// The name of the partition of `table` holding `day`.
fn partition_name(table: &str, day: NaiveDate) -> String {
    format!("{table}_p{}", day.format("%Y%m%d"))
}

/// The daily partition of `table` that holds all of `times`, when they fall on one day. It may
/// not exist: that day's records went to the default partition, or to the one kept from before
/// partitioning.
pub(super) fn day_of(table: &str, times: &[DateTime<Utc>]) -> Option<String> {
    let day = times.first()?.date_naive();
    times
        .iter()
        .all(|t| t.date_naive() == day)
        .then(|| partition_name(table, day))
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

/// The days whose partitions should exist at `now`: today and [`AHEAD`] more (UTC).
pub fn days_ahead(now: DateTime<Utc>) -> impl Iterator<Item = NaiveDate> {
    let today = now.date_naive();
    (0..=AHEAD).filter_map(move |n| today.checked_add_days(Days::new(n)))
}

/// Makes the partitions due at `now` and, given a retention, drops those wholly older than
/// `now - retention`. Skipped when another replica holds the lock; a drop that would wait on a
/// lock for long gives up (and is tried again next round) rather than hold up the deliveries
/// queued behind it.
pub async fn maintain(
    pool: &Pool,
    now: DateTime<Utc>,
    retention: Option<std::time::Duration>,
) -> Result<Maintained, StoreError> {
    // Past the epoch a retention would mean "keep everything".
    let horizon = retention.map(|retention| {
        chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| now.checked_sub_signed(r))
            .unwrap_or(DateTime::UNIX_EPOCH)
            .max(DateTime::UNIX_EPOCH)
    });
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?
        .try_get(0)?;
    if !locked {
        return Ok(Maintained {
            skipped: true,
            ..Maintained::default()
        });
    }
    // Dropping a partition takes a lock on its parent that every insert waits behind: wait
    // little, and leave it for the next round.
    tx.batch_execute("SET LOCAL lock_timeout = '2s'").await?;
    let mut done = Maintained::default();
    for day in days_ahead(now) {
        let (from, to) = (midnight(day), midnight(day + Days::new(1)));
        // A day already covered (by its own partition, or by the partition the migration made
        // of older records) is left as it is.
        let covered: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                                 WHERE i.inhparent = 'deliveries'::regclass
                                   AND coalesce(tagcast_partition_upper(c.oid) > $1, false)
                                   AND coalesce(tagcast_partition_lower(c.oid) < $2, true)
                                   AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT')",
                &[&from, &to],
            )
            .await?
            .try_get(0)?;
        if covered {
            continue;
        }
        // Records of that day already in the default partition (their event was stamped days
        // ahead of the clock) would make the new partition's bounds a lie, which PostgreSQL
        // refuses: the day stays in the default partition, removed there by the retention.
        let strays: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM deliveries_default WHERE occurred_at >= $1 AND occurred_at < $2)",
                &[&from, &to],
            )
            .await?
            .try_get(0)?;
        if strays {
            tracing::warn!(%day, "records of this day are in the default partition; not making its own");
            continue;
        }
        for table in TABLES.iter().rev() {
            let storage = if *table == "deliveries" {
                // Room for the finished version of each row beside it (a HOT update).
                " WITH (fillfactor = 60)"
            } else {
                ""
            };
            tx.batch_execute(&format!(
                "CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ('{from}') TO ('{to}'){storage}",
                name = partition_name(table, day),
                from = from.to_rfc3339(),
                to = to.to_rfc3339(),
            ))
            .await?;
        }
        done.created.push(day);
    }
    let Some(horizon) = horizon else {
        tx.commit().await?;
        return Ok(done);
    };
    let old = tx
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'deliveries'::regclass AND tagcast_partition_upper(c.oid) <= $1
              ORDER BY 1",
            &[&horizon],
        )
        .await?;
    for row in &old {
        let name: String = row.try_get(0)?;
        // A delivery still waiting for a retry is not over, however old its event: the day
        // waits for it (`deliveries_due` holds exactly those, so this reads an index).
        let waiting: bool = tx
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM {name} WHERE watched)"),
                &[],
            )
            .await?
            .try_get(0)?;
        if waiting {
            tracing::warn!(partition = %name, "past the retention but a delivery in it still waits for a retry; kept for now");
            continue;
        }
        let attempts = name.replacen("deliveries", "delivery_attempts", 1);
        tx.batch_execute(&format!(
            "DROP TABLE IF EXISTS {attempts};
             ALTER TABLE deliveries DETACH PARTITION {name};
             DROP TABLE {name};"
        ))
        .await?;
        done.dropped.push(name);
    }
    // One by one here, and only what is both old and over: an old-stamped event may have
    // arrived only today.
    done.deleted = tx
        .execute(
            "DELETE FROM deliveries_default
              WHERE occurred_at < $1 AND updated_at < $1 AND status IN ('not_triggered', 'succeeded', 'failed')",
            &[&horizon],
        )
        .await?;
    tx.commit().await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    #[test]
    fn a_batch_of_one_day_has_that_days_partition() {
        let cases: [(&[&str], Option<&str>); 5] = [
            (
                &["2026-12-04T00:00:00Z", "2026-12-04T23:59:59.999999Z"],
                Some("deliveries_p20261204"),
            ),
            (&["2026-12-04T10:00:00Z"], Some("deliveries_p20261204")),
            (
                &["2026-12-04T10:00:00Z", "2026-12-03T23:59:59.999999Z"],
                None,
            ),
            // Days are UTC days: these are 23:00 on the 3rd and 01:00 on the 4th.
            (
                &["2026-12-04T08:00:00+09:00", "2026-12-04T10:00:00+09:00"],
                None,
            ),
            (&[], None),
        ];
        for (times, want) in cases {
            let times: Vec<_> = times.iter().map(|t| at(t)).collect();
            assert_eq!(day_of("deliveries", &times).as_deref(), want, "{times:?}");
        }
    }
}
