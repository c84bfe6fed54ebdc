//! One refresh per session, however many requests race.
//!
//! Auth APIs rotate refresh tokens and revoke the whole family when an old one is replayed, so
//! concurrent requests of one session must share a single auth API call, and requests that
//! arrive a little later with the old cookies must get the same result rather than replay the old
//! token. `RefreshFlights` keeps, per session key, either the running flight or its successful
//! result for a grace window.
//!
//! The flight runs in its own task: a browser that gives up mid-refresh must not cancel a call
//! whose rotated tokens the other requests of the session are waiting for.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::time::Instant;

/// Identifies a session at the auth API; a keyed hash, so no token can be read back from it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// A short, stable tag for logs.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", self.short())
    }
}

/// Derives session keys with a per-process random salt.
pub struct SessionKeyer {
    mac: Hmac<Sha256>,
}

impl Default for SessionKeyer {
    fn default() -> Self {
        Self::with_salt(&rand::random::<[u8; 32]>())
    }
}

impl SessionKeyer {
    pub fn with_salt(salt: &[u8]) -> Self {
        SessionKeyer {
            mac: Hmac::<Sha256>::new_from_slice(salt).expect("HMAC accepts keys of any length"),
        }
    }

    /// Length-prefixed parts, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn key(&self, parts: &[&[u8]]) -> SessionKey {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        SessionKey(mac.finalize().into_bytes().into())
    }
}

/// How a request got its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// Started the flight.
    Led,
    /// Waited for a flight another request started.
    Waited,
    /// Took a result kept for the grace window.
    Grace,
}

/// The flight's task ended without an outcome (it panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlightLost;

type Outcome<T, E> = Result<T, E>;

enum Slot<T, E> {
    Running(watch::Receiver<Option<Outcome<T, E>>>),
    Kept { value: T, until: Instant },
}

struct Entry<T, E> {
    slot: Slot<T, E>,
    generation: u64,
}

struct Table<T, E> {
    entries: HashMap<SessionKey, Entry<T, E>>,
    /// Kept results in the order they were stored, which is the order they expire in (the grace
    /// window is the same for all); pairs whose entry has been replaced are skipped.
    kept: VecDeque<(SessionKey, u64)>,
    next_generation: u64,
}

pub struct RefreshFlights<T, E> {
    table: Mutex<Table<T, E>>,
    /// Both may change on a configuration reload; they apply to what is stored from then on.
    grace_ms: AtomicU64,
    max_entries: AtomicUsize,
}

enum Step<T, E> {
    Done(Outcome<T, E>, Joined),
    Wait(watch::Receiver<Option<Outcome<T, E>>>, Joined),
}

impl<T, E> RefreshFlights<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<FlightLost> + 'static,
{
    pub fn new(grace: Duration, max_entries: usize) -> Self {
        RefreshFlights {
            table: Mutex::new(Table {
                entries: HashMap::new(),
                kept: VecDeque::new(),
                next_generation: 0,
            }),
            grace_ms: AtomicU64::new(0),
            max_entries: AtomicUsize::new(1),
        }
        .with_limits(grace, max_entries)
    }

    fn with_limits(self, grace: Duration, max_entries: usize) -> Self {
        self.set_limits(grace, max_entries);
        self
    }

    /// New grace window and table bound (a reload); a smaller bound evicts at the next store.
    pub fn set_limits(&self, grace: Duration, max_entries: usize) {
        let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.grace_ms.store(ms, Ordering::Relaxed);
        self.max_entries
            .store(max_entries.max(1), Ordering::Relaxed);
    }

    fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.load(Ordering::Relaxed))
    }

    fn max_entries(&self) -> usize {
        self.max_entries.load(Ordering::Relaxed)
    }

    /// Entries held now, running or kept.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The outcome for `key`: a kept result, the running flight's, or a new flight from `start`.
    pub async fn run<F, Fut>(self: &Arc<Self>, key: SessionKey, start: F) -> (Outcome<T, E>, Joined)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome<T, E>> + Send + 'static,
    {
        let step = self.join_or_start(key, start);
        match step {
            Step::Done(outcome, joined) => (outcome, joined),
            Step::Wait(rx, joined) => (wait(rx).await, joined),
        }
    }

    fn join_or_start<F, Fut>(self: &Arc<Self>, key: SessionKey, start: F) -> Step<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome<T, E>> + Send + 'static,
    {
        let now = Instant::now();
        let mut table = self.lock();
        table.purge(now);
        match table.entries.get(&key).map(|e| &e.slot) {
            Some(Slot::Kept { value, until }) if *until > now => {
                return Step::Done(Ok(value.clone()), Joined::Grace);
            }
            Some(Slot::Running(rx)) => return Step::Wait(rx.clone(), Joined::Waited),
            _ => {}
        }
        // Running flights are always tracked, so one session never makes two calls; room is made
        // by dropping the oldest kept results.
        table.make_room(self.max_entries(), 1);
        let (tx, rx) = watch::channel(None);
        let generation = table.insert(key, Slot::Running(rx.clone()));
        drop(table);
        let flights = Arc::clone(self);
        let flight = start();
        tokio::spawn(async move {
            let mut guard = SettleGuard {
                flights: &flights,
                key,
                generation,
                settled: false,
            };
            let outcome = flight.await;
            guard.settle(&outcome);
            let _ = tx.send(Some(outcome));
        });
        Step::Wait(rx, Joined::Led)
    }

    fn lock(&self) -> MutexGuard<'_, Table<T, E>> {
        // A panic while holding the lock leaves the table consistent (every mutation is a
        // single map or deque call), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn wait<T: Clone, E: Clone + From<FlightLost>>(
    mut rx: watch::Receiver<Option<Outcome<T, E>>>,
) -> Outcome<T, E> {
    match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone().unwrap_or_else(|| Err(FlightLost.into())),
        Err(_) => Err(FlightLost.into()),
    }
}

