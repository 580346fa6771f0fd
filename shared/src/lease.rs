//! Leadership by a PostgreSQL session advisory lock: of the processes that
//! run a loop which must run once (the outbox publisher, the checkpointer,
//! the projector), the one holding the lock leads and the others stand by.
//! The lock lives as long as the leader's connection: a leader that dies,
//! however abruptly, closes it, and PostgreSQL releases the lock at once.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};

/// How often a leader proves that its connection, and so its lock, lives.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// The lock `key`, held on a connection of its own while this is kept.
/// Dropping it closes the connection, which releases the lock.
pub struct Lease {
    conn: PgConnection,
    key: i64,
    checked: Instant,
}

impl Lease {
    /// Takes the lock `key` if no other session holds it.
    pub async fn try_take(pool: &PgPool, key: i64) -> sqlx::Result<Option<Self>> {
        let mut conn = pool.acquire().await?.detach();
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        Ok(won.then(|| Self {
            conn,
            key,
            checked: Instant::now(),
        }))
    }

    /// Whether the lock is still held: the connection answers (checked at
    /// most every [`RENEW_EVERY`]; a lost connection lost the lock, and
    /// another process may lead by now).
    pub async fn held(&mut self) -> bool {
        if self.checked.elapsed() < RENEW_EVERY {
            return true;
        }
        let alive = tokio::time::timeout(RENEW_EVERY, self.conn.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if alive {
            self.checked = Instant::now();
        } else {
            tracing::warn!(
                key = format!("{:#x}", self.key),
                "the connection holding the lead was lost: standing down"
            );
        }
        alive
    }

    /// Gives the lead up now (rather than when the connection is dropped).
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}
