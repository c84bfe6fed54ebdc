//! A small per-thread memory of tokens whose signature and claims checked out, so a browser that
//! sends the same token on every request costs one byte comparison instead of an HMAC and a JSON
//! parse (Envoy's `jwt_authn` filter keeps such a cache too).
//!
//! Only verified tokens are kept, each whole: a hit compares every byte, in constant time, so
//! neither a look-alike token nor the comparison's timing gets anything out of it. Entries are
//! filed under the identity of the key set that verified them ([`KeySetId`]): a reload builds new
//! key sets, so other secrets never see an entry of the old ones. What is kept does not depend on
//! the clock (`exp`, `nbf` are re-checked against it on every hit).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots per thread (direct-mapped); about 80 KiB per thread at typical token sizes.
const SLOTS: usize = 256;

/// Longest token kept; longer ones are verified every time.
const MAX_KEPT_BYTES: usize = 2048;

/// Names one key set for as long as it lives; never reused within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySetId(u64);

impl KeySetId {
    pub fn next() -> KeySetId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        KeySetId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

struct Slot<T> {
    keys: KeySetId,
    token: Vec<u8>,
    value: T,
}

/// One thread's memory for one kind of value.
pub struct Verified<T: Copy + 'static> {
    slots: Vec<Option<Slot<T>>>,
}

impl<T: Copy + 'static> Default for Verified<T> {
    fn default() -> Self {
        Verified {
            slots: (0..SLOTS).map(|_| None).collect(),
        }
    }
}

impl<T: Copy + 'static> Verified<T> {
    /// What `keys` found when they verified exactly these bytes, if this thread remembers it.
    pub fn get(&self, keys: KeySetId, token: &[u8]) -> Option<T> {
        let slot = self.slots[index(token)?].as_ref()?;
        (slot.keys == keys && same_bytes(&slot.token, token)).then_some(slot.value)
    }

    /// Remembers a token `keys` verified; reuses the slot's buffer (no allocation once warm).
    pub fn put(&mut self, keys: KeySetId, token: &[u8], value: T) {
        let Some(i) = index(token).filter(|_| token.len() <= MAX_KEPT_BYTES) else {
            return;
        };
        match &mut self.slots[i] {
            Some(slot) => {
                slot.keys = keys;
                slot.token.clear();
                slot.token.extend_from_slice(token);
                slot.value = value;
            }
            empty => {
                *empty = Some(Slot {
                    keys,
                    token: token.to_vec(),
                    value,
                })
            }
        }
    }
}

/// The slot of a token: its last 8 bytes, the end of its signature (random for real tokens;
/// a made-up one is never kept, so it can only miss).
fn index(token: &[u8]) -> Option<usize> {
    let tail: [u8; 8] = token.get(token.len().checked_sub(8)?..)?.try_into().ok()?;
    let mixed = u64::from_le_bytes(tail).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Some((mixed >> 56) as usize % SLOTS)
}

/// Equal length and bytes, without stopping at the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// Runs `f` with this thread's memory for values of type `T`, one per `T`.
pub fn with<T: Copy + 'static, R>(
    cell: &'static std::thread::LocalKey<RefCell<Verified<T>>>,
    f: impl FnOnce(&mut Verified<T>) -> R,
) -> R {
    cell.with(|c| f(&mut c.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_needs_the_same_keys_and_every_byte() {
        let mut v = Verified::<u32>::default();
        let (a, b) = (KeySetId::next(), KeySetId::next());
        let token = b"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
        assert_eq!(v.get(a, token), None);
        v.put(a, token, 7);
        assert_eq!(v.get(a, token), Some(7));
        // Other keys (a reload, the other kind of token) never see it.
        assert_eq!(v.get(b, token), None);
        // Same tail (same slot), other bytes: a miss.
        let mut other = token.to_vec();
        other[3] ^= 1;
        assert_eq!(v.get(a, &other), None);
        let mut longer = b"x".to_vec();
        longer.extend_from_slice(token);
        assert_eq!(v.get(a, &longer), None);
        // The slot is taken over by the next token filed there.
        v.put(a, &other, 9);
        assert_eq!(v.get(a, &other), Some(9));
        assert_eq!(v.get(a, token), None);
    }

    #[test]
    fn short_and_huge_tokens_are_never_kept() {
        let mut v = Verified::<u32>::default();
        let keys = KeySetId::next();
        v.put(keys, b"short", 1);
        assert_eq!(v.get(keys, b"short"), None);
        let huge = vec![b'a'; MAX_KEPT_BYTES + 1];
        v.put(keys, &huge, 1);
        assert_eq!(v.get(keys, &huge), None);
    }

    #[test]
    fn key_set_ids_are_unique() {
        let ids: Vec<KeySetId> = (0..100).map(|_| KeySetId::next()).collect();
        for (i, a) in ids.iter().enumerate() {
            assert!(!ids[i + 1..].contains(a));
        }
    }
}
