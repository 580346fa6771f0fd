//! Reading the log: one aggregate's stream, a range of positions, and the
//! row form every reader of `events` shares.

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::EventStore;
use crate::envelope::StoredEvent;

/// The columns of `events`, in the order [`event_from_row`] reads them.
pub const EVENT_COLUMNS: &str = "position, event_id, aggregate_type, aggregate_id, stream_version, study_id, \
     event_type, schema_version, data::text AS data, actor, reason, correlation_id, causation_id, recorded_at, \
     prevhash, hash";

impl EventStore {
    /// Every event of one aggregate, in stream order.
    pub async fn load_stream(&self, aggregate_id: Uuid) -> sqlx::Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = $1 ORDER BY stream_version"
        );
        sqlx::query(&sql)
            .bind(aggregate_id)
            .try_map(|row: PgRow| event_from_row(&row))
            .fetch_all(&self.pool)
            .await
    }

    /// Up to `limit` events after `after`, in position order.
    pub async fn read_after(
        pool: &PgPool,
        after: i64,
        limit: i64,
    ) -> sqlx::Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        );
        sqlx::query(&sql)
            .bind(after)
            .bind(limit)
            .try_map(|row: PgRow| event_from_row(&row))
            .fetch_all(pool)
            .await
    }
}

/// Reads one row selected with [`EVENT_COLUMNS`].
pub fn event_from_row(row: &PgRow) -> sqlx::Result<StoredEvent> {
    Ok(StoredEvent {
        position: row.try_get(0)?,
        event_id: row.try_get(1)?,
        aggregate_type: row.try_get(2)?,
        aggregate_id: row.try_get(3)?,
        stream_version: row.try_get(4)?,
        study_id: row.try_get(5)?,
        event_type: row.try_get(6)?,
        schema_version: row.try_get(7)?,
        data: row.try_get(8)?,
        actor: row.try_get(9)?,
        reason: row.try_get(10)?,
        correlation_id: row.try_get(11)?,
        causation_id: row.try_get(12)?,
        recorded_at: row.try_get(13)?,
        prevhash: hash_column(row, 14)?,
        hash: hash_column(row, 15)?,
    })
}

pub(super) fn hash_column(row: &PgRow, index: usize) -> sqlx::Result<[u8; 32]> {
    let bytes: Vec<u8> = row.try_get(index)?;
    bytes.try_into().map_err(|_| sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source: "a hash is 32 bytes".into(),
    })
}
