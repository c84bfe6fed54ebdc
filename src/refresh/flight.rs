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
//!
//! A session can be ended (logout, or the auth API refusing it): the kept results of its whole
//! chain (the old cookies' key and the key of the cookies the renewed browser carries) give way
//! to tombstones for the grace window, so replayed cookies get the logout outcome and no call.
//! Every flight holds a permit of the [`CallGate`], which bounds the auth API calls in flight.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::ops::throttle::Throttle;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::time::Instant;

/// Identifies a session at the auth API; a keyed hash, so no token can be read back from it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

/// The key is already a keyed hash, uniform and unknown to clients (who cannot aim at a bucket
/// without the key): its first eight bytes are its hash, no second hash over 32 bytes.
impl Hash for SessionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// The tables' hasher: passes a [`SessionKey`]'s own hash through.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<SessionKey, V, BuildHasherDefault<KeyHash>>;

impl SessionKey {
    /// A short, stable tag for logs.
    pub fn short(&self) -> String {
        crate::hex::encode(&self.0[..4])
    }

    /// The hash itself, for names shared with other instances (`crate::refresh::shared_store`).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SessionKey(bytes)
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
    /// Took a result kept for the grace window (or the tombstone of an ended session).
    Grace,
}

/// The flight's task ended without an outcome (it panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlightLost;

/// The session was ended (logout, or the auth API refused it) less than a grace window ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEnded;

/// A new flight would exceed the bound of auth API calls in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthApiBusy;

/// What the table's outcomes need of an error type.
pub trait FlightError:
    Clone + Send + Sync + From<FlightLost> + From<SessionEnded> + From<AuthApiBusy> + 'static
{
}

impl<E> FlightError for E where
    E: Clone + Send + Sync + From<FlightLost> + From<SessionEnded> + From<AuthApiBusy> + 'static
{
}

type Outcome<T, E> = Result<T, E>;

/// What a flight came to, as its task hands it to the table.
#[derive(Debug)]
pub enum Landing<T, E> {
    /// Shared, then kept for the grace window. `next` is the session key of the cookies the
    /// renewed browser carries, so that ending either session ends both.
    Renewed { value: T, next: Option<SessionKey> },
    /// Shared with the waiters, not kept: the next request tries again.
    Failed(E),
    /// Shared with the waiters, then the session's whole chain is ended, as a logout ends it.
    Ended(E),
}

/// Longest chain of renewals ended at once (one per refresh within a grace window).
const MAX_CHAIN: usize = 64;

enum Slot<T, E> {
    Running(watch::Receiver<Option<Outcome<T, E>>>),
    Kept {
        value: T,
        until: Instant,
        next: Option<SessionKey>,
        /// Requests whose answers carry this result and have not left yet: the result is not
        /// dropped before the browser can have it (see [`RefreshFlights::hold`]).
        holders: u32,
    },
    /// The session was ended: answered with [`SessionEnded`] until then.
    Ended {
        until: Instant,
    },
}

/// Bounds the auth API calls in flight (refreshes and backend logouts alike).
#[derive(Debug, Default)]
pub struct CallGate {
    running: AtomicUsize,
}

/// One call in flight; dropping it frees its place.
#[derive(Debug)]
pub struct CallPermit(Arc<CallGate>);

impl CallGate {
    /// A place, unless `max` calls are already in flight.
    pub fn try_acquire(self: &Arc<Self>, max: usize) -> Option<CallPermit> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(CallPermit(Arc::clone(self)))
    }

    /// Calls in flight now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Entry<T, E> {
    slot: Slot<T, E>,
    generation: u64,
}

struct Table<T, E> {
    entries: KeyMap<Entry<T, E>>,
    /// Kept results and tombstones in the order they were stored, which is the order they expire
    /// in (the grace window is the same for all); pairs whose entry has been replaced are skipped.
    kept: VecDeque<(SessionKey, u64)>,
    /// `next` key of a kept result → `(key, generation)` of that result: how a logout carrying
    /// the renewed cookies finds the old ones. At most one per kept result.
    origin: KeyMap<(SessionKey, u64)>,
    next_generation: u64,
}

