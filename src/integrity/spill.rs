//! Sorting `(key, row)` pairs under a memory bound: what the `unique` check and the id-subset
//! check use to compare every value of a column with every other without holding them all.
//!
//! Each value becomes a fixed 128-bit key, so a column of long strings costs the same as a
//! column of integers. Integers are their own key (exact). Any other value is keyed by a
//! 128-bit XXH3 hash of its bytes, seeded at random per check, so no file can be built in
//! advance to collide: for `n` distinct values the chance that any two share a key is below
//! `n² / 2¹²⁹` (10⁻²¹ at a billion values). A collision can only make two different values
//! look equal — never the reverse — so the `unique` check cannot miss a duplicate because of
//! hashing.
//!
//! Pairs are gathered in memory up to the limit, then sorted and written to an anonymous
//! temporary file (a sorted run, removed by the OS when closed, even after a crash); the runs
//! are merged at the end. Memory stays under the limit whatever the row count; the disk holds
//! 24 bytes per value.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{self, BufReader, BufWriter, Read, Write};

/// One value's key and the row it came from. Ordered by key, then row, so the first row of a
/// key comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Keyed {
    hi: u64,
    lo: u64,
    /// The row the value is at, counted from the start of the table.
    pub(crate) row: u64,
}

const ENTRY_BYTES: usize = 24;

impl Keyed {
    pub(crate) fn new(key: u128, row: u64) -> Self {
        Self {
            hi: (key >> 64) as u64,
            lo: key as u64,
            row,
        }
    }

    /// The 128-bit key.
    pub(crate) fn key(&self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }

    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.hi.to_le_bytes())?;
        w.write_all(&self.lo.to_le_bytes())?;
        w.write_all(&self.row.to_le_bytes())
    }

    /// The next entry of a run, `None` at its end; a run cut inside an entry is an error.
    fn read_from(r: &mut impl Read) -> io::Result<Option<Self>> {
        let mut buf = [0u8; ENTRY_BYTES];
        match super::read_up_to(r, &mut buf)? {
            0 => return Ok(None),
            ENTRY_BYTES => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a sorted run ends inside an entry",
                ));
            }
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Ok(Some(Self {
            hi: word(0),
            lo: word(1),
            row: word(2),
        }))
    }
}

/// A seeded 128-bit hash for values that are not integers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHasher {
    seed: u64,
}

impl KeyHasher {
    /// A hasher with a fresh random seed.
    pub(crate) fn random() -> Self {
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x9e37_79b9_u64),
        }
    }

    pub(crate) fn key(&self, bytes: &[u8]) -> u128 {
        twox_hash::XxHash3_128::oneshot_with_seed(self.seed, bytes)
    }
}

/// Gathers `(key, row)` pairs and hands them back sorted, holding at most about `limit`
/// bytes of them in memory.
#[derive(Debug)]
pub(crate) struct SpillSort {
    buf: Vec<Keyed>,
    cap: usize,
    limit: usize,
    runs: Vec<File>,
    len: u64,
}

/// The fewest pairs held before a spill, whatever the limit: runs of fewer would cost more in
/// file handles than they save.
const MIN_ENTRIES: usize = 4096;

