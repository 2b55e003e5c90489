//! Page cursors: opaque to clients, and a position in a total order (newest first), not an
//! offset, so that records inserted meanwhile never shift a page. Pure.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where the next page of a list starts: after this item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Webhooks, by id, newest (highest) first.
    Webhook(i64),
    /// Access records, by (created_at, id), newest first.
    Delivery(DateTime<Utc>, Uuid),
    /// Repositories, by (namespace, repository), in name order.
    Repository(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor is not one this list handed out")]
pub struct BadCursor;

impl Cursor {
    pub fn encode(&self) -> String {
        let text = match self {
            Cursor::Webhook(id) => format!("w{id}"),
            Cursor::Delivery(at, id) => format!("d{}.{}", at.timestamp_micros(), id.simple()),
            // JSON, since either name may hold any character.
            Cursor::Repository(namespace, repository) => {
                format!("r{}", serde_json::json!([namespace, repository]))
            }
        };
        B64.encode(text)
    }

    pub fn decode(raw: &str) -> Result<Cursor, BadCursor> {
        let bytes = B64.decode(raw).map_err(|_| BadCursor)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| BadCursor)?;
        match text.split_at_checked(1) {
            Some(("w", id)) => id.parse().map(Cursor::Webhook).map_err(|_| BadCursor),
            Some(("d", rest)) => {
                let (micros, id) = rest.split_once('.').ok_or(BadCursor)?;
                let at = micros
                    .parse()
                    .ok()
                    .and_then(DateTime::from_timestamp_micros)
                    .ok_or(BadCursor)?;
                let id = Uuid::try_parse(id).map_err(|_| BadCursor)?;
                Ok(Cursor::Delivery(at, id))
            }
            Some(("r", names)) => serde_json::from_str::<(String, String)>(names)
                .map(|(namespace, repository)| Cursor::Repository(namespace, repository))
                .map_err(|_| BadCursor),
            _ => Err(BadCursor),
        }
    }
}

/// Cuts `rows`, read with one more than `limit`, to the page, and says where the next page
/// starts: after the page's last row, if that one more was there.
pub fn cut<T>(rows: &mut Vec<T>, limit: i64, position: impl Fn(&T) -> Cursor) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(|last| position(last).encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn garbage_is_refused() {
        for raw in [
            "",
            "!!",
            "eA",
            &B64.encode("w"),
            &B64.encode("wx1"),
            &B64.encode("d1.zz"),
            &B64.encode("q5"),
            &B64.encode("r[\"a\"]"),
            &B64.encode("r{}"),
        ] {
            assert_eq!(Cursor::decode(raw), Err(BadCursor), "{raw}");
        }
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_one_more_row_was_read() {
        let cases: [(usize, i64, usize, Option<i64>); 4] = [
            (0, 3, 0, None),
            (3, 3, 3, None),
            (4, 3, 3, Some(2)),
            (1, 0, 0, None),
        ];
        for (read, limit, kept, next) in cases {
            let mut rows: Vec<i64> = (0..read as i64).collect();
            let cursor = cut(&mut rows, limit, |&id| Cursor::Webhook(id));
            assert_eq!(rows.len(), kept, "{read} rows, limit {limit}");
            assert_eq!(cursor, next.map(|id| Cursor::Webhook(id).encode()));
        }
    }

    proptest! {
        #[test]
        fn cursors_round_trip(id in any::<i64>(), micros in -1_000_000_000_000_000i64..4_000_000_000_000_000, bits in any::<u128>()) {
            let w = Cursor::Webhook(id);
            prop_assert_eq!(Cursor::decode(&w.encode()), Ok(w));
            let at = DateTime::from_timestamp_micros(micros).unwrap();
            let d = Cursor::Delivery(at, Uuid::from_u128(bits));
            prop_assert_eq!(Cursor::decode(&d.encode()), Ok(d));
        }

        #[test]
        fn repository_cursors_round_trip(namespace in any::<String>(), repository in any::<String>()) {
            let r = Cursor::Repository(namespace, repository);
            prop_assert_eq!(Cursor::decode(&r.encode()), Ok(r));
        }
    }
}
