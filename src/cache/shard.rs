//! One shard: a hash table of slot indices over a slab of entries threaded on an intrusive
//! doubly linked list, most recently used at the head. Everything here runs under the
//! shard's mutex, so plain fields suffice.
//!
//! The slab is split by temperature. A hit reads its entry (key, value, deadline: 32 bytes
//! for `u64 → u64`, two to a cache line) and relinks three list nodes; the links live in an
//! array of their own, 8 bytes a node, which stays in cache where the entries would not.
//! What only some caches need (the TTL deadline behind an idle deadline, weights) lives in
//! side arrays that are empty otherwise.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use super::EvictionCause;

const NIL: u32 = u32::MAX;
/// Deadline meaning "never".
pub(crate) const NEVER: u64 = u64::MAX;

pub(crate) struct Slot<K, V> {
    entry: Option<(K, V)>,
    /// Nanoseconds since the cache's origin from which the entry is expired: the earlier of
    /// its TTL deadline and its idle deadline.
    deadline: u64,
}

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    /// Next toward the LRU end; in a free slot, the next free slot.
    next: u32,
}

/// Counters kept under the shard lock, so they cost no atomic operation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ShardStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evicted_size: u64,
    pub expired: u64,
    pub removed: u64,
    pub replaced: u64,
}

impl std::ops::AddAssign for ShardStats {
    fn add_assign(&mut self, other: Self) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.inserts += other.inserts;
        self.evicted_size += other.evicted_size;
        self.expired += other.expired;
        self.removed += other.removed;
        self.replaced += other.replaced;
    }
}

/// Reads the clock at most once per operation, and only when a deadline needs it.
pub(crate) struct LazyNow<'a> {
    read: &'a dyn Fn() -> u64,
    value: Option<u64>,
}

impl<'a> LazyNow<'a> {
    pub(crate) fn new(read: &'a dyn Fn() -> u64) -> Self {
        Self { read, value: None }
    }

    pub(crate) fn get(&mut self) -> u64 {
        *self.value.get_or_insert_with(|| (self.read)())
    }
}

/// Entries leaving the cache, handed to the eviction listener after the lock is released.
pub(crate) type Evicted<K, V> = Vec<(K, V, EvictionCause)>;

pub(crate) struct Shard<K, V> {
    table: HashTable<u32>,
    slots: Vec<Slot<K, V>>,
    links: Vec<Link>,
    /// TTL deadlines by slot, kept only with time-to-idle (the idle deadline moves, the TTL
    /// deadline must be remembered behind it).
    ttl_deadlines: Vec<u64>,
    /// Weights by slot, kept only with a weigher (else every entry weighs 1).
    weights: Vec<u64>,
    tti: bool,
    weighted: bool,
    free: u32,
    head: u32,
    tail: u32,
    len: usize,
    weight: u64,
    pub(crate) max_entries: usize,
    pub(crate) max_weight: u64,
    pub(crate) stats: ShardStats,
    /// Whether evicted entries are collected for a listener (else they are dropped).
    collect: bool,
}

/// What `get` found.
pub(crate) enum Lookup<V> {
    Hit(V),
    Miss,
}

