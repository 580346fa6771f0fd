//! The Merkle tree over the event log, in the manner of Certificate
//! Transparency (RFC 9162 §2.1): leaf hash = SHA-256(0x00 ‖ leaf), node hash
//! = SHA-256(0x01 ‖ left ‖ right), the tree of size n covering leaves
//! 0..n. Leaf i is the 32 raw bytes of the `hash` of the event at position
//! i + 1, so a leaf commits to the event and to everything before it.
//!
//! Pure: proofs are built from the hashes of *complete* subtrees (the
//! subtree of height h whose leaves are `[i·2^h, (i+1)·2^h)`), asked of a
//! [`Subtrees`] source, which is how tiles store them; the partial subtrees
//! of the tree's right edge are combined here. Verification follows
//! RFC 9162 §2.1.3.2 and §2.1.4.2 and needs nothing but the proof.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// SHA-256(0x00 ‖ leaf).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Where the hashes of complete subtrees come from (memory, tiles).
pub trait Subtrees {
    type Error;

    /// The hash of the complete subtree of height `level` whose leaves are
    /// `[index·2^level, (index+1)·2^level)`; level 0 is a leaf hash.
    fn complete(&mut self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// The largest power of two below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of the leaves `[start, end)`, `start` a multiple of the largest power
/// of two not above `end - start` (true of every subtree the proofs visit).
pub fn subtree_hash<S: Subtrees>(source: &mut S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let width = end - start;
    if width == 0 {
        return Ok(empty_root());
    }
    if width.is_power_of_two() {
        let level = width.trailing_zeros() as u8;
        return source.complete(level, start >> level);
    }
    let k = split(width);
    let left = subtree_hash(source, start, start + k)?;
    let right = subtree_hash(source, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of the tree of size `size`.
pub fn root<S: Subtrees>(source: &mut S, size: u64) -> Result<Hash, S::Error> {
    subtree_hash(source, 0, size)
}

/// The inclusion proof (RFC 9162 PATH) of leaf `index` in the tree of size
/// `size`, the sibling nearest the leaf first. `index < size`.
pub fn inclusion_proof<S: Subtrees>(
    source: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    debug_assert!(index < size);
    let mut proof = Vec::new();
    let (mut start, mut end) = (0, size);
    // Walk down from the root, collecting siblings; reversed at the end.
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            proof.push(subtree_hash(source, start + k, end)?);
            end = start + k;
        } else {
            proof.push(subtree_hash(source, start, start + k)?);
            start += k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The consistency proof (RFC 9162 PROOF) between the trees of sizes
/// `old` and `new`, `0 < old ≤ new`.
pub fn consistency_proof<S: Subtrees>(
    source: &mut S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, S::Error> {
    debug_assert!(0 < old && old <= new);
    let mut proof = Vec::new();
    let (mut start, mut end, mut m) = (0, new, old);
    let mut whole = true;
    // SUBPROOF(m, D[start:end], whole), unrolled from the root down.
    while m != end - start {
        let k = split(end - start);
        if m <= k {
            proof.push(subtree_hash(source, start + k, end)?);
            end = start + k;
        } else {
            proof.push(subtree_hash(source, start, start + k)?);
            start += k;
            m -= k;
            whole = false;
        }
    }
    if !whole {
        proof.push(subtree_hash(source, start, end)?);
    }
    proof.reverse();
    Ok(proof)
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the position is outside the tree")]
    OutOfRange,
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof leads to another root")]
    RootMismatch,
}

/// Verifies an inclusion proof of `leaf_hash` at `index` in the tree of
/// size `size` with root `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange);
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies a consistency proof between the tree of size `old` with root
/// `old_root` and the tree of size `new` with root `new_root` (RFC 9162
/// §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::OutOfRange);
    }
    if old == new {
        return if proof.is_empty() {
            if old_root == new_root {
                Ok(())
            } else {
                Err(ProofError::RootMismatch)
            }
        } else {
            Err(ProofError::WrongLength)
        };
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if old.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// The right edge of a tree: the roots of its complete subtrees, one per
/// set bit of its size, largest first (RFC 9162's "compact range" of
/// `[0, size)`). Enough to append leaves and to know the root, and tells
/// which complete subtrees each appended leaf completes (what a store of
/// subtrees must write).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)` of each complete subtree of the edge, largest first.
    edge: Vec<(u8, Hash)>,
}

impl Frontier {
    /// The edge of a tree of `size` leaves, from a source of its subtrees.
    pub fn of<S: Subtrees>(source: &mut S, size: u64) -> Result<Self, S::Error> {
        let mut edge = Vec::new();
        let mut start = 0;
        for level in (0..64u8).rev() {
            if size & (1 << level) != 0 {
                edge.push((level, source.complete(level, start >> level)?));
                start += 1 << level;
            }
        }
        Ok(Self { size, edge })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash; answers every complete subtree it completes,
    /// as `(level, index, hash)`, the leaf itself first.
    pub fn push(&mut self, leaf_hash: Hash) -> Vec<(u8, u64, Hash)> {
        let mut completed = Vec::with_capacity(2);
        self.push_with(leaf_hash, |level, index, hash| {
            completed.push((level, index, hash));
        });
        completed
    }

    /// Appends one leaf hash, telling `completed` of every complete subtree
    /// it completes as [`Frontier::push`] answers them, without allocating.
    pub fn push_with(&mut self, leaf_hash: Hash, mut completed: impl FnMut(u8, u64, Hash)) {
        completed(0, self.size, leaf_hash);
        let mut hash = leaf_hash;
        let mut level = 0u8;
        while let Some(&(top, left)) = self.edge.last() {
            if top != level {
                break;
            }
            self.edge.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            completed(level, self.size >> level, hash);
        }
        self.edge.push((level, hash));
        self.size += 1;
    }

    /// The root of the tree (the empty tree's for size 0).
    pub fn root(&self) -> Hash {
        let mut edge = self.edge.iter().rev();
        let Some(&(_, mut hash)) = edge.next() else {
            return empty_root();
        };
        for (_, left) in edge {
            hash = node_hash(left, &hash);
        }
        hash
    }
}

/// Height of a tile (C2SP `tlog-tiles`): a tile holds 2^8 = 256 hashes of
/// one stored level; the levels between are computed from them.
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// Where a stored node goes: nodes of levels 0, 8, 16, … are stored, node
/// `index` of level `8·L` at offset `index mod 256` of tile `(L, index div
/// 256)`. Answers `None` for the levels that are not stored.
pub fn tile_slot(level: u8, index: u64) -> Option<(u8, u64, usize)> {
    (level % TILE_HEIGHT == 0).then_some((
        level / TILE_HEIGHT,
        index / TILE_WIDTH,
        (index % TILE_WIDTH) as usize,
    ))
}

/// Tiles held in memory (as read from a store): `(tile level, index)` to
/// the hashes the tile holds so far (a partial tile holds fewer than 256).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tiles(pub std::collections::HashMap<(u8, u64), Vec<Hash>>);

/// A subtree whose tile was not given (or is too short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tile {level}/{index} is missing or short")]
pub struct MissingTile {
    pub level: u8,
    pub index: u64,
}

impl Tiles {
    /// The tile and the span of its hashes that a complete subtree needs.
    pub fn span_of(level: u8, index: u64) -> ((u8, u64), std::ops::Range<usize>) {
        let stored = level - level % TILE_HEIGHT;
        let rise = level - stored;
        let first = index << rise;
        let offset = (first % TILE_WIDTH) as usize;
        (
            (stored / TILE_HEIGHT, first / TILE_WIDTH),
            offset..offset + (1usize << rise),
        )
    }

    /// Stores the nodes a [`Frontier::push`] completed (those of the
    /// stored levels), as the tiles of a store would take them.
    pub fn record(&mut self, completed: &[(u8, u64, Hash)]) {
        for &(level, index, hash) in completed {
            if let Some((tile_level, tile_index, offset)) = tile_slot(level, index) {
                let tile = self.0.entry((tile_level, tile_index)).or_default();
                debug_assert_eq!(tile.len(), offset, "nodes arrive in order");
                tile.push(hash);
            }
        }
    }
}

impl Subtrees for Tiles {
    type Error = MissingTile;

    fn complete(&mut self, level: u8, index: u64) -> Result<Hash, MissingTile> {
        let ((tile_level, tile_index), span) = Self::span_of(level, index);
        let missing = MissingTile {
            level: tile_level,
            index: tile_index,
        };
        let hashes = self
            .0
            .get(&(tile_level, tile_index))
            .and_then(|t| t.get(span))
            .ok_or(missing)?;
        let mut layer = hashes.to_vec();
        while layer.len() > 1 {
            layer = layer
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(layer[0])
    }
}

/// One tile with every node above its hashes computed once (255 more for
/// a full tile), so that a complete subtree inside it is a lookup: what a
/// cache of tiles keeps, for proofs at memory speed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileNodes {
    /// `levels[0]` the tile's hashes; `levels[k]` the nodes `k` levels up.
    levels: Vec<Vec<Hash>>,
}

impl TileNodes {
    pub fn new(hashes: Vec<Hash>) -> Self {
        let mut levels = vec![hashes];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above = below
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    /// The tile's own hashes.
    pub fn hashes(&self) -> &[Hash] {
        &self.levels[0]
    }

    /// Bytes held, for a cache's bound.
    pub fn bytes(&self) -> usize {
        self.levels.iter().map(|l| l.len() * 32).sum::<usize>() + 64
    }
}

/// Tiles with their nodes (see [`TileNodes`]), by `(tile level, index)`.
#[derive(Debug, Clone, Default)]
pub struct TileSet(pub std::collections::HashMap<(u8, u64), std::sync::Arc<TileNodes>>);

impl Subtrees for TileSet {
    type Error = MissingTile;

    fn complete(&mut self, level: u8, index: u64) -> Result<Hash, MissingTile> {
        let ((tile_level, tile_index), span) = Tiles::span_of(level, index);
        let rise = (level % TILE_HEIGHT) as usize;
        self.0
            .get(&(tile_level, tile_index))
            .and_then(|t| t.levels.get(rise))
            .and_then(|nodes| nodes.get(span.start >> rise))
            .copied()
            .ok_or(MissingTile {
                level: tile_level,
                index: tile_index,
            })
    }
}

/// Records which complete subtrees a computation asks for, answering a
/// placeholder: run a proof against it first to learn which tiles to read
/// (then read them all in one statement).
#[derive(Debug, Default)]
pub struct Wanted(pub std::collections::BTreeSet<(u8, u64)>);

impl Subtrees for Wanted {
    type Error = std::convert::Infallible;

    fn complete(&mut self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        self.0.insert(Tiles::span_of(level, index).0);
        Ok([0; 32])
    }
}

/// Every complete subtree of some leaf hashes, level by level, held in
/// memory (tests, small logs, rebuilding stored subtrees).
pub struct InMemory {
    /// `levels[h][i]`: the complete subtree of height h at index i.
    levels: Vec<Vec<Hash>>,
}

impl InMemory {
    pub fn new(leaf_hashes: &[Hash]) -> Self {
        let mut levels = vec![leaf_hashes.to_vec()];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above = below
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            levels.push(above);
        }
        Self { levels }
    }
}

impl Subtrees for InMemory {
    type Error = std::convert::Infallible;

    fn complete(&mut self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        Ok(self.levels[usize::from(level)][index as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An independent reference: the RFC 9162 §2.1 definitions written out
    // recursively over the leaves themselves (MTH, PATH, PROOF), sharing
    // nothing with the code above but the two hash functions.
    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => Sha256::digest([]).into(),
            1 => d[0],
            n => {
                let k = reference_split(n);
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    fn reference_split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
        if d.len() <= 1 {
            return Vec::new();
        }
        let k = reference_split(d.len());
        if m < k {
            let mut p = path(m, &d[..k]);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = path(m - k, &d[k..]);
            p.push(mth(&d[..k]));
            p
        }
    }

    fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { Vec::new() } else { vec![mth(d)] };
        }
        let k = reference_split(n);
        if m <= k {
            let mut p = subproof(m, &d[..k], b);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = subproof(m - k, &d[k..], false);
            p.push(mth(&d[..k]));
            p
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&Sha256::digest(i.to_be_bytes())))
            .collect()
    }

    #[test]
    fn the_empty_tree_and_a_leaf_follow_the_rfc() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962 test vector: the leaf of the empty string.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn roots_and_proofs_equal_the_reference_for_every_size_and_pair() {
        let all = leaves(200);
        for n in 1..=all.len() {
            let d = &all[..n];
            let mut source = InMemory::new(d);
            let root_n = root(&mut source, n as u64).unwrap();
            assert_eq!(root_n, mth(d), "root of {n}");
            for m in 0..n {
                let proof = inclusion_proof(&mut source, m as u64, n as u64).unwrap();
                assert_eq!(proof, path(m, d), "inclusion of {m} in {n}");
                assert_eq!(
                    verify_inclusion(m as u64, n as u64, &d[m], &proof, &root_n),
                    Ok(())
                );
            }
            for m in 1..=n {
                let proof = consistency_proof(&mut source, m as u64, n as u64).unwrap();
                assert_eq!(proof, subproof(m, d, true), "consistency {m}..{n}");
                assert_eq!(
                    verify_consistency(m as u64, n as u64, &mth(&d[..m]), &root_n, &proof),
                    Ok(())
                );
            }
        }
    }

    #[test]
    fn the_frontier_grows_the_tree_and_names_each_completed_subtree() {
        let all = leaves(300);
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        let mut stored = std::collections::HashMap::new();
        for (i, leaf) in all.iter().enumerate() {
            for (level, index, hash) in frontier.push(*leaf) {
                assert!(
                    stored.insert((level, index), hash).is_none(),
                    "written once"
                );
            }
            let n = i + 1;
            assert_eq!(frontier.root(), mth(&all[..n]), "root of {n}");
            let mut source = InMemory::new(&all[..n]);
            assert_eq!(Frontier::of(&mut source, n as u64).unwrap(), frontier);
        }
        // Every complete subtree was told exactly once, with its hash.
        let mut source = InMemory::new(&all);
        for (&(level, index), hash) in &stored {
            assert_eq!(source.complete(level, index).unwrap(), *hash);
        }
        assert_eq!(stored.len(), 300 + 150 + 75 + 37 + 18 + 9 + 4 + 2 + 1);
    }

    #[test]
    fn tiles_with_their_nodes_answer_as_the_tiles_do() {
        let leaves: Vec<Hash> = (0..1000u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut frontier = Frontier::default();
        let mut tiles = Tiles::default();
        for leaf in &leaves {
            tiles.record(&frontier.push(*leaf));
        }
        let mut set = TileSet(
            tiles
                .0
                .iter()
                .map(|(k, v)| (*k, std::sync::Arc::new(TileNodes::new(v.clone()))))
                .collect(),
        );
        for size in [1, 255, 256, 257, 700, 1000] {
            assert_eq!(root(&mut set, size), root(&mut tiles, size));
            for index in [0, size / 2, size - 1] {
                assert_eq!(
                    inclusion_proof(&mut set, index, size),
                    inclusion_proof(&mut tiles, index, size)
                );
            }
            assert_eq!(
                consistency_proof(&mut set, size / 3 + 1, size),
                consistency_proof(&mut tiles, size / 3 + 1, size)
            );
        }
        assert!(root(&mut TileSet::default(), 5).is_err());
    }

    #[test]
    fn tiles_written_as_the_tree_grows_answer_every_proof() {
        // Past 2^16 leaves, so that tiles of three levels exist.
        let all = leaves(70_000);
        let mut frontier = Frontier::default();
        let mut tiles = Tiles::default();
        for leaf in &all {
            tiles.record(&frontier.push(*leaf));
        }
        assert_eq!(tiles.0[&(0, 0)].len(), 256);
        assert_eq!(
            tiles.0[&(1, 0)].len(),
            256,
            "level 8: 256 subtrees of 256 leaves"
        );
        assert_eq!(
            tiles.0[&(2, 0)].len(),
            1,
            "level 16: the first 65 536 leaves"
        );
        let mut memory = InMemory::new(&all);
        for (size, index) in [
            (1u64, 0u64),
            (255, 17),
            (256, 255),
            (257, 256),
            (65_536, 40_000),
            (70_000, 69_999),
            (69_999, 5),
        ] {
            assert_eq!(
                root(&mut tiles, size),
                root(&mut memory, size).map_err(|e| match e {})
            );
            let proof = inclusion_proof(&mut tiles, index, size).unwrap();
            assert_eq!(proof, inclusion_proof(&mut memory, index, size).unwrap());
            // The tiles a proof reads are known before reading them.
            let mut wanted = Wanted::default();
            inclusion_proof(&mut wanted, index, size).unwrap();
            let mut only = Tiles(
                tiles
                    .0
                    .iter()
                    .filter(|(k, _)| wanted.0.contains(k))
                    .map(|(k, v)| (*k, v.clone()))
                    .collect(),
            );
            assert_eq!(inclusion_proof(&mut only, index, size).unwrap(), proof);
            assert!(wanted.0.len() <= 6, "{size}: {} tiles", wanted.0.len());
        }
        for (old, new) in [(1u64, 70_000u64), (256, 65_537), (40_000, 69_999)] {
            assert_eq!(
                consistency_proof(&mut tiles, old, new).unwrap(),
                consistency_proof(&mut memory, old, new).unwrap()
            );
        }
        let mut partial = tiles.clone();
        partial.0.remove(&(0, 273));
        assert_eq!(
            inclusion_proof(&mut partial, 69_999, 70_000),
            Err(MissingTile {
                level: 0,
                index: 273
            })
        );
    }

    #[test]
    fn a_changed_leaf_a_wrong_root_or_a_short_proof_fail() {
        let d = leaves(77);
        let mut source = InMemory::new(&d);
        let root_77 = root(&mut source, 77).unwrap();
        let proof = inclusion_proof(&mut source, 40, 77).unwrap();
        let other = leaf_hash(b"forged");
        assert_eq!(
            verify_inclusion(40, 77, &other, &proof, &root_77),
            Err(ProofError::RootMismatch)
        );
        assert_eq!(
            verify_inclusion(40, 77, &d[40], &proof[1..], &root_77),
            Err(ProofError::WrongLength)
        );
        assert_eq!(
            verify_inclusion(77, 77, &d[40], &proof, &root_77),
            Err(ProofError::OutOfRange)
        );
        let root_50 = root(&mut source, 50).unwrap();
        let proof = consistency_proof(&mut source, 50, 77).unwrap();
        assert_eq!(
            verify_consistency(50, 77, &root_50, &root_77, &proof),
            Ok(())
        );
        // A forked history: the same old size with another root.
        let mut forked = d.clone();
        forked[10] = other;
        let forked_root = root(&mut InMemory::new(&forked), 50).unwrap();
        assert_eq!(
            verify_consistency(50, 77, &forked_root, &root_77, &proof),
            Err(ProofError::RootMismatch)
        );
        assert!(verify_consistency(50, 77, &root_50, &root_77, &proof[1..]).is_err());
    }
}
