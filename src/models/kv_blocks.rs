//! A paged key/value cache: every sequence's keys and values live in fixed-size blocks of
//! [`BLOCK_TOKENS`] positions drawn from one pool, found through the sequence's block table.
//! Blocks are reference-counted: a beam-search hypothesis that branches, or a prompt prefix that
//! several sequences share, holds the same blocks, and a shared block is copied only when one
//! holder writes into it (copy on write). A decode step writes its new keys and values in place:
//! nothing already cached is copied.
//!
//! The bookkeeping ([`BlockAllocator`], [`BlockTable`]) knows block ids only, not where blocks
//! live, so that the same tables drive a CPU store ([`CpuBlocks`], here) and a GPU one (a device
//! buffer indexed by block id, with a kernel reading the block tables). Block contents, per block:
//! `[layer][key | value][slot][kv_width]`, f32.

use std::sync::{Arc, Mutex, MutexGuard};

/// Positions per block.
pub const BLOCK_TOKENS: usize = 16;
/// Blocks per storage chunk on the CPU (the store grows a chunk at a time and never moves one).
const CHUNK_BLOCKS: usize = 64;

/// Reference counts of block ids; freed ids are reused first.
#[derive(Debug, Default)]
pub struct BlockAllocator {
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl BlockAllocator {
    /// A block with one reference (a new id when none is free).
    pub fn allocate(&mut self) -> u32 {
        match self.free.pop() {
            Some(id) => {
                self.refs[id as usize] = 1;
                id
            }
            None => {
                self.refs.push(1);
                (self.refs.len() - 1) as u32
            }
        }
    }

    pub fn retain(&mut self, id: u32) {
        debug_assert!(self.refs[id as usize] > 0, "retain of free block {id}");
        self.refs[id as usize] += 1;
    }

    /// Drops one reference; the block is free when none is left.
    pub fn release(&mut self, id: u32) {
        let count = &mut self.refs[id as usize];
        debug_assert!(*count > 0, "release of free block {id}");
        *count -= 1;
        if *count == 0 {
            self.free.push(id);
        }
    }

    pub fn refs(&self, id: u32) -> u32 {
        self.refs[id as usize]
    }

    /// Ids ever handed out (the store's size in blocks).
    pub fn capacity(&self) -> usize {
        self.refs.len()
    }

    /// Blocks in use.
    pub fn in_use(&self) -> usize {
        self.refs.len() - self.free.len()
    }
}

/// A block the store must copy before a sequence can write into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyBlock {
    pub from: u32,
    pub to: u32,
}

/// One sequence's blocks, in position order, and how many positions it holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<u32>,
    len: usize,
}

impl BlockTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// (block, slot) of position `pos`.
    pub fn slot(&self, pos: usize) -> (u32, usize) {
        (self.blocks[pos / BLOCK_TOKENS], pos % BLOCK_TOKENS)
    }

    /// Makes room for `n` more positions: new blocks as needed, and the partly filled last block
    /// made private if it is shared (the returned copy must happen before anything is written).
    /// The table's length grows by `n`.
    pub fn grow(&mut self, n: usize, alloc: &mut BlockAllocator) -> Option<CopyBlock> {
        let mut copy = None;
        if n > 0 && !self.len.is_multiple_of(BLOCK_TOKENS) {
            let last = self.blocks.last_mut().expect("a partly filled block");
            if alloc.refs(*last) > 1 {
                let to = alloc.allocate();
                alloc.release(*last);
                copy = Some(CopyBlock { from: *last, to });
                *last = to;
            }
        }
        self.len += n;
        while self.blocks.len() * BLOCK_TOKENS < self.len {
            self.blocks.push(alloc.allocate());
        }
        copy
    }

    /// A second holder of the same blocks (a beam branching, a shared prefix).
    pub fn fork(&self, alloc: &mut BlockAllocator) -> BlockTable {
        for &id in &self.blocks {
            alloc.retain(id);
        }
        self.clone()
    }

    /// A new table that starts with this one's first `len` positions (a cached prompt prefix):
    /// whole blocks shared, a partial last one shared until written (copy on write).
    pub fn prefix(&self, len: usize, alloc: &mut BlockAllocator) -> BlockTable {
        let len = len.min(self.len);
        let blocks = self.blocks[..len.div_ceil(BLOCK_TOKENS)].to_vec();
        for &id in &blocks {
            alloc.retain(id);
        }
        BlockTable { blocks, len }
    }

    /// Gives every block back.
    pub fn release(&mut self, alloc: &mut BlockAllocator) {
        for id in self.blocks.drain(..) {
            alloc.release(id);
        }
        self.len = 0;
    }
}