/// Records the outcome in the table; if the flight's task dies first, drops the entry so the
/// next request starts afresh instead of waiting on a flight that will never land.
struct SettleGuard<'a, T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<FlightLost> + 'static,
{
    flights: &'a RefreshFlights<T, E>,
    key: SessionKey,
    generation: u64,
    settled: bool,
}

impl<T, E> SettleGuard<'_, T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<FlightLost> + 'static,
{
    fn settle(&mut self, outcome: &Outcome<T, E>) {
        self.settled = true;
        let grace = self.flights.grace();
        let mut table = self.flights.lock();
        let ours = table
            .entries
            .get(&self.key)
            .is_some_and(|e| e.generation == self.generation);
        if ours {
            match outcome {
                // Only successes are kept: after a transient failure the next request tries again.
                Ok(value) if !grace.is_zero() => {
                    let until = Instant::now() + grace;
                    if let Some(entry) = table.entries.get_mut(&self.key) {
                        entry.slot = Slot::Kept {
                            value: value.clone(),
                            until,
                        };
                    }
                    table.kept.push_back((self.key, self.generation));
                    table.make_room(self.flights.max_entries(), 0);
                }
                _ => {
                    table.entries.remove(&self.key);
                }
            }
        }
    }
}

impl<T, E> Drop for SettleGuard<'_, T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<FlightLost> + 'static,
{
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut table = self.flights.lock();
        if table
            .entries
            .get(&self.key)
            .is_some_and(|e| e.generation == self.generation)
        {
            table.entries.remove(&self.key);
        }
    }
}

impl<T, E> Table<T, E> {
    fn insert(&mut self, key: SessionKey, slot: Slot<T, E>) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.entries.insert(key, Entry { slot, generation });
        generation
    }

    /// Whether `(key, generation)` still names a kept result.
    fn holds_kept(&self, key: &SessionKey, generation: u64) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.generation == generation && matches!(e.slot, Slot::Kept { .. }))
    }

    /// Drops expired results; they sit at the front of `kept`.
    fn purge(&mut self, now: Instant) {
        while let Some(&(key, generation)) = self.kept.front() {
            if self.holds_kept(&key, generation) {
                match self.entries.get(&key).map(|e| &e.slot) {
                    Some(Slot::Kept { until, .. }) if *until <= now => {
                        self.entries.remove(&key);
                    }
                    _ => break,
                }
            }
            self.kept.pop_front();
        }
        // Replaced results leave stale pairs behind a live front; keep the deque in proportion.
        if self.kept.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.kept.retain(|(k, g)| {
                entries
                    .get(k)
                    .is_some_and(|e| e.generation == *g && matches!(e.slot, Slot::Kept { .. }))
            });
        }
    }

    /// Evicts the oldest kept results until `more` further entries fit in `max_entries`.
    /// Running flights are never evicted: the auth API timeout bounds how long they stay.
    fn make_room(&mut self, max_entries: usize, more: usize) {
        let mut evicted = 0usize;
        while self.entries.len() + more > max_entries {
            let Some((key, generation)) = self.kept.pop_front() else {
                break;
            };
            if self.holds_kept(&key, generation) {
                self.entries.remove(&key);
                evicted += 1;
            }
        }
        if evicted > 0 {
            warn_table_full(max_entries, evicted);
        }
    }
}

