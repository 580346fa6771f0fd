//! What the proof endpoints read, kept in memory: the newest signed
//! checkpoint (read again at most once a second) and the tiles of the
//! Merkle tree with their inner nodes (`shared::merkle_store::TileCache`:
//! a tile seen at a tree size never changes). A proof at the newest
//! checkpoint's size is then computed without a statement.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use shared::merkle::TileSet;
use shared::merkle_store::{TileCache, TreeError};
use sqlx::PgPool;

/// How long the newest checkpoint is taken as the newest.
const CHECKPOINT_TTL: Duration = Duration::from_secs(1);

/// A signed checkpoint: its tree size and its note.
#[derive(Debug)]
pub struct SignedHead {
    pub size: i64,
    pub note: String,
}

pub struct Proofs {
    tiles: TileCache,
    newest: RwLock<(Option<Instant>, Option<Arc<SignedHead>>)>,
    refresh: tokio::sync::Mutex<()>,
}

impl Proofs {
    pub fn new(tile_cache_bytes: usize) -> Self {
        Self {
            tiles: TileCache::new(tile_cache_bytes),
            newest: RwLock::new((None, None)),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<Option<Arc<SignedHead>>> {
        let newest = self.newest.read().unwrap_or_else(|p| p.into_inner());
        match &*newest {
            (Some(read_at), head) if read_at.elapsed() < CHECKPOINT_TTL => Some(head.clone()),
            _ => None,
        }
    }

    /// The newest signed checkpoint, at most a second old; one reader
    /// refreshes it while the others wait for its answer.
    pub async fn newest(&self, pool: &PgPool) -> Result<Option<Arc<SignedHead>>, sqlx::Error> {
        if let Some(head) = self.cached() {
            return Ok(head);
        }
        let _refreshing = self.refresh.lock().await;
        if let Some(head) = self.cached() {
            return Ok(head);
        }
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT size, note FROM checkpoints ORDER BY signed_at DESC, size DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        let head = row.map(|(size, note)| Arc::new(SignedHead { size, note }));
        *self.newest.write().unwrap_or_else(|p| p.into_inner()) =
            (Some(Instant::now()), head.clone());
        metrics::gauge!("query_tile_cache_bytes").set(self.tiles.bytes() as f64);
        Ok(head)
    }

    /// The tiles `wanted` as the tree of `size` leaves has them.
    pub async fn tiles(
        &self,
        pool: &PgPool,
        wanted: &BTreeSet<(u8, u64)>,
        size: u64,
    ) -> Result<TileSet, TreeError> {
        self.tiles.tiles(pool, wanted, size).await
    }
}
