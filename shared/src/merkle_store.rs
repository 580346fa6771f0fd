//! The Merkle tree's tiles in PostgreSQL (`migrations/0004_merkle_tree.sql`):
//! extending the tree over the events the log holds beyond it, and roots and
//! proofs computed from the few tiles they need, read in one statement.

use std::collections::BTreeSet;

use sqlx::{PgConnection, PgPool, Row};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root, tile_slot, Frontier, Hash, MissingTile,
    TileNodes, TileSet, Tiles, Wanted, TILE_HEIGHT, TILE_WIDTH,
};

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("reading or writing the tree: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    MissingTile(#[from] MissingTile),
    #[error("the log has no event at position {0}, below its head")]
    Gap(i64),
    #[error("a stored hash is not 32 bytes (position {0})")]
    BadHash(i64),
}

/// The tiles `wanted`, in one statement (absent ones are simply absent).
pub async fn read_tiles(
    conn: &mut PgConnection,
    wanted: &BTreeSet<(u8, u64)>,
) -> Result<Tiles, TreeError> {
    let mut tiles = Tiles::default();
    if wanted.is_empty() {
        return Ok(tiles);
    }
    let levels: Vec<i16> = wanted.iter().map(|(l, _)| i16::from(*l)).collect();
    let ns: Vec<i64> = wanted.iter().map(|(_, n)| *n as i64).collect();
    let rows = sqlx::query(
        "SELECT t.level, t.n, t.hashes FROM merkle_tiles t \
         JOIN unnest($1::int2[], $2::int8[]) AS w(level, n) ON (t.level, t.n) = (w.level, w.n)",
    )
    .bind(&levels)
    .bind(&ns)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let (level, n, bytes): (i16, i64, Vec<u8>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let hashes = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("chunks of 32"))
            .collect();
        tiles.0.insert((level as u8, n as u64), hashes);
    }
    Ok(tiles)
}

/// Tiles as proofs at a given tree size see them, kept in memory. A tile
/// `(level, index)` seen at tree size S holds the `width` hashes S gives it
/// (256 for a full tile), and those never change: hashes are only ever
/// appended to a tile. So entries are never stale; the cache is bounded in
/// bytes, 16 shards, and drops entries at random when a shard is full.
pub struct TileCache {
    shards: Vec<Mutex<Shard>>,
    max_shard_bytes: usize,
}

#[derive(Default)]
struct Shard {
    tiles: HashMap<(u8, u64, u16), Arc<TileNodes>>,
    bytes: usize,
}

const SHARDS: usize = 16;

impl TileCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_shard_bytes: max_bytes / SHARDS,
        }
    }

    fn shard(&self, key: &(u8, u64, u16)) -> std::sync::MutexGuard<'_, Shard> {
        let i = (key.1 as usize ^ ((key.0 as usize) << 3) ^ key.2 as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &(u8, u64, u16)) -> Option<Arc<TileNodes>> {
        self.shard(key).tiles.get(key).cloned()
    }

    fn put(&self, key: (u8, u64, u16), tile: Arc<TileNodes>) {
        let bytes = tile.bytes();
        if bytes > self.max_shard_bytes {
            return;
        }
        let mut shard = self.shard(&key);
        while shard.bytes + bytes > self.max_shard_bytes {
            let Some(victim) = shard.tiles.keys().next().copied() else {
                break;
            };
            let gone = shard.tiles.remove(&victim).map_or(0, |t| t.bytes());
            shard.bytes -= gone;
        }
        if let Some(old) = shard.tiles.insert(key, tile) {
            shard.bytes -= old.bytes();
        }
        shard.bytes += bytes;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).bytes)
            .sum()
    }

    /// The tiles `wanted` for proofs in the tree of `size` leaves: from
    /// memory, the missing ones read in one statement (a connection is
    /// taken from `pool` only then).
    pub async fn tiles(
        &self,
        pool: &PgPool,
        wanted: &BTreeSet<(u8, u64)>,
        size: u64,
    ) -> Result<TileSet, TreeError> {
        let mut set = TileSet::default();
        let mut missing = BTreeSet::new();
        for &(level, n) in wanted {
            let Some(width) = tile_width(level, n, size) else {
                continue;
            };
            match self.get(&(level, n, width)) {
                Some(tile) => {
                    set.0.insert((level, n), tile);
                }
                None => {
                    missing.insert((level, n));
                }
            }
        }
        if missing.is_empty() {
            return Ok(set);
        }
        let mut conn = pool.acquire().await?;
        let read = read_tiles(&mut conn, &missing).await?;
        for ((level, n), mut hashes) in read.0 {
            let Some(width) = tile_width(level, n, size) else {
                continue;
            };
            if hashes.len() < usize::from(width) {
                continue;
            }
            hashes.truncate(usize::from(width));
            let tile = Arc::new(TileNodes::new(hashes));
            self.put((level, n, width), tile.clone());
            set.0.insert((level, n), tile);
        }
        Ok(set)
    }
}