/// Block contents in host memory: chunks of [`CHUNK_BLOCKS`] blocks, allocated as ids grow.
pub struct CpuBlocks {
    /// f32 values per block: layers x 2 x BLOCK_TOKENS x kv_width.
    block_len: usize,
    layers: usize,
    kv_width: usize,
    chunks: Vec<Box<[f32]>>,
}

impl CpuBlocks {
    pub fn new(layers: usize, kv_width: usize) -> Self {
        CpuBlocks {
            block_len: layers * 2 * BLOCK_TOKENS * kv_width,
            layers,
            kv_width,
            chunks: Vec::new(),
        }
    }

    /// Storage for blocks 0..count.
    pub fn ensure(&mut self, count: usize) {
        while self.chunks.len() * CHUNK_BLOCKS < count {
            self.chunks
                .push(vec![0f32; CHUNK_BLOCKS * self.block_len].into_boxed_slice());
        }
    }

    fn block(&self, id: u32) -> &[f32] {
        let (chunk, at) = (id as usize / CHUNK_BLOCKS, id as usize % CHUNK_BLOCKS);
        &self.chunks[chunk][at * self.block_len..(at + 1) * self.block_len]
    }

    fn block_mut(&mut self, id: u32) -> &mut [f32] {
        let (chunk, at) = (id as usize / CHUNK_BLOCKS, id as usize % CHUNK_BLOCKS);
        &mut self.chunks[chunk][at * self.block_len..(at + 1) * self.block_len]
    }

    pub fn copy(&mut self, copy: CopyBlock) {
        let from = self.block(copy.from).to_vec();
        self.block_mut(copy.to).copy_from_slice(&from);
    }

    /// Keys (`value` false) or values of `layer` in block `id`: [BLOCK_TOKENS, kv_width].
    pub fn part(&self, id: u32, layer: usize, value: bool) -> &[f32] {
        let len = BLOCK_TOKENS * self.kv_width;
        let start = (layer * 2 + value as usize) * len;
        &self.block(id)[start..start + len]
    }

    /// Writes one position's key and value rows of `layer`.
    pub fn write(&mut self, (id, slot): (u32, usize), layer: usize, key: &[f32], value: &[f32]) {
        debug_assert!(layer < self.layers);
        let (w, len) = (self.kv_width, BLOCK_TOKENS * self.kv_width);
        let block = self.block_mut(id);
        let k = layer * 2 * len + slot * w;
        block[k..k + w].copy_from_slice(key);
        let v = (layer * 2 + 1) * len + slot * w;
        block[v..v + w].copy_from_slice(value);
    }
}

/// The allocator and the store of one model, shared by its sequences' caches.
pub struct KvPool {
    pub alloc: BlockAllocator,
    pub store: CpuBlocks,
}

/// A sequence's handle on the pool: its block table. Cloning forks the table (shares the
/// blocks); dropping releases them.
pub struct PagedCache {
    pool: Arc<Mutex<KvPool>>,
    table: BlockTable,
}

impl PagedCache {
    pub fn new(pool: Arc<Mutex<KvPool>>) -> Self {
        PagedCache {
            pool,
            table: BlockTable::default(),
        }
    }

    pub fn table(&self) -> &BlockTable {
        &self.table
    }

    pub fn table_mut(&mut self) -> &mut BlockTable {
        &mut self.table
    }

    pub fn pool(&self) -> &Arc<Mutex<KvPool>> {
        &self.pool
    }
}

/// The pool, even if a panicking step poisoned its lock (the tables stay consistent: every
/// change is a single call that cannot panic half-way through the bookkeeping).
pub fn lock(pool: &Mutex<KvPool>) -> MutexGuard<'_, KvPool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

impl Clone for PagedCache {
    fn clone(&self) -> Self {
        let table = self.table.fork(&mut lock(&self.pool).alloc);
        PagedCache {
            pool: self.pool.clone(),
            table,
        }
    }
}

