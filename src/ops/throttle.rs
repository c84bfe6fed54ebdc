//! A warning written at most once every ten seconds, saying how many events it stands for: under
//! load, one line per event would flood the log (a full refresh table, a busy auth API, a Redis
//! outage).

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds between two lines.
const EVERY_SECS: u64 = 10;

pub struct Throttle {
    /// Events since the last line.
    pending: AtomicU64,
    /// When the last line was written (Unix seconds; 0: never, so the first event writes one).
    last: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Throttle {
            pending: AtomicU64::new(0),
            last: AtomicU64::new(0),
        }
    }

    /// Counts `n` events; `Some(events since the last line)` when a line is due now.
    pub fn tick(&self, n: u64) -> Option<u64> {
        let total = self.pending.fetch_add(n, Ordering::Relaxed) + n;
        let now = crate::unix_now();
        let last = self.last.load(Ordering::Relaxed);
        let due = now >= last + EVERY_SECS
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        due.then(|| {
            self.pending.fetch_sub(total, Ordering::Relaxed);
            total
        })
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_writes_a_line_the_next_ones_wait_and_are_counted() {
        let t = Throttle::new();
        assert_eq!(t.tick(1), Some(1));
        assert_eq!(t.tick(3), None);
        assert_eq!(t.tick(1), None);
        assert_eq!(t.pending.load(Ordering::Relaxed), 4);
    }
}
