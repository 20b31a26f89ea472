//! The crate's one table from a series key (name parts and label pairs, borrowed) to what
//! is kept per series (a metric handle, a history series id): found under a read lock with
//! no allocation, so a hot path pays a hash and a compare; keys are copied once, on first
//! sight.

use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::HashTable;
use parking_lot::RwLock;

/// A borrowed series key: `parts` (`[name]` for a metric, `[component, metric]` for the
/// history) and `labels`, in the caller's order (two orders are two series).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesKey<'a> {
    pub(crate) parts: &'a [&'a str],
    pub(crate) labels: &'a [(&'a str, &'a str)],
}

struct Entry<V> {
    hash: u64,
    parts: Box<[Box<str>]>,
    labels: Box<[(Box<str>, Box<str>)]>,
    value: V,
}

impl<V> Entry<V> {
    fn is(&self, key: &SeriesKey<'_>) -> bool {
        self.parts.len() == key.parts.len()
            && self.labels.len() == key.labels.len()
            && self.parts.iter().zip(key.parts).all(|(a, b)| &**a == *b)
            && self
                .labels
                .iter()
                .zip(key.labels)
                .all(|((ek, ev), (k, v))| &**ek == *k && &**ev == *v)
    }
}

/// See the [module docs](self).
pub(crate) struct SeriesTable<V> {
    hasher: hashbrown::DefaultHashBuilder,
    table: RwLock<HashTable<Entry<V>>>,
}

impl<V> Default for SeriesTable<V> {
    fn default() -> Self {
        Self {
            hasher: hashbrown::DefaultHashBuilder::default(),
            table: RwLock::new(HashTable::new()),
        }
    }
}

impl<V> SeriesTable<V> {
    /// The hash of `key` in this table.
    pub(crate) fn hash(&self, key: &SeriesKey<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        key.parts.len().hash(&mut h);
        for p in key.parts {
            p.hash(&mut h);
        }
        for (k, v) in key.labels {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        h.finish()
    }

    /// Runs `f` on the value of `key` under the read lock (no reference-count traffic);
    /// `None` when the key is not in the table.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        hash: u64,
        key: &SeriesKey<'_>,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R> {
        let table = self.table.read();
        table.find(hash, |e| e.is(key)).map(|e| f(&e.value))
    }

    /// The value of `key`, inserting what `make()` gives unless another thread inserted it
    /// first (then `make` is not called); `f` runs on the value under the write lock.
    /// `None` when `make` gave nothing (a cap reached): nothing is inserted.
    pub(crate) fn insert_with<R>(
        &self,
        hash: u64,
        key: &SeriesKey<'_>,
        make: impl FnOnce() -> Option<V>,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R> {
        let mut table = self.table.write();
        if let Some(e) = table.find(hash, |e| e.is(key)) {
            return Some(f(&e.value));
        }
        let value = make()?;
        let entry = table.insert_unique(
            hash,
            Entry {
                hash,
                parts: key.parts.iter().map(|p| Box::from(*p)).collect(),
                labels: key
                    .labels
                    .iter()
                    .map(|(k, v)| (Box::from(*k), Box::from(*v)))
                    .collect(),
                value,
            },
            |e| e.hash,
        );
        Some(f(&entry.get().value))
    }

    /// How many series the table holds.
    pub(crate) fn len(&self) -> usize {
        self.table.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_parts_labels_and_label_order() {
        let t: SeriesTable<u32> = SeriesTable::default();
        let keys = [
            SeriesKey {
                parts: &["a", "b"],
                labels: &[],
            },
            SeriesKey {
                parts: &["ab"],
                labels: &[],
            },
            SeriesKey {
                parts: &["a", "b"],
                labels: &[("k", "v")],
            },
            SeriesKey {
                parts: &["a", "b"],
                labels: &[("k", "v"), ("j", "w")],
            },
            SeriesKey {
                parts: &["a", "b"],
                labels: &[("j", "w"), ("k", "v")],
            },
        ];
        for (i, k) in keys.iter().enumerate() {
            let h = t.hash(k);
            assert_eq!(
                t.insert_with(h, k, || Some(i as u32), |v| *v),
                Some(i as u32)
            );
        }
        assert_eq!(t.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.with(t.hash(k), k, |v| *v), Some(i as u32));
            // A second insert finds the first value and does not call `make`.
            assert_eq!(
                t.insert_with(t.hash(k), k, || unreachable!(), |v| *v),
                Some(i as u32)
            );
        }
        let capped = SeriesKey {
            parts: &["capped"],
            labels: &[],
        };
        assert_eq!(
            t.insert_with(t.hash(&capped), &capped, || None, |v| *v),
            None
        );
        assert_eq!(t.len(), keys.len());
        let absent = SeriesKey {
            parts: &["a"],
            labels: &[("b", "")],
        };
        assert_eq!(t.with(t.hash(&absent), &absent, |v| *v), None);
    }
}