impl Drop for PagedCache {
    fn drop(&mut self) {
        self.table.release(&mut lock(&self.pool).alloc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_grow_in_whole_blocks() {
        let mut alloc = BlockAllocator::default();
        let mut table = BlockTable::default();
        assert_eq!(table.grow(1, &mut alloc), None);
        assert_eq!(table.blocks().len(), 1);
        assert_eq!(table.grow(BLOCK_TOKENS - 1, &mut alloc), None);
        assert_eq!(table.blocks().len(), 1);
        table.grow(1, &mut alloc);
        assert_eq!((table.len(), table.blocks().len()), (BLOCK_TOKENS + 1, 2));
        assert_eq!(table.slot(BLOCK_TOKENS), (table.blocks()[1], 0));
        table.grow(3 * BLOCK_TOKENS, &mut alloc);
        assert_eq!(table.blocks().len(), 5);
        assert_eq!(alloc.in_use(), 5);
        table.release(&mut alloc);
        assert_eq!(alloc.in_use(), 0);
        // Freed ids are reused before the store grows.
        let mut again = BlockTable::default();
        again.grow(2 * BLOCK_TOKENS, &mut alloc);
        assert_eq!(alloc.capacity(), 5);
    }

    #[test]
    fn forks_share_blocks_and_copy_the_partial_one_on_write() {
        let mut alloc = BlockAllocator::default();
        let mut parent = BlockTable::default();
        parent.grow(BLOCK_TOKENS + 3, &mut alloc);
        let mut child = parent.fork(&mut alloc);
        assert!(parent.blocks().iter().all(|&b| alloc.refs(b) == 2));
        // The child writes position BLOCK_TOKENS + 3: its last block is shared → copied.
        let copy = child.grow(1, &mut alloc).expect("copy on write");
        assert_eq!(copy.from, parent.blocks()[1]);
        assert_eq!(copy.to, child.blocks()[1]);
        assert_ne!(child.blocks()[1], parent.blocks()[1]);
        assert_eq!(child.blocks()[0], parent.blocks()[0]);
        assert_eq!(alloc.refs(parent.blocks()[0]), 2);
        assert_eq!(alloc.refs(parent.blocks()[1]), 1);
        // Now private: the parent writes its own last block without a copy.
        assert_eq!(parent.grow(1, &mut alloc), None);
        // A fork at a block boundary never copies: the next write starts a new block.
        let mut whole = BlockTable::default();
        whole.grow(BLOCK_TOKENS, &mut alloc);
        let mut whole_child = whole.fork(&mut alloc);
        assert_eq!(whole_child.grow(1, &mut alloc), None);
        for mut t in [parent, child, whole, whole_child] {
            t.release(&mut alloc);
        }
        assert_eq!(alloc.in_use(), 0);
    }

    #[test]
    fn prefixes_share_whole_blocks() {
        let mut alloc = BlockAllocator::default();
        let mut prompt = BlockTable::default();
        prompt.grow(2 * BLOCK_TOKENS + 5, &mut alloc);
        let mut other = prompt.prefix(BLOCK_TOKENS + 2, &mut alloc);
        assert_eq!(other.len(), BLOCK_TOKENS + 2);
        assert_eq!(other.blocks(), &prompt.blocks()[..2]);
        // Writing past the shared prefix copies the partial block first.
        assert!(other.grow(1, &mut alloc).is_some());
        assert_eq!(alloc.refs(prompt.blocks()[0]), 2);
        assert_eq!(alloc.refs(prompt.blocks()[1]), 1);
        other.release(&mut alloc);
        prompt.release(&mut alloc);
        assert_eq!(alloc.in_use(), 0);
    }

    #[test]
    fn caches_release_on_drop_and_clone_shares() {
        let pool = Arc::new(Mutex::new(KvPool {
            alloc: BlockAllocator::default(),
            store: CpuBlocks::new(2, 4),
        }));
        let mut cache = PagedCache::new(pool.clone());
        {
            let mut p = lock(&pool);
            let KvPool { alloc, store } = &mut *p;
            cache.table_mut().grow(3, alloc);
            store.ensure(alloc.capacity());
            let slot = cache.table().slot(2);
            store.write(slot, 1, &[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]);
            let keys = store.part(slot.0, 1, false);
            assert_eq!(&keys[2 * 4..3 * 4], &[1.0, 2.0, 3.0, 4.0]);
            let values = store.part(slot.0, 1, true);
            assert_eq!(&values[2 * 4..3 * 4], &[5.0, 6.0, 7.0, 8.0]);
        }
        let beam = cache.clone();
        assert_eq!(lock(&pool).alloc.refs(cache.table().blocks()[0]), 2);
        drop(cache);
        assert_eq!(lock(&pool).alloc.in_use(), 1);
        drop(beam);
        assert_eq!(lock(&pool).alloc.in_use(), 0);
    }

    #[test]
    fn copies_carry_the_contents() {
        let mut store = CpuBlocks::new(1, 2);
        store.ensure(2);
        store.write((0, 0), 0, &[1.0, 2.0], &[3.0, 4.0]);
        store.copy(CopyBlock { from: 0, to: 1 });
        assert_eq!(&store.part(1, 0, false)[..2], &[1.0, 2.0]);
        assert_eq!(&store.part(1, 0, true)[..2], &[3.0, 4.0]);
    }
}