impl SpillSort {
    /// A sorter that spills once its pairs would take more than `limit` bytes. A growing
    /// vector briefly holds its old and new buffers, so a run holds `limit / 36` pairs.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap: (limit / (ENTRY_BYTES * 3 / 2)).max(MIN_ENTRIES),
            limit,
            runs: Vec::new(),
            len: 0,
        }
    }

    /// How many pairs were pushed.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// How many sorted runs went to disk so far.
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    pub(crate) fn push(&mut self, key: u128, row: u64) -> io::Result<()> {
        if self.buf.len() == self.cap {
            self.spill()?;
        }
        if self.buf.len() == self.buf.capacity() {
            // Grow by doubling but never past the cap, so a run is never reallocated above it.
            let want = (self.buf.capacity() * 2).clamp(1024, self.cap);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.push(Keyed::new(key, row));
        self.len += 1;
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.buf.sort_unstable();
        let mut w = BufWriter::with_capacity(1 << 16, tempfile::tempfile()?);
        for e in &self.buf {
            e.write_to(&mut w)?;
        }
        let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
        self.runs.push(file);
        self.buf.clear();
        Ok(())
    }

    /// Every pair, in order of key then row.
    pub(crate) fn into_sorted(mut self) -> io::Result<Sorted> {
        if self.runs.is_empty() {
            self.buf.sort_unstable();
            return Ok(Sorted::Memory(self.buf.into_iter()));
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        self.buf = Vec::new();
        // The read buffers share the limit; each gets at least 4 KiB so a merge of many runs
        // still reads in blocks.
        let each = (self.limit / self.runs.len()).clamp(4096, 1 << 20);
        let mut readers = Vec::with_capacity(self.runs.len());
        let mut heap = BinaryHeap::with_capacity(self.runs.len());
        for (i, mut file) in self.runs.into_iter().enumerate() {
            io::Seek::rewind(&mut file)?;
            let mut r = BufReader::with_capacity(each, file);
            if let Some(e) = Keyed::read_from(&mut r)? {
                heap.push(Reverse((e, i)));
            }
            readers.push(r);
        }
        Ok(Sorted::Merge { readers, heap })
    }
}

/// The pairs of a [`SpillSort`], in order.
#[derive(Debug)]
pub(crate) enum Sorted {
    /// Everything fitted in memory.
    Memory(std::vec::IntoIter<Keyed>),
    /// A merge of the sorted runs on disk.
    Merge {
        readers: Vec<BufReader<File>>,
        heap: BinaryHeap<Reverse<(Keyed, usize)>>,
    },
}

impl Iterator for Sorted {
    type Item = io::Result<Keyed>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Memory(it) => it.next().map(Ok),
            Sorted::Merge { readers, heap } => {
                let Reverse((e, i)) = heap.pop()?;
                match readers.get_mut(i).map(Keyed::read_from) {
                    Some(Ok(Some(next))) => heap.push(Reverse((next, i))),
                    Some(Ok(None)) | None => {}
                    Some(Err(err)) => {
                        heap.clear();
                        return Some(Err(err));
                    }
                }
                Some(Ok(e))
            }
        }
    }
}

/// The first `n` items by row, of a stream seen in any order.
#[derive(Debug)]
pub(crate) struct FirstRows<T: Ord> {
    n: usize,
    heap: BinaryHeap<T>,
}

impl<T: Ord> FirstRows<T> {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            n,
            heap: BinaryHeap::new(),
        }
    }

    /// Offers an item; `T`'s order must put the row first.
    pub(crate) fn offer(&mut self, item: T) {
        if self.heap.len() < self.n {
            self.heap.push(item);
        } else if let Some(mut top) = self.heap.peek_mut()
            && item < *top
        {
            *top = item;
        }
    }

    /// The kept items, smallest first.
    pub(crate) fn into_sorted(self) -> Vec<T> {
        self.heap.into_sorted_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: SpillSort) -> Vec<Keyed> {
        s.into_sorted()
            .unwrap()
            .collect::<io::Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn spilled_and_in_memory_sorts_agree() {
        let keys: Vec<u128> = (0..50_000u64)
            .map(|i| u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 20_000) << 70 | 7)
            .collect();
        let mut small = SpillSort::new(0);
        let mut big = SpillSort::new(1 << 30);
        for (row, k) in keys.iter().enumerate() {
            small.push(*k, row as u64).unwrap();
            big.push(*k, row as u64).unwrap();
        }
        assert!(small.runs() >= 12, "{} runs", small.runs());
        assert_eq!(big.runs(), 0);
        let (a, b) = (drain(small), drain(big));
        assert_eq!(a.len(), 50_000);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(a[0].key() & 0xff, 7);
    }

    #[test]
    fn first_rows_keeps_the_smallest() {
        let mut f = FirstRows::new(3);
        for r in [9u64, 4, 7, 1, 8, 2] {
            f.offer(r);
        }
        assert_eq!(f.into_sorted(), vec![1, 2, 4]);
    }
}
