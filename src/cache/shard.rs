//! One shard: a hash table of slot indices over a slab of entries. Recency is a stamp in
//! each entry, and the eviction order is found by sorting, not kept in a list.
//!
//! Why not a linked list: relinking a node on every hit writes to its two neighbours, which
//! lie anywhere in memory, and the unlock that follows (a full barrier) waits for those
//! cache misses; a hit then costs about twice a lookup. Here a hit writes the shard's use
//! counter into its own entry, a line the lookup has just read, and nothing else.
//!
//! The order stays exact. Eviction walks `order`, the live slots sorted by stamp at the last
//! sort. An entry used since that sort has a stamp above `sorted_at` and is passed over: it
//! is newer than every entry not used since, and those are in `order` from the oldest. So the
//! first live slot in `order` whose stamp is at most `sorted_at` is the least recently used
//! entry. When `order` runs out, the live slots are sorted again (a radix sort, O(n)). A
//! sort of n entries puts n positions in `order`, and each is used up by one eviction or by
//! passing over one entry that a hit, a replacement or a removal changed since, so sorting
//! costs amortised O(1) per operation; the price is that the insert which finds `order`
//! empty does the whole O(n) at once (README, Performance: the longest insert).
//!
//! What only some caches need (deadlines, the TTL deadline behind an idle deadline, weights)
//! lives in side arrays that stay empty otherwise.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use super::EvictionCause;

/// Deadline meaning "never".
pub(crate) const NEVER: u64 = u64::MAX;

pub(crate) struct Slot<K, V> {
    entry: Option<(K, V)>,
    /// The shard's use counter when the entry was last inserted, replaced or hit.
    stamp: u64,
}

/// Counters kept under the shard lock, so they cost no atomic operation.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct ShardStats {
    /// First: a miss writes it, and it then shares the mutex word's cache line.
    pub misses: u64,
    pub hits: u64,
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