impl<K: Hash + Eq, V: Clone> Shard<K, V> {
    pub(crate) fn new(
        max_entries: usize,
        max_weight: u64,
        collect: bool,
        tti: bool,
        weighted: bool,
    ) -> Self {
        // Sized for the capacity up front (capped, so a huge capacity does not allocate
        // before it is used).
        let reserve = max_entries.min(1 << 16);
        Self {
            table: HashTable::with_capacity(reserve),
            slots: Vec::with_capacity(reserve),
            links: Vec::with_capacity(reserve),
            ttl_deadlines: Vec::new(),
            weights: Vec::new(),
            tti,
            weighted,
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            weight: 0,
            max_entries,
            max_weight,
            stats: ShardStats::default(),
            collect,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    fn key_of(&self, i: u32) -> Option<&K> {
        self.slots
            .get(i as usize)
            .and_then(|s| s.entry.as_ref())
            .map(|(k, _)| k)
    }

    fn find<Q>(&self, hash: u64, key: &Q) -> Option<u32>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.table
            .find(hash, |&i| self.key_of(i).is_some_and(|k| k.borrow() == key))
            .copied()
    }

    fn unlink(&mut self, i: u32) {
        let Link { prev, next } = self.links[i as usize];
        match prev {
            NIL => self.head = next,
            p => self.links[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.links[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old_head = self.head;
        self.links[i as usize] = Link {
            prev: NIL,
            next: old_head,
        };
        match old_head {
            NIL => self.tail = i,
            h => self.links[h as usize].prev = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// Takes slot `i` out of the table, the list and the slab, returning its entry.
    fn take<S: BuildHasher>(&mut self, i: u32, hasher: &S) -> Option<(K, V)> {
        let hash = hasher.hash_one(self.key_of(i)?);
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        self.unlink(i);
        if self.weighted {
            let w = std::mem::take(&mut self.weights[i as usize]);
            self.weight = self.weight.saturating_sub(w);
        }
        let entry = self.slots[i as usize].entry.take();
        self.links[i as usize] = Link {
            prev: NIL,
            next: self.free,
        };
        self.free = i;
        self.len -= 1;
        entry
    }

    fn record(&self, evicted: &mut Evicted<K, V>, entry: Option<(K, V)>, cause: EvictionCause) {
        if self.collect
            && let Some((k, v)) = entry
        {
            evicted.push((k, v, cause));
        }
    }

    fn expired(&self, i: u32, now: &mut LazyNow<'_>) -> bool {
        let deadline = self.slots[i as usize].deadline;
        deadline != NEVER && now.get() >= deadline
    }

    /// Looks `key` up; a hit moves it to the front (and renews its idle deadline), an
    /// expired entry is removed and counts as a miss.
    pub(crate) fn get<Q, S>(
        &mut self,
        hash: u64,
        key: &Q,
        tti: Option<u64>,
        now: &mut LazyNow<'_>,
        hasher: &S,
        evicted: &mut Evicted<K, V>,
    ) -> Lookup<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
        S: BuildHasher,
    {
        let Some(i) = self.find(hash, key) else {
            self.stats.misses += 1;
            return Lookup::Miss;
        };
        if self.expired(i, now) {
            let entry = self.take(i, hasher);
            self.stats.expired += 1;
            self.stats.misses += 1;
            self.record(evicted, entry, EvictionCause::Expired);
            return Lookup::Miss;
        }
        if let Some(tti) = tti {
            let ttl_deadline = self.ttl_deadlines.get(i as usize).copied().unwrap_or(NEVER);
            self.slots[i as usize].deadline = ttl_deadline.min(now.get().saturating_add(tti));
        }
        self.touch(i);
        self.stats.hits += 1;
        match &self.slots[i as usize].entry {
            Some((_, v)) => Lookup::Hit(v.clone()),
            None => Lookup::Miss,
        }
    }

    /// The value without promotion or statistics; expired entries are not returned (nor
    /// removed: a peek changes nothing).
    pub(crate) fn peek<Q>(&self, hash: u64, key: &Q, now: &mut LazyNow<'_>) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let i = self.find(hash, key)?;
        if self.expired(i, now) {
            return None;
        }
        self.slots[i as usize]
            .entry
            .as_ref()
            .map(|(_, v)| v.clone())
    }

    /// Inserts or replaces, then evicts from the LRU end until the shard fits.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert<S: BuildHasher>(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u64,
        ttl_deadline: u64,
        idle_deadline: u64,
        hasher: &S,
        now: &mut LazyNow<'_>,
        evicted: &mut Evicted<K, V>,
    ) {
        self.stats.inserts += 1;
        let deadline = ttl_deadline.min(idle_deadline);
        if let Some(i) = self.find(hash, &key) {
            let old = self.slots[i as usize].entry.replace((key, value));
            self.slots[i as usize].deadline = deadline;
            self.set_side(i, ttl_deadline, weight);
            self.stats.replaced += 1;
            self.record(evicted, old, EvictionCause::Replaced);
            self.touch(i);
        } else {
            let slot = Slot {
                entry: Some((key, value)),
                deadline,
            };
            let unlinked = Link {
                prev: NIL,
                next: NIL,
            };
            let i = match self.free {
                NIL => {
                    // A shard never holds more than u32::MAX - 1 slots: capacities are
                    // validated against that.
                    let i = u32::try_from(self.slots.len()).unwrap_or(NIL - 1);
                    self.slots.push(slot);
                    self.links.push(unlinked);
                    if self.tti {
                        self.ttl_deadlines.push(NEVER);
                    }
                    if self.weighted {
                        self.weights.push(0);
                    }
                    i
                }
                f => {
                    self.free = self.links[f as usize].next;
                    self.slots[f as usize] = slot;
                    f
                }
            };
            self.set_side(i, ttl_deadline, weight);
            let slots = &self.slots;
            self.table.insert_unique(hash, i, |&j| {
                slots[j as usize]
                    .entry
                    .as_ref()
                    .map_or(0, |(k, _)| hasher.hash_one(k))
            });
            self.push_front(i);
            self.len += 1;
        }
        self.evict_to_fit(hasher, now, evicted);
    }

    /// Records slot `i`'s TTL deadline and weight where this shard keeps them, and adjusts
    /// the total weight.
    fn set_side(&mut self, i: u32, ttl_deadline: u64, weight: u64) {
        if self.tti {
            self.ttl_deadlines[i as usize] = ttl_deadline;
        }
        if self.weighted {
            let old = std::mem::replace(&mut self.weights[i as usize], weight);
            self.weight = self.weight.saturating_sub(old).saturating_add(weight);
        }
    }

    fn evict_to_fit<S: BuildHasher>(
        &mut self,
        hasher: &S,
        now: &mut LazyNow<'_>,
        evicted: &mut Evicted<K, V>,
    ) {
        while (self.len > self.max_entries || (self.weighted && self.weight > self.max_weight))
            && self.tail != NIL
        {
            let victim = self.tail;
            let cause = if self.expired(victim, now) {
                self.stats.expired += 1;
                EvictionCause::Expired
            } else {
                self.stats.evicted_size += 1;
                EvictionCause::Size
            };
            let entry = self.take(victim, hasher);
            self.record(evicted, entry, cause);
        }
    }

    pub(crate) fn remove<Q, S>(
        &mut self,
        hash: u64,
        key: &Q,
        hasher: &S,
        now: &mut LazyNow<'_>,
        evicted: &mut Evicted<K, V>,
    ) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
        S: BuildHasher,
    {
        let i = self.find(hash, key)?;
        if self.expired(i, now) {
            let entry = self.take(i, hasher);
            self.stats.expired += 1;
            self.record(evicted, entry, EvictionCause::Expired);
            return None;
        }
        let (k, v) = self.take(i, hasher)?;
        self.stats.removed += 1;
        if self.collect {
            evicted.push((k, v.clone(), EvictionCause::Explicit));
        }
        Some(v)
    }

    /// Removes every entry for which `keep` is false (cause `Explicit`) and every expired
    /// one (cause `Expired`); returns how many expired.
    pub(crate) fn retain<S, F>(
        &mut self,
        mut keep: F,
        hasher: &S,
        now: &mut LazyNow<'_>,
        evicted: &mut Evicted<K, V>,
    ) -> usize
    where
        S: BuildHasher,
        F: FnMut(&K, &V) -> bool,
    {
        let mut expired = 0;
        let mut i = self.tail;
        while i != NIL {
            let prev = self.links[i as usize].prev;
            let cause = if self.expired(i, now) {
                Some(EvictionCause::Expired)
            } else {
                match &self.slots[i as usize].entry {
                    Some((k, v)) if !keep(k, v) => Some(EvictionCause::Explicit),
                    _ => None,
                }
            };
            if let Some(cause) = cause {
                let entry = self.take(i, hasher);
                match cause {
                    EvictionCause::Expired => {
                        self.stats.expired += 1;
                        expired += 1;
                    }
                    _ => self.stats.removed += 1,
                }
                self.record(evicted, entry, cause);
            }
            i = prev;
        }
        expired
    }

    /// Live entries from least to most recently used.
    pub(crate) fn entries_lru(&self, now: &mut LazyNow<'_>) -> Vec<(K, V)>
    where
        K: Clone,
    {
        let mut out = Vec::with_capacity(self.len);
        let mut i = self.tail;
        while i != NIL {
            let slot = &self.slots[i as usize];
            if !self.expired(i, now)
                && let Some((k, v)) = &slot.entry
            {
                out.push((k.clone(), v.clone()));
            }
            i = self.links[i as usize].prev;
        }
        out
    }
}
