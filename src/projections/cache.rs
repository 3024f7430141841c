//! The live runner's bounded cache of customer states.
//!
//! A server must not hold every customer's state (a million customers'
//! states are gigabytes), and need not: live batches touch few customers,
//! and a customer's state is in `customer_state`, written back with every
//! batch that changed it. So the cache is write-through: every entry is
//! clean once its batch commits, and eviction is just forgetting. Its
//! budget is `[projections] state_cache_mb`; entries are evicted least
//! recently used first, measured by the size of their stored form times a
//! factor for the decoded structures.

use std::collections::{HashMap, VecDeque};

use super::state::CustomerState;
use crate::domain::CustomerId;

/// Decoded states take about this many times their stored bytes (vectors,
/// strings and map entries), plus [`ENTRY_OVERHEAD`].
const DECODED_FACTOR: usize = 3;
/// Bytes per entry besides the state (key, map slot, LRU queue entry).
const ENTRY_OVERHEAD: usize = std::mem::size_of::<CustomerState>() + 96;

struct Entry {
    state: CustomerState,
    bytes: usize,
    /// The entry's latest position in the LRU queue.
    stamp: u64,
}

/// Customer states, most recently used kept, within a byte budget.
pub struct StateCache {
    budget: usize,
    used: usize,
    entries: HashMap<CustomerId, Entry>,
    /// (stamp, customer): the oldest first; stale pairs (the entry was used
    /// again since) are skipped when evicting and compacted away.
    queue: VecDeque<(u64, CustomerId)>,
    next_stamp: u64,
    hits: u64,
    misses: u64,
}

impl StateCache {
    /// An empty cache holding about `budget_bytes` of states.
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget: budget_bytes,
            used: 0,
            entries: HashMap::new(),
            queue: VecDeque::new(),
            next_stamp: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// The estimated memory of a state whose stored form has `stored_len` bytes.
    pub fn cost(stored_len: usize) -> usize {
        stored_len * DECODED_FACTOR + ENTRY_OVERHEAD
    }

    fn touch(&mut self, customer: &CustomerId) {
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        if let Some(entry) = self.entries.get_mut(customer) {
            entry.stamp = stamp;
            self.queue.push_back((stamp, customer.clone()));
        }
        if self.queue.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.queue
                .retain(|(stamp, c)| entries.get(c).is_some_and(|e| e.stamp == *stamp));
        }
    }

    /// Whether the customer's state is cached.
    pub fn contains(&self, customer: &CustomerId) -> bool {
        self.entries.contains_key(customer)
    }

    /// The cached state, marking it used.
    pub fn get_mut(&mut self, customer: &CustomerId) -> Option<&mut CustomerState> {
        if self.entries.contains_key(customer) {
            self.hits += 1;
            self.touch(customer);
            self.entries.get_mut(customer).map(|e| &mut e.state)
        } else {
            self.misses += 1;
            None
        }
    }

    /// Stores a state (replacing any) with its stored size; call
    /// [`StateCache::shrink`] after a batch to get back within the budget.
    pub fn put(&mut self, customer: CustomerId, state: CustomerState, stored_len: usize) {
        let bytes = Self::cost(stored_len);
        if let Some(old) = self.entries.insert(
            customer.clone(),
            Entry {
                state,
                bytes,
                stamp: 0,
            },
        ) {
            self.used -= old.bytes;
        }
        self.used += bytes;
        self.touch(&customer);
    }

    /// Updates the recorded size of an entry after its state changed.
    pub fn resize(&mut self, customer: &CustomerId, stored_len: usize) {
        if let Some(entry) = self.entries.get_mut(customer) {
            let bytes = Self::cost(stored_len);
            self.used = self.used - entry.bytes + bytes;
            entry.bytes = bytes;
        }
    }

    /// Forgets a customer.
    pub fn remove(&mut self, customer: &CustomerId) {
        if let Some(old) = self.entries.remove(customer) {
            self.used -= old.bytes;
        }
    }

    /// Evicts least recently used entries until the cache fits its budget,
    /// keeping the customers `keep` says to keep (a batch in progress).
    pub fn shrink(&mut self, keep: impl Fn(&CustomerId) -> bool) {
        let mut kept = Vec::new();
        while self.used > self.budget {
            let Some((stamp, customer)) = self.queue.pop_front() else {
                break;
            };
            let current = self
                .entries
                .get(&customer)
                .is_some_and(|e| e.stamp == stamp);
            if !current {
                continue;
            }
            if keep(&customer) {
                kept.push((stamp, customer));
                continue;
            }
            self.remove(&customer);
        }
        for entry in kept.into_iter().rev() {
            self.queue.push_front(entry);
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Estimated bytes held.
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    /// Lookups answered from memory and lookups that missed.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> CustomerId {
        CustomerId::parse(&format!("c{n}")).unwrap()
    }

    #[test]
    fn stays_within_budget_and_evicts_the_least_recently_used() {
        let per = StateCache::cost(100);
        let mut cache = StateCache::new(per * 10);
        for n in 0..10 {
            cache.put(id(n), CustomerState::default(), 100);
        }
        // Use customer 0 again: customer 1 is now the oldest.
        assert!(cache.get_mut(&id(0)).is_some());
        cache.put(id(10), CustomerState::default(), 100);
        cache.shrink(|_| false);
        assert_eq!(cache.len(), 10);
        assert!(cache.contains(&id(0)));
        assert!(!cache.contains(&id(1)));
        assert!(cache.used_bytes() <= per * 10);
        for n in 11..1_000 {
            cache.put(id(n), CustomerState::default(), 100);
            cache.shrink(|_| false);
        }
        assert_eq!(cache.len(), 10);
        assert!(cache.queue.len() <= 2 * cache.len() + 64 + 1);
    }

    #[test]
    fn pinned_customers_survive_eviction() {
        let per = StateCache::cost(100);
        let mut cache = StateCache::new(per * 2);
        for n in 0..5 {
            cache.put(id(n), CustomerState::default(), 100);
        }
        cache.shrink(|c| *c == id(0) || *c == id(1) || *c == id(2));
        for n in 0..3 {
            assert!(cache.contains(&id(n)), "c{n} was pinned");
        }
        assert!(!cache.contains(&id(3)) && !cache.contains(&id(4)));
    }
}