// `repr(C)` with the fields a hit writes first: they share the cache line of the mutex
// word in front of them, so a hit on a shard another core used last moves one line, not
// three.
#[repr(C)]
pub(crate) struct Shard<K, V> {
    /// Uses so far (insertions, replacements, hits); the last one's number is the newest
    /// stamp. Hits are not counted apart: they are `tick` less the insertions.
    tick: u64,
    /// Counters other than hits.
    stats: ShardStats,
    table: HashTable<u32>,
    slots: Vec<Slot<K, V>>,
    /// By slot, nanoseconds since the cache's origin from which the entry is expired: the
    /// earlier of its TTL deadline and its idle deadline. Empty until an entry with a deadline
    /// arrives, so caches without expiry never read it.
    deadlines: Vec<u64>,
    /// TTL deadlines by slot, kept only with time-to-idle (the idle deadline moves, the TTL
    /// deadline must be remembered behind it).
    ttl_deadlines: Vec<u64>,
    /// Weights by slot, kept only with a weigher (else every entry weighs 1).
    weights: Vec<u64>,
    tti: bool,
    weighted: bool,
    /// Slots without an entry, reused before the slab grows.
    free: Vec<u32>,
    /// Live slots by stamp, oldest first, as of the last sort.
    order: Vec<u32>,
    /// The first position in `order` not yet evicted or passed over.
    next: usize,
    /// `tick` at the last sort: a larger stamp means used since.
    sorted_at: u64,
    len: usize,
    weight: u64,
    pub(crate) max_entries: usize,
    pub(crate) max_weight: u64,
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
        Self {
            tick: 0,
            stats: ShardStats::default(),
            // Grown as entries come: sized for the capacity up front, a half-full cache
            // would spread over twice the memory and every lookup would pay in cache misses.
            table: HashTable::new(),
            slots: Vec::new(),
            deadlines: Vec::new(),
            ttl_deadlines: Vec::new(),
            weights: Vec::new(),
            tti,
            weighted,
            free: Vec::new(),
            order: Vec::new(),
            next: 0,
            sorted_at: 0,
            len: 0,
            weight: 0,
            max_entries,
            max_weight,
            collect,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    /// The counters, hits included.
    pub(crate) fn stats(&self) -> ShardStats {
        ShardStats {
            // Every insertion (new key or replacement) uses `tick` once, every hit once.
            hits: self.tick - self.stats.inserts,
            ..self.stats
        }
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

    /// Makes slot `i` the most recently used.
    #[inline]
    fn touch(&mut self, i: u32) {
        self.tick += 1;
        self.slots[i as usize].stamp = self.tick;
    }

    /// Sorts the live slots by stamp into `order`.
    fn sort_by_recency(&mut self) {
        let tick = self.tick;
        // Usually every live entry was used within the last 2^32 uses: then an entry is its
        // age (uses since its last) and its slot in one u64, and the radix sort moves half
        // the bytes it would move for a (stamp, slot) pair.
        let mut packed: Vec<u64> = Vec::with_capacity(self.len);
        let mut fits = true;
        for (i, slot) in (0u32..).zip(&self.slots) {
            if slot.entry.is_some() {
                let age = tick - slot.stamp;
                fits &= age <= u64::from(u32::MAX);
                packed.push((age << 32) | u64::from(i));
            }
        }
        self.order.clear();
        if fits {
            // Oldest first: the largest age first.
            radsort::sort_by_key(&mut packed, |&p| !((p >> 32) as u32));
            self.order.extend(packed.iter().map(|&p| p as u32));
        } else {
            drop(packed);
            let mut by_stamp: Vec<(u64, u32)> = (0u32..)
                .zip(&self.slots)
                .filter(|(_, s)| s.entry.is_some())
                .map(|(i, s)| (s.stamp, i))
                .collect();
            radsort::sort_by_key(&mut by_stamp, |&(stamp, _)| stamp);
            self.order.extend(by_stamp.iter().map(|&(_, i)| i));
        }
        self.next = 0;
        self.sorted_at = tick;
    }

    /// The least recently used live slot, which leaves `order`.
    fn pop_lru(&mut self) -> Option<u32> {
        let mut sorted = false;
        loop {
            while let Some(&i) = self.order.get(self.next) {
                self.next += 1;
                let slot = &self.slots[i as usize];
                if slot.entry.is_some() && slot.stamp <= self.sorted_at {
                    return Some(i);
                }
            }
            // After a sort every live slot is in `order` with a stamp at most `sorted_at`,
            // so the pass after it returns; one sort per call bounds the loop regardless.
            if self.len == 0 || sorted {
                return None;
            }
            self.sort_by_recency();
            sorted = true;
        }
    }

    /// Takes slot `i` out of the table and the slab, returning its entry.
    fn take<S: BuildHasher>(&mut self, i: u32, hasher: &S) -> Option<(K, V)> {
        let hash = hasher.hash_one(self.key_of(i)?);
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        if self.weighted {
            let w = std::mem::take(&mut self.weights[i as usize]);
            self.weight = self.weight.saturating_sub(w);
        }
        let entry = self.slots[i as usize].entry.take();
        self.free.push(i);
        self.len -= 1;
        entry
    }

    fn record(&self, evicted: &mut Evicted<K, V>, entry: Option<(K, V)>, cause: EvictionCause) {
        // Guard-event sinks hear of evictions and expiries too; with none subscribed this is
        // one relaxed load, and entries are dropped here as before.
        if (self.collect || crate::events::enabled())
            && let Some((k, v)) = entry
        {
            evicted.push((k, v, cause));
        }
    }

    fn expired(&self, i: u32, now: &mut LazyNow<'_>) -> bool {
        match self.deadlines.get(i as usize) {
            Some(&deadline) => deadline != NEVER && now.get() >= deadline,
            None => false,
        }
    }

    /// Sets slot `i`'s deadline, creating the deadline array on the first finite one.
    fn set_deadline(&mut self, i: u32, deadline: u64) {
        if self.deadlines.is_empty() {
            if deadline == NEVER {
                return;
            }
            self.deadlines = vec![NEVER; self.slots.len()];
        }
        self.deadlines[i as usize] = deadline;
    }

    /// Looks `key` up; a hit becomes the most recently used (and renews its idle deadline),
    /// an expired entry is removed and counts as a miss.
    #[inline]
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
            self.set_deadline(i, ttl_deadline.min(now.get().saturating_add(tti)));
        }
        self.touch(i);
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

    /// Inserts or replaces, then evicts least recently used entries until the shard fits.
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
            self.set_deadline(i, deadline);
            self.set_side(i, ttl_deadline, weight);
            self.stats.replaced += 1;
            self.record(evicted, old, EvictionCause::Replaced);
            self.touch(i);
        } else {
            let slot = Slot {
                entry: Some((key, value)),
                stamp: 0,
            };
            let i = match self.free.pop() {
                Some(f) => {
                    self.slots[f as usize] = slot;
                    f
                }
                None => {
                    // Capacities are validated so that a shard's slots fit in u32.
                    let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                    self.slots.push(slot);
                    if !self.deadlines.is_empty() {
                        self.deadlines.push(NEVER);
                    }
                    if self.tti {
                        self.ttl_deadlines.push(NEVER);
                    }
                    if self.weighted {
                        self.weights.push(0);
                    }
                    i
                }
            };
            self.set_deadline(i, deadline);
            self.set_side(i, ttl_deadline, weight);
            let slots = &self.slots;
            self.table.insert_unique(hash, i, |&j| {
                slots[j as usize]
                    .entry
                    .as_ref()
                    .map_or(0, |(k, _)| hasher.hash_one(k))
            });
            self.len += 1;
            // A reused slot may still sit in `order` under its old entry; the new stamp is
            // above `sorted_at`, so eviction passes over it there.
            self.touch(i);
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
        while self.len > self.max_entries || (self.weighted && self.weight > self.max_weight) {
            let Some(victim) = self.pop_lru() else { break };
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
    /// one (cause `Expired`), from least to most recently used; returns how many expired.
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
        // One pass in slot order finds what goes; only that is sorted. The sweeper calls
        // this for every shard, and most sweeps remove little.
        let mut going = Vec::new();
        for (i, slot) in (0u32..).zip(&self.slots) {
            let Some((k, v)) = &slot.entry else { continue };
            let cause = if self.expired(i, now) {
                EvictionCause::Expired
            } else if !keep(k, v) {
                EvictionCause::Explicit
            } else {
                continue;
            };
            going.push((slot.stamp, i, cause));
        }
        radsort::sort_by_key(&mut going, |&(stamp, _, _)| stamp);
        let mut expired = 0;
        for (_, i, cause) in going {
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
        expired
    }

    /// Live entries from least to most recently used.
    pub(crate) fn entries_lru(&mut self, now: &mut LazyNow<'_>) -> Vec<(K, V)>
    where
        K: Clone,
    {
        self.sort_by_recency();
        let mut out = Vec::with_capacity(self.len);
        for &i in &self.order {
            if !self.expired(i, now)
                && let Some((k, v)) = &self.slots[i as usize].entry
            {
                out.push((k.clone(), v.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hashbrown::DefaultHashBuilder;

    /// Inserts `key` into `shard`, returning the keys evicted.
    fn put(shard: &mut Shard<u32, u32>, hasher: &DefaultHashBuilder, key: u32) -> Vec<u32> {
        let read = || 0;
        let mut now = LazyNow::new(&read);
        let mut evicted = Vec::new();
        let hash = hasher.hash_one(key);
        shard.insert(
            hash,
            key,
            key,
            0,
            NEVER,
            NEVER,
            hasher,
            &mut now,
            &mut evicted,
        );
        evicted.into_iter().map(|(k, _, _)| k).collect()
    }

    fn hit(shard: &mut Shard<u32, u32>, hasher: &DefaultHashBuilder, key: u32) -> bool {
        let read = || 0;
        let mut now = LazyNow::new(&read);
        let mut evicted = Vec::new();
        let hash = hasher.hash_one(key);
        matches!(
            shard.get(hash, &key, None, &mut now, hasher, &mut evicted),
            Lookup::Hit(_)
        )
    }

    #[test]
    fn entries_unused_for_more_than_2_pow_32_uses_keep_their_order() {
        let hasher = DefaultHashBuilder::default();
        let mut shard = Shard::new(3, u64::MAX, true, false, false);
        assert!(put(&mut shard, &hasher, 1).is_empty());
        // Nearly 2^32 uses pass (of other keys, say), then 2 and 3 come, then a few more
        // uses: entry 1's age now exceeds u32, and cut to 32 bits it would look younger
        // than 2 and 3. The sort must take the (stamp, slot) path.
        shard.tick += (1 << 32) - 10;
        assert!(put(&mut shard, &hasher, 2).is_empty());
        assert!(put(&mut shard, &hasher, 3).is_empty());
        shard.tick += 20;
        assert_eq!(put(&mut shard, &hasher, 4), [1]);
        assert_eq!(put(&mut shard, &hasher, 5), [2]);
        assert!(hit(&mut shard, &hasher, 3));
        assert_eq!(put(&mut shard, &hasher, 6), [4]);
        let read = || 0;
        let mut now = LazyNow::new(&read);
        let order: Vec<u32> = shard
            .entries_lru(&mut now)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(order, [5, 3, 6]);
    }
}