/// How many hashes tile `(level, n)` holds in the tree of `size` leaves
/// (`None` when it holds none).
pub fn tile_width(level: u8, n: u64, size: u64) -> Option<u16> {
    let nodes = size.checked_shr(u32::from(level) * u32::from(TILE_HEIGHT))?;
    let width = nodes
        .checked_sub(n.checked_mul(TILE_WIDTH)?)?
        .min(TILE_WIDTH);
    (width > 0).then_some(width as u16)
}

/// The size of the stored tree.
pub async fn size(conn: &mut PgConnection) -> Result<u64, TreeError> {
    let size: i64 = sqlx::query_scalar("SELECT size FROM merkle_tree")
        .fetch_one(conn)
        .await?;
    Ok(size as u64)
}

/// The root of the tree of `size` leaves (at most the stored size).
pub async fn root_at(conn: &mut PgConnection, size: u64) -> Result<Hash, TreeError> {
    let mut wanted = Wanted::default();
    let _ = root(&mut wanted, size);
    let mut tiles = read_tiles(conn, &wanted.0).await?;
    Ok(root(&mut tiles, size)?)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves.
pub async fn prove_inclusion(
    conn: &mut PgConnection,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError> {
    let mut wanted = Wanted::default();
    let _ = inclusion_proof(&mut wanted, index, size);
    let mut tiles = read_tiles(conn, &wanted.0).await?;
    Ok(inclusion_proof(&mut tiles, index, size)?)
}

/// The consistency proof between the trees of `old` and `new` leaves.
pub async fn prove_consistency(
    conn: &mut PgConnection,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, TreeError> {
    let mut wanted = Wanted::default();
    let _ = consistency_proof(&mut wanted, old, new);
    let mut tiles = read_tiles(conn, &wanted.0).await?;
    Ok(consistency_proof(&mut tiles, old, new)?)
}

/// Extends the stored tree over up to `limit` events beyond it, in one
/// transaction with the new size (a crash leaves the tree as it was); one
/// writer at a time (the size row is locked). Answers the new size.
pub async fn extend(pool: &PgPool, limit: i64) -> Result<u64, TreeError> {
    Ok(extend_counted(pool, limit).await?.0)
}

/// Extends the stored tree batch after batch (each as [`extend`]) until
/// it holds every event the log has; answers its size.
pub async fn catch_up(pool: &PgPool, batch: i64) -> Result<u64, TreeError> {
    loop {
        let (size, added) = extend_counted(pool, batch).await?;
        if added < batch as u64 {
            return Ok(size);
        }
    }
}

/// [`extend`], answering the new size and how many leaves it added.
async fn extend_counted(pool: &PgPool, limit: i64) -> Result<(u64, u64), TreeError> {
    let mut tx = pool.begin().await?;
    let size: i64 = sqlx::query_scalar("SELECT size FROM merkle_tree FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    let events = sqlx::query(
        "SELECT position, hash FROM events WHERE position > $1 ORDER BY position LIMIT $2",
    )
    .bind(size)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if events.is_empty() {
        return Ok((size as u64, 0));
    }
    // The tree's edge, and the partial tile of each stored level that the
    // new nodes continue.
    let size = size as u64;
    let mut wanted = Wanted::default();
    let _ = Frontier::of(&mut wanted, size);
    for tile_level in 0..64 / TILE_HEIGHT {
        let next = size >> (u32::from(tile_level) * u32::from(TILE_HEIGHT));
        if next % TILE_WIDTH != 0 {
            wanted.0.insert((tile_level, next / TILE_WIDTH));
        }
    }
    let mut tiles = read_tiles(&mut tx, &wanted.0).await?;
    let mut frontier = Frontier::of(&mut tiles, size)?;
    let mut changed = BTreeSet::new();
    for row in events {
        let position: i64 = row.try_get(0)?;
        if position as u64 != frontier.size() + 1 {
            return Err(TreeError::Gap(frontier.size() as i64 + 1));
        }
        let hash: Vec<u8> = row.try_get(1)?;
        if hash.len() != 32 {
            return Err(TreeError::BadHash(position));
        }
        let completed = frontier.push(leaf_hash(&hash));
        for &(level, index, _) in &completed {
            if let Some((tile_level, n, _)) = tile_slot(level, index) {
                changed.insert((tile_level, n));
            }
        }
        tiles.record(&completed);
    }
    let (mut levels, mut ns, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for (tile_level, n) in changed {
        levels.push(i16::from(tile_level));
        ns.push(n as i64);
        bytes.push(tiles.0[&(tile_level, n)].concat());
    }
    sqlx::query(
        "INSERT INTO merkle_tiles (level, n, hashes) \
         SELECT * FROM unnest($1::int2[], $2::int8[], $3::bytea[]) \
         ON CONFLICT (level, n) DO UPDATE SET hashes = EXCLUDED.hashes",
    )
    .bind(&levels)
    .bind(&ns)
    .bind(&bytes)
    .execute(&mut *tx)
    .await?;
    let new_size = frontier.size();
    sqlx::query("UPDATE merkle_tree SET size = $1")
        .bind(new_size as i64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((new_size, new_size - size))
}
