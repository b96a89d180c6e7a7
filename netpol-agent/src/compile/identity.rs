//! Numbers that stay stable from one compilation to the next: pod identities (one per distinct
//! namespace, namespace labels, pod labels and named ports), CIDR identities, endpoint ids and
//! rule ids. The [`super::Compiler`] holds them; nothing outside the room touches them.

use std::{
    borrow::Borrow,
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use crate::model::{selector::Labels, Direction, NamedPort, ObjectRef};

/// What a pod identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    /// Namespace name.
    pub namespace: String,
    /// Namespace labels.
    pub namespace_labels: Labels,
    /// Pod labels.
    pub labels: Labels,
    /// Named container ports.
    pub named_ports: Vec<NamedPort>,
}

/// An identity's parts borrowed from the snapshot: how the compiler groups pods and looks up
/// identity numbers without building (cloning) an [`IdentityKey`] per pod. Orders exactly as
/// [`IdentityKey`] does (same fields, same order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct IdentityParts<'a> {
    pub(super) namespace: &'a str,
    pub(super) namespace_labels: &'a Labels,
    pub(super) labels: &'a Labels,
    pub(super) named_ports: &'a [NamedPort],
}

impl IdentityParts<'_> {
    fn to_key(self) -> IdentityKey {
        IdentityKey {
            namespace: self.namespace.to_string(),
            namespace_labels: self.namespace_labels.clone(),
            labels: self.labels.clone(),
            named_ports: self.named_ports.to_vec(),
        }
    }
}

/// Anything that can show its [`IdentityParts`]: lets a map keyed by `Arc<IdentityKey>` be
/// searched with borrowed parts (`Borrow<dyn AsIdentityParts>`).
trait AsIdentityParts {
    fn parts(&self) -> IdentityParts<'_>;
}

impl AsIdentityParts for IdentityKey {
    fn parts(&self) -> IdentityParts<'_> {
        IdentityParts { namespace: &self.namespace, namespace_labels: &self.namespace_labels, labels: &self.labels, named_ports: &self.named_ports }
    }
}

impl AsIdentityParts for IdentityParts<'_> {
    fn parts(&self) -> IdentityParts<'_> {
        *self
    }
}

impl PartialEq for dyn AsIdentityParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn AsIdentityParts + '_ {}

impl PartialOrd for dyn AsIdentityParts + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn AsIdentityParts + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl<'a> Borrow<dyn AsIdentityParts + 'a> for Arc<IdentityKey> {
    fn borrow(&self) -> &(dyn AsIdentityParts + 'a) {
        &**self
    }
}

/// Pod identity numbers, by what they stand for: stable while a set of pods is there, never
/// reused.
#[derive(Clone, Debug)]
pub(super) struct PodIdentities {
    numbers: BTreeMap<Arc<IdentityKey>, u32>,
    next: u32,
}

impl PodIdentities {
    pub(super) fn new(first: u32) -> Self {
        Self { numbers: BTreeMap::new(), next: first }
    }

    /// The identity number of `parts`, handing out the next one to parts not seen before.
    pub(super) fn number(&mut self, parts: IdentityParts<'_>) -> u32 {
        if let Some(n) = self.numbers.get(&parts as &dyn AsIdentityParts) {
            return *n;
        }
        let n = self.next;
        self.next += 1;
        self.numbers.insert(Arc::new(parts.to_key()), n);
        n
    }

    /// Forgets the identities not in `used`; the rest, by number (shared, not copied).
    pub(super) fn retain(&mut self, used: &BTreeSet<u32>) -> BTreeMap<u32, Arc<IdentityKey>> {
        self.numbers.retain(|_, id| used.contains(id));
        self.numbers.iter().map(|(key, id)| (*id, Arc::clone(key))).collect()
    }
}

/// Hands out numbers for keys, stable while a key is in use, never reused.
#[derive(Clone, Debug)]
pub(super) struct Allocator<K: Ord> {
    next: u32,
    numbers: BTreeMap<K, u32>,
}

impl<K: Ord + Clone> Allocator<K> {
    pub(super) fn new(first: u32) -> Self {
        Self { next: first, numbers: BTreeMap::new() }
    }

    pub(super) fn get(&mut self, key: &K) -> u32 {
        if let Some(n) = self.numbers.get(key) {
            return *n;
        }
        let n = self.next;
        self.next += 1;
        self.numbers.insert(key.clone(), n);
        n
    }

    pub(super) fn retain(&mut self, used: &BTreeSet<K>) {
        self.numbers.retain(|k, _| used.contains(k));
    }

    /// Gives `key` the number `n` (one an earlier agent used), unless the key or the number
    /// has one.
    pub(super) fn seed(&mut self, key: &K, n: u32) {
        if !self.numbers.contains_key(key) && !self.numbers.values().any(|m| *m == n) {
            self.numbers.insert(key.clone(), n);
            self.next = self.next.max(n + 1);
        }
    }
}

/// A rule of a policy: (policy, direction, index in its list).
pub(super) type RuleKey = (ObjectRef, Direction, usize);

/// Rule ids by rule: stable while the rule has entries; ids of rules gone are reused, lowest
/// first, so that ids stay few and dense (the data path counts hits per id).
#[derive(Clone, Debug, Default)]
pub(super) struct RuleIds {
    ids: BTreeMap<RuleKey, u32>,
    free: BTreeSet<u32>,
    next: u32,
}

impl RuleIds {
    pub(super) fn get(&mut self, key: &RuleKey) -> u32 {
        if let Some(n) = self.ids.get(key) {
            return *n;
        }
        let n = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        self.ids.insert(key.clone(), n);
        n
    }

    /// Frees the ids of rules not in `used`.
    pub(super) fn retain(&mut self, used: &BTreeSet<RuleKey>) {
        let free = &mut self.free;
        self.ids.retain(|k, n| used.contains(k) || !free.insert(*n));
    }
}