pub struct RefreshFlights<T, E> {
    table: Mutex<Table<T, E>>,
    gate: Arc<CallGate>,
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
    E: FlightError,
{
    pub fn new(grace: Duration, max_entries: usize) -> Self {
        RefreshFlights {
            table: Mutex::new(Table {
                entries: KeyMap::default(),
                kept: VecDeque::new(),
                origin: KeyMap::default(),
                next_generation: 0,
            }),
            gate: Arc::default(),
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

    /// The gate every auth API call passes, shared with the backend logout.
    pub fn gate(&self) -> &Arc<CallGate> {
        &self.gate
    }

    /// The outcome for `key`: a kept result, the running flight's, or a new flight from `start`
    /// (successes kept, failures not, no chain, no bound on the calls in flight).
    pub async fn run<F, Fut>(self: &Arc<Self>, key: SessionKey, start: F) -> (Outcome<T, E>, Joined)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome<T, E>> + Send + 'static,
    {
        let start = move || {
            let flight = start();
            async move {
                match flight.await {
                    Ok(value) => Landing::Renewed { value, next: None },
                    Err(error) => Landing::Failed(error),
                }
            }
        };
        self.run_bounded(key, None, start).await
    }

    /// As [`Self::run`], with the flight saying what its outcome does to the session, and at
    /// most `max_in_flight` flights running (`None`: no bound here, the flight takes its place
    /// of [`Self::gate`] itself): beyond it, [`AuthApiBusy`] at once, no flight. An ended
    /// session is answered [`SessionEnded`] for the grace window.
    pub async fn run_bounded<F, Fut>(
        self: &Arc<Self>,
        key: SessionKey,
        max_in_flight: impl Into<Option<usize>>,
        start: F,
    ) -> (Outcome<T, E>, Joined)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Landing<T, E>> + Send + 'static,
    {
        let step = self.join_or_start(key, max_in_flight.into(), start);
        match step {
            Step::Done(outcome, joined) => (outcome, joined),
            Step::Wait(rx, joined) => (wait(rx).await, joined),
        }
    }

    /// Ends the session `key` names, with every session chained to it by a kept result: each
    /// gets a tombstone for the grace window (none when the window is 0), and a flight still
    /// running for one of them stores nothing. Keys the table does not know are left alone, so
    /// logouts with made-up cookies cannot fill it. Returns how many keys were ended.
    pub fn end(&self, key: SessionKey) -> usize {
        let now = Instant::now();
        let mut table = self.lock();
        table.purge(now);
        let ended = table.end_chain(key, now, self.grace());
        table.make_room(self.max_entries(), 0);
        ended
    }

    /// An answer carrying `key`'s result is leaving: `true` when the session was ended since
    /// (a logout landed while the app answered: the answer must not hand the tokens out). When
    /// `held`, the request's hold is [released](Self::release) in the same step.
    pub fn leaving(&self, key: &SessionKey, held: bool) -> bool {
        let now = Instant::now();
        let grace = self.grace();
        let mut table = self.lock();
        if matches!(table.entries.get(key).map(|e| &e.slot), Some(Slot::Ended { until }) if *until > now)
        {
            return true;
        }
        if held {
            table.release(key, now + grace);
        }
        false
    }

    /// A request is taking `key`'s kept result to the app and back: until its answer has left
    /// ([`Self::release`]), the result is not dropped, however long the app takes. The grace
    /// window is for the browser to store the new cookies, and they reach it only with that
    /// answer. Returns whether there was a result to hold.
    pub fn hold(&self, key: &SessionKey) -> bool {
        let mut table = self.lock();
        match table.entries.get_mut(key).map(|e| &mut e.slot) {
            Some(Slot::Kept { holders, .. }) => {
                *holders += 1;
                true
            }
            _ => false,
        }
    }

    /// The answer of a request that [held](Self::hold) `key`'s result has left (or its client
    /// has gone): the result stays a grace window from now.
    pub fn release(&self, key: &SessionKey) {
        let until = Instant::now() + self.grace();
        self.lock().release(key, until);
    }

    /// The newest result kept in `key`'s chain: what the browser holds once every answer of
    /// the session has reached it. A backend logout names that session, not one whose refresh
    /// token the auth API has already rotated away.
    pub fn newest_kept(&self, key: SessionKey) -> Option<T> {
        let now = Instant::now();
        let table = self.lock();
        let kept = |k: &SessionKey| match table.entries.get(k).map(|e| &e.slot) {
            Some(Slot::Kept {
                value,
                until,
                next,
                holders,
            }) if *until > now || *holders > 0 => Some((value, *next)),
            _ => None,
        };
        table
            .chain(key)
            .iter()
            .filter_map(kept)
            .find(|(_, next)| next.is_none_or(|n| kept(&n).is_none()))
            .map(|(value, _)| value.clone())
    }

    fn join_or_start<F, Fut>(
        self: &Arc<Self>,
        key: SessionKey,
        max_in_flight: Option<usize>,
        start: F,
    ) -> Step<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Landing<T, E>> + Send + 'static,
    {
        let now = Instant::now();
        let mut table = self.lock();
        table.purge(now);
        match table.entries.get(&key).map(|e| &e.slot) {
            Some(Slot::Kept {
                value,
                until,
                holders,
                ..
            }) if *until > now || *holders > 0 => {
                return Step::Done(Ok(value.clone()), Joined::Grace);
            }
            Some(Slot::Ended { until }) if *until > now => {
                return Step::Done(Err(SessionEnded.into()), Joined::Grace);
            }
            Some(Slot::Running(rx)) => return Step::Wait(rx.clone(), Joined::Waited),
            _ => {}
        }
        let permit = match max_in_flight.map(|max| (max, self.gate.try_acquire(max))) {
            Some((max, None)) => {
                drop(table);
                warn_busy(max);
                return Step::Done(Err(AuthApiBusy.into()), Joined::Led);
            }
            Some((_, place)) => place,
            None => None,
        };
        // Running flights are always tracked, so one session never makes two calls; room is made
        // by dropping the oldest kept results.
        table.make_room(self.max_entries(), 1);
        let (tx, rx) = watch::channel(None);
        let generation = table.insert(key, Slot::Running(rx.clone()));
        drop(table);
        let flights = Arc::clone(self);
        let flight = start();
        tokio::spawn(async move {
            let _permit = permit;
            let mut guard = SettleGuard {
                flights: &flights,
                key,
                generation,
                settled: false,
            };
            let landing = flight.await;
            let outcome = guard.settle(landing);
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
    E: FlightError,
{
    flights: &'a RefreshFlights<T, E>,
    key: SessionKey,
    generation: u64,
    settled: bool,
}

impl<T, E> SettleGuard<'_, T, E>
where
    T: Clone + Send + Sync + 'static,
    E: FlightError,
{
    /// Stores what the landing says (only if the entry is still this flight's: a session ended
    /// meanwhile stays ended) and returns the outcome for the waiters.
    fn settle(&mut self, landing: Landing<T, E>) -> Outcome<T, E> {
        self.settled = true;
        let grace = self.flights.grace();
        let mut table = self.flights.lock();
        let ours = table
            .entries
            .get(&self.key)
            .is_some_and(|e| e.generation == self.generation);
        match landing {
            // Ended while the call ran (a logout; nothing else replaces a running entry): the
            // new tokens must not bring the session back, so the waiters get the logout too,
            // and the cookies the result would have handed out are ended with the rest of the
            // chain.
            Landing::Renewed { next, .. } if !ours => {
                if let Some(next) = next.filter(|_| !grace.is_zero()) {
                    table.end_keys(&[next], Instant::now(), grace);
                    table.make_room(self.flights.max_entries(), 0);
                }
                Err(SessionEnded.into())
            }
            // Only successes are kept: after a transient failure the next request tries again.
            Landing::Renewed { value, next } => {
                if !grace.is_zero() {
                    let until = Instant::now() + grace;
                    if let Some(entry) = table.entries.get_mut(&self.key) {
                        entry.slot = Slot::Kept {
                            holders: 0,
                            value: value.clone(),
                            until,
                            next,
                        };
                    }
                    if let Some(next) = next.filter(|n| *n != self.key) {
                        table.origin.insert(next, (self.key, self.generation));
                    }
                    table.kept.push_back((self.key, self.generation));
                    table.make_room(self.flights.max_entries(), 0);
                } else {
                    table.remove(&self.key);
                }
                Ok(value)
            }
            Landing::Failed(error) => {
                if ours {
                    table.remove(&self.key);
                }
                Err(error)
            }
            Landing::Ended(error) => {
                if ours {
                    table.end_chain(self.key, Instant::now(), grace);
                    table.make_room(self.flights.max_entries(), 0);
                }
                Err(error)
            }
        }
    }
}

impl<T, E> Drop for SettleGuard<'_, T, E>
where
    T: Clone + Send + Sync + 'static,
    E: FlightError,
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
            table.remove(&self.key);
        }
    }
}

impl<T, E> Table<T, E> {
    fn insert(&mut self, key: SessionKey, slot: Slot<T, E>) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.remove(&key);
        self.entries.insert(key, Entry { slot, generation });
        generation
    }

    /// Drops `key`'s entry, and the link its kept result made to the key it produced.
    fn remove(&mut self, key: &SessionKey) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        if let Slot::Kept {
            next: Some(next), ..
        } = entry.slot
            && self.origin.get(&next) == Some(&(*key, entry.generation))
        {
            self.origin.remove(&next);
        }
    }

    /// One hold of `key`'s result less, and the result kept until `until` at least.
    fn release(&mut self, key: &SessionKey, until: Instant) {
        if let Some(Slot::Kept { holders, .. }) = self.entries.get_mut(key).map(|e| &mut e.slot) {
            *holders = holders.saturating_sub(1);
            self.rearm(key, until);
        }
    }

    /// Keeps `key`'s result until `until` at least: a new generation at the back of `kept` (the
    /// old pair at the front goes stale), its `origin` link moved along.
    fn rearm(&mut self, key: &SessionKey, until: Instant) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let Slot::Kept {
            until: current,
            next,
            ..
        } = &mut entry.slot
        else {
            return;
        };
        if until <= *current {
            return;
        }
        *current = until;
        let generation = self.next_generation;
        self.next_generation += 1;
        let old = std::mem::replace(&mut entry.generation, generation);
        if let Some(next) = *next
            && self.origin.get(&next) == Some(&(*key, old))
        {
            self.origin.insert(next, (*key, generation));
        }
        self.kept.push_back((*key, generation));
    }

    /// Whether `(key, generation)` still names a kept result or a tombstone.
    fn holds_kept(&self, key: &SessionKey, generation: u64) -> bool {
        self.entries.get(key).is_some_and(|e| {
            e.generation == generation && matches!(e.slot, Slot::Kept { .. } | Slot::Ended { .. })
        })
    }

    /// The kept result that produced `key`, if it is still kept.
    fn origin_of(&self, key: &SessionKey) -> Option<SessionKey> {
        let &(from, generation) = self.origin.get(key)?;
        self.entries
            .get(&from)
            .is_some_and(|e| e.generation == generation && matches!(e.slot, Slot::Kept { .. }))
            .then_some(from)
    }

    /// `key` and every session chained to it through kept results, both ways; empty when the
    /// table knows nothing of `key`.
    fn chain(&self, key: SessionKey) -> Vec<SessionKey> {
        if !self.entries.contains_key(&key) && self.origin_of(&key).is_none() {
            return Vec::new();
        }
        let mut chain = vec![key];
        let mut at = 0;
        while at < chain.len() && chain.len() < MAX_CHAIN {
            let k = chain[at];
            at += 1;
            let next = match self.entries.get(&k).map(|e| &e.slot) {
                Some(Slot::Kept { next, .. }) => *next,
                _ => None,
            };
            for linked in [self.origin_of(&k), next].into_iter().flatten() {
                if !chain.contains(&linked) && chain.len() < MAX_CHAIN {
                    chain.push(linked);
                }
            }
        }
        chain
    }

    /// Replaces every entry of `key`'s chain by a tombstone until `now + grace` (removes them
    /// when `grace` is 0); a running flight of the chain then finds its entry gone.
    fn end_chain(&mut self, key: SessionKey, now: Instant, grace: Duration) -> usize {
        let chain = self.chain(key);
        self.end_keys(&chain, now, grace);
        chain.len()
    }

    fn end_keys(&mut self, keys: &[SessionKey], now: Instant, grace: Duration) {
        for k in keys {
            self.origin.remove(k);
            if grace.is_zero() {
                self.remove(k);
            } else {
                let generation = self.insert(*k, Slot::Ended { until: now + grace });
                self.kept.push_back((*k, generation));
            }
        }
    }

    /// Drops expired results and tombstones; they sit at the front of `kept`.
    fn purge(&mut self, now: Instant) {
        while let Some(&(key, generation)) = self.kept.front() {
            if self.holds_kept(&key, generation) {
                match self.entries.get(&key).map(|e| &e.slot) {
                    // Held by answers still on their way: out of the queue, kept in the table;
                    // its release queues it again.
                    Some(Slot::Kept { until, holders, .. }) if *until <= now && *holders > 0 => {}
                    Some(Slot::Kept { until, .. } | Slot::Ended { until }) if *until <= now => {
                        self.remove(&key);
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
                entries.get(k).is_some_and(|e| {
                    e.generation == *g && matches!(e.slot, Slot::Kept { .. } | Slot::Ended { .. })
                })
            });
        }
    }

    /// Evicts the oldest kept results and tombstones until `more` further entries fit in
    /// `max_entries`. Running flights are never evicted: the auth API timeout bounds how long
    /// they stay.
    fn make_room(&mut self, max_entries: usize, more: usize) {
        let mut evicted = 0usize;
        while self.entries.len() + more > max_entries {
            let Some((key, generation)) = self.kept.pop_front() else {
                break;
            };
            if self.holds_kept(&key, generation) {
                self.remove(&key);
                evicted += 1;
            }
        }
        if evicted > 0 {
            warn_table_full(max_entries, evicted);
        }
    }
}

/// Rate-limited: under load one line per refused refresh would flood the log.
fn warn_busy(max_in_flight: usize) {
    static BUSY: Throttle = Throttle::new();
    if let Some(total) = BUSY.tick(1) {
        log::warn!(
            "auth API busy ({max_in_flight} calls in flight): {total} refresh(es) answered 503; raise auth_api.max_in_flight if the auth API can take more"
        );
    }
}

/// Rate-limited: a full table under load would otherwise write one line per request.
fn warn_table_full(max_entries: usize, evicted: usize) {
    static FULL: Throttle = Throttle::new();
    if let Some(total) = FULL.tick(evicted as u64) {
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
        Rejected,
        Ended,
        Busy,
    }

    impl From<FlightLost> for TestError {
        fn from(_: FlightLost) -> Self {
            TestError::Lost
        }
    }

    impl From<SessionEnded> for TestError {
        fn from(_: SessionEnded) -> Self {
            TestError::Ended
        }
    }

    impl From<AuthApiBusy> for TestError {
        fn from(_: AuthApiBusy) -> Self {
            TestError::Busy
        }
    }

    /// A flight that succeeds with `value`, producing session `next`, counting its call.
    fn renewing(
        calls: &Arc<AtomicUsize>,
        value: u32,
        next: Option<SessionKey>,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Landing<u32, TestError>> + Send>>
    {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Landing::Renewed { value, next } })
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

    #[tokio::test(start_paused = true)]
    async fn ending_a_session_ends_its_whole_chain_whichever_key_the_logout_carries() {
        // (logout with, replayed key): the old cookies (1) were renewed into the new ones (2).
        for (logout, replayed) in [(2u8, 1u8), (1, 1), (1, 2), (2, 2)] {
            let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
            let calls = Arc::new(AtomicUsize::new(0));
            let (first, joined) = flights
                .run_bounded(key(1), 10, renewing(&calls, 7, Some(key(2))))
                .await;
            assert_eq!((first, joined), (Ok(7), Joined::Led));
            assert_eq!(flights.end(key(logout)), 2, "logout with {logout}");
            let (again, joined) = flights
                .run_bounded(key(replayed), 10, renewing(&calls, 8, None))
                .await;
            assert_eq!(
                (again, joined),
                (Err(TestError::Ended), Joined::Grace),
                "logout with {logout}, replay {replayed}"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 1, "no second call");
        }
    }

    /// Sessions 1, 2 and 3 each renewed into the next: a chain of four keys, three kept results.
    async fn chain_of_three_renewals() -> (Arc<Flights>, Arc<AtomicUsize>) {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        for n in 1..=3u8 {
            let (v, _) = flights
                .run_bounded(key(n), 10, renewing(&calls, n.into(), Some(key(n + 1))))
                .await;
            assert_eq!(v, Ok(n.into()));
        }
        (flights, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn a_chain_knows_its_newest_result_and_says_when_it_was_ended() {
        let (flights, _) = chain_of_three_renewals().await;
        // Whichever key of the chain asks, the newest result is the last renewal's.
        for n in 1..=4u8 {
            assert_eq!(flights.newest_kept(key(n)), Some(3), "key {n}");
            assert!(!flights.leaving(&key(n), false));
        }
        assert_eq!(flights.newest_kept(key(9)), None);
        flights.end(key(2));
        for n in 1..=4u8 {
            assert!(flights.leaving(&key(n), false), "key {n}");
            assert_eq!(flights.newest_kept(key(n)), None);
        }
        assert!(!flights.leaving(&key(9), false));
        // Tombstones last the grace window.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!flights.leaving(&key(1), false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_held_by_a_slow_answer_lasts_until_a_grace_window_after_it() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        let (v, _) = flights
            .run_bounded(key(1), 10, renewing(&calls, 7, Some(key(2))))
            .await;
        assert_eq!(v, Ok(7));
        // The request takes the result to a slow app: 40 s, past the grace window.
        assert!(flights.hold(&key(1)));
        tokio::time::advance(Duration::from_secs(40)).await;
        // Another request with the old cookies meanwhile: the kept result, no second call.
        let (v, joined) = flights
            .run_bounded(key(1), 10, renewing(&calls, 8, None))
            .await;
        assert_eq!((v, joined), (Ok(7), Joined::Grace));
        // The slow answer leaves; the result stays a grace window from then.
        assert!(!flights.leaving(&key(1), true));
        tokio::time::advance(Duration::from_secs(25)).await;
        let (v, _) = flights
            .run_bounded(key(1), 10, renewing(&calls, 8, None))
            .await;
        assert_eq!(v, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The chain still links: a logout with the renewed cookies ends the old ones.
        assert_eq!(flights.end(key(2)), 2);
        tokio::time::advance(Duration::from_secs(31)).await;
        let (v, _) = flights
            .run_bounded(key(1), 10, renewing(&calls, 9, None))
            .await;
        assert_eq!(v, Ok(9), "every entry expired once its window passed");
        assert!(!flights.hold(&key(3)), "nothing to hold for an unknown key");
    }

    #[tokio::test(start_paused = true)]
    async fn chains_of_several_renewals_end_together_and_unknown_keys_are_left_alone() {
        let (flights, calls) = chain_of_three_renewals().await;
        // An unrelated session and a key nobody has seen.
        let (other, _) = flights
            .run_bounded(key(9), 10, renewing(&calls, 9, Some(key(10))))
            .await;
        assert_eq!(other, Ok(9));
        assert_eq!(flights.end(key(50)), 0);
        assert_eq!(flights.len(), 4);
        // The newest cookies end the three renewals before them.
        assert_eq!(flights.end(key(4)), 4);
        for n in 1..=4u8 {
            let (v, _) = flights
                .run_bounded(key(n), 10, renewing(&calls, 0, None))
                .await;
            assert_eq!(v, Err(TestError::Ended), "key {n}");
        }
        let (v, joined) = flights
            .run_bounded(key(9), 10, renewing(&calls, 0, None))
            .await;
        assert_eq!((v, joined), (Ok(9), Joined::Grace));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn tombstones_expire_with_the_grace_window_and_count_against_the_bound() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        let _ = flights
            .run_bounded(key(1), 10, renewing(&calls, 1, Some(key(2))))
            .await;
        flights.end(key(1));
        assert_eq!(flights.len(), 2, "two tombstones");
        tokio::time::advance(Duration::from_secs(29)).await;
        let (v, _) = flights
            .run_bounded(key(1), 10, renewing(&calls, 2, None))
            .await;
        assert_eq!(v, Err(TestError::Ended));
        tokio::time::advance(Duration::from_secs(2)).await;
        let (v, joined) = flights
            .run_bounded(key(1), 10, renewing(&calls, 3, None))
            .await;
        assert_eq!(
            (v, joined),
            (Ok(3), Joined::Led),
            "a new refresh after the window"
        );
        assert_eq!(flights.len(), 1, "the tombstones are gone");

        // A full table evicts the oldest tombstones like the oldest kept results.
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 4));
        for n in 0..4u8 {
            let _ = flights
                .run_bounded(key(n), 10, renewing(&calls, n.into(), None))
                .await;
            flights.end(key(n));
        }
        assert_eq!(flights.len(), 4);
        let (v, _) = flights
            .run_bounded(key(20), 10, renewing(&calls, 20, None))
            .await;
        assert_eq!(v, Ok(20));
        assert!(flights.len() <= 4);
        let (v, _) = flights
            .run_bounded(key(0), 10, renewing(&calls, 5, None))
            .await;
        assert_eq!(v, Ok(5), "the oldest tombstone made room");

        // With no grace window nothing is kept, so ending leaves nothing behind.
        let flights = Arc::new(Flights::new(Duration::ZERO, 4));
        let f = flights.clone();
        let running = tokio::spawn(async move {
            f.run_bounded(key(1), 10, || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Landing::Renewed {
                    value: 1,
                    next: None,
                }
            })
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(flights.end(key(1)), 1);
        assert!(flights.is_empty());
        // The waiters of a flight ended meanwhile still get the logout.
        assert_eq!(running.await.unwrap().0, Err(TestError::Ended));
        assert!(flights.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flight_running_when_its_session_ends_stores_nothing() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        let f = flights.clone();
        let leader = tokio::spawn(async move {
            f.run_bounded(key(1), 10, || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Landing::Renewed {
                    value: 1,
                    next: Some(key(2)),
                }
            })
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(flights.end(key(1)), 1);
        // The waiters of the flight get the logout, not tokens that would bring it back ...
        assert_eq!(leader.await.unwrap().0, Err(TestError::Ended));
        // ... and neither the old nor the new cookies can refresh.
        for n in [1u8, 2] {
            let (v, _) = flights
                .run_bounded(key(n), 10, renewing(&calls, 2, None))
                .await;
            assert_eq!(v, Err(TestError::Ended), "key {n}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // A failure landing on an ended session leaves the tombstone alone.
        let f = flights.clone();
        let failing = tokio::spawn(async move {
            f.run_bounded(key(7), 10, || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Landing::Failed(TestError::Failed)
            })
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(flights.end(key(7)), 1);
        assert_eq!(failing.await.unwrap().0, Err(TestError::Failed));
        let (v, _) = flights
            .run_bounded(key(7), 10, renewing(&calls, 2, None))
            .await;
        assert_eq!(v, Err(TestError::Ended));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_ends_the_chain_it_belongs_to() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        let _ = flights
            .run_bounded(key(1), 10, renewing(&calls, 1, Some(key(2))))
            .await;
        // The renewed cookies are refused by the auth API.
        let (v, joined) = flights
            .run_bounded(key(2), 10, || async { Landing::Ended(TestError::Rejected) })
            .await;
        assert_eq!((v, joined), (Err(TestError::Rejected), Joined::Led));
        for n in [1u8, 2] {
            let (v, _) = flights
                .run_bounded(key(n), 10, renewing(&calls, 9, None))
                .await;
            assert_eq!(
                v,
                Err(TestError::Ended),
                "key {n}: the kept result is gone too"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A plain failure ends nothing.
        let (v, _) = flights
            .run_bounded(key(5), 10, || async { Landing::Failed(TestError::Failed) })
            .await;
        assert_eq!(v, Err(TestError::Failed));
        let (v, _) = flights
            .run_bounded(key(5), 10, renewing(&calls, 5, None))
            .await;
        assert_eq!(v, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn flights_beyond_the_bound_are_busy_at_once_and_waiters_are_not_counted() {
        let flights = Arc::new(Flights::new(Duration::from_secs(30), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        // Sessions 1 and 2 take the two places; their second requests join, not count.
        for n in [1u8, 2, 1, 2] {
            let (f, c) = (flights.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                f.run_bounded(key(n), 2, move || {
                    c.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Landing::Renewed {
                            value: n.into(),
                            next: None,
                        }
                    }
                })
                .await
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(flights.gate().running(), 2);
        let (v, joined) = flights
            .run_bounded(key(3), 2, renewing(&calls, 3, None))
            .await;
        assert_eq!((v, joined), (Err(TestError::Busy), Joined::Led));
        assert_eq!(flights.len(), 2, "a busy refusal leaves no entry");
        // Another caller of the gate (the backend logout) is refused too.
        assert!(flights.gate().try_acquire(2).is_none());
        for t in tasks {
            assert!(t.await.unwrap().0.is_ok());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(flights.gate().running(), 0, "places are given back");
        let (v, _) = flights
            .run_bounded(key(3), 2, renewing(&calls, 3, None))
            .await;
        assert_eq!(v, Ok(3));
        let permit = flights.gate().try_acquire(1);
        assert!(permit.is_some());
        assert!(flights.gate().try_acquire(1).is_none());
        drop(permit);
        assert!(flights.gate().try_acquire(1).is_some());
    }
}