/// Once every ten seconds at most, with the count since the last warning: a full table under
/// load would otherwise write one line per request.
fn warn_table_full(max_entries: usize, evicted: usize) {
    static EVICTED: AtomicU64 = AtomicU64::new(0);
    static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
    let total = EVICTED.fetch_add(evicted as u64, Ordering::Relaxed) + evicted as u64;
    let now = crate::unix_now();
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        EVICTED.fetch_sub(total, Ordering::Relaxed);
        log::warn!(
            "refresh table full ({max_entries} entries): {total} kept result(s) dropped before their grace window ended; raise refresh.max_entries"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum TestError {
        Failed,
        Lost,
    }

    impl From<FlightLost> for TestError {
        fn from(_: FlightLost) -> Self {
            TestError::Lost
        }
    }

    type Flights = RefreshFlights<u32, TestError>;

    fn key(n: u8) -> SessionKey {
        SessionKeyer::with_salt(b"test").key(&[&[n]])
    }

    #[test]
    fn keys_depend_on_every_part_and_the_salt() {
        let a = SessionKeyer::with_salt(b"one");
        let b = SessionKeyer::with_salt(b"two");
        assert_eq!(a.key(&[b"x", b"y"]), a.key(&[b"x", b"y"]));
        assert_ne!(a.key(&[b"x", b"y"]), b.key(&[b"x", b"y"]));
        assert_ne!(a.key(&[b"ab", b"c"]), a.key(&[b"a", b"bc"]));
        assert_eq!(a.key(&[b"x"]).short().len(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_flight() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let flights = flights.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                flights
                    .run(key(1), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok(7)
                    })
                    .await
            }));
        }
        let mut led = 0;
        for t in tasks {
            let (outcome, joined) = t.await.unwrap();
            assert_eq!(outcome, Ok(7));
            led += usize::from(joined == Joined::Led);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(led, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn success_is_kept_for_the_grace_window_then_dropped() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let (first, joined) = flights.run(key(1), || async { Ok(1) }).await;
        assert_eq!((first, joined), (Ok(1), Joined::Led));
        tokio::time::advance(Duration::from_secs(29)).await;
        let (again, joined) = flights.run(key(1), || async { Ok(2) }).await;
        assert_eq!((again, joined), (Ok(1), Joined::Grace));
        tokio::time::advance(Duration::from_secs(2)).await;
        let (later, joined) = flights.run(key(1), || async { Ok(3) }).await;
        assert_eq!((later, joined), (Ok(3), Joined::Led));
        let (other, _) = flights.run(key(2), || async { Ok(4) }).await;
        assert_eq!(other, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_shared_but_not_kept() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let f1 = flights.clone();
        let leader = tokio::spawn(async move {
            f1.run(key(1), || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(TestError::Failed)
            })
            .await
        });
        tokio::task::yield_now().await;
        let (waiter, joined) = flights.run(key(1), || async { Ok(9) }).await;
        assert_eq!((waiter, joined), (Err(TestError::Failed), Joined::Waited));
        assert_eq!(leader.await.unwrap().0, Err(TestError::Failed));
        let (retry, joined) = flights.run(key(1), || async { Ok(5) }).await;
        assert_eq!((retry, joined), (Ok(5), Joined::Led));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_leader_does_not_cancel_the_flight() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        let (f1, c1) = (flights.clone(), calls.clone());
        let leader = tokio::spawn(async move {
            f1.run(key(1), || async move {
                c1.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(3)
            })
            .await
        });
        tokio::task::yield_now().await;
        leader.abort();
        tokio::time::advance(Duration::from_millis(150)).await;
        tokio::task::yield_now().await;
        let (outcome, joined) = flights.run(key(1), || async { Ok(4) }).await;
        assert_eq!((outcome, joined), (Ok(3), Joined::Grace));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_flight_is_reported_lost_and_forgotten() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let (outcome, _) = flights.run(key(1), || async { panic!("boom") }).await;
        assert_eq!(outcome, Err(TestError::Lost));
        assert!(flights.is_empty());
        let (again, joined) = flights.run(key(1), || async { Ok(1) }).await;
        assert_eq!((again, joined), (Ok(1), Joined::Led));
    }

    #[tokio::test(start_paused = true)]
    async fn table_stays_bounded() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 10));
        for n in 0..50u8 {
            let (outcome, _) = flights
                .run(key(n), move || async move { Ok(n.into()) })
                .await;
            assert_eq!(outcome, Ok(u32::from(n)));
            assert!(flights.len() <= 10);
        }
        // The newest results are the ones kept.
        let (kept, joined) = flights.run(key(49), || async { Ok(0) }).await;
        assert_eq!((kept, joined), (Ok(49), Joined::Grace));
        tokio::time::advance(Duration::from_secs(31)).await;
        let _ = flights.run(key(200), || async { Ok(0) }).await;
        assert_eq!(flights.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn running_flights_are_tracked_even_past_the_bound() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 1));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for n in 1..=2u8 {
            for _ in 0..5 {
                let (f, c) = (flights.clone(), calls.clone());
                tasks.push(tokio::spawn(async move {
                    f.run(key(n), move || async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok(n.into())
                    })
                    .await
                }));
            }
        }
        tokio::task::yield_now().await;
        assert_eq!(flights.len(), 2);
        for t in tasks {
            assert!(t.await.unwrap().0.is_ok());
        }
        // One call per session, though the table only keeps one result.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(flights.len(), 1);
    }
}
