//! Small helpers: random seeds and ids, the clock.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A random 64-bit value (std's randomly keyed SipHash over a counter and the clock).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.finish()
}

/// `cmpl-` + 32 hex digits.
pub fn completion_id() -> String {
    format!("cmpl-{:016x}{:016x}", random_u64(), random_u64())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_seeds_differ() {
        let id = completion_id();
        assert_eq!(id.len(), 37);
        assert!(id[5..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(completion_id(), id);
        assert_ne!(random_u64(), random_u64());
    }
}
