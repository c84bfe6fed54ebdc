//! One refresh per session across several proxy instances, through Redis (issue 13).
//!
//! Two tiers: the requests of one session on one instance share the in-process flight
//! ([`crate::refresh::flight`]); only that flight's leader talks to Redis, through [`SharedStore::coordinate`]:
//!
//! 1. one script reads the session's tombstone and kept result and, when there is neither, takes
//!    the lock (`SET NX PX` with a random token);
//! 2. the winner calls the auth API and, beside the call in the same task, renews its lease
//!    (`PEXPIRE` if the token is still ours) every third of it, so the lease never runs out under
//!    a slow call; then it stores the sealed result for the grace window and deletes the lock
//!    (compare-and-delete, in the same script);
//! 3. the others poll the same script with a growing delay (2 ms doubling to 50 ms): they get
//!    the result as soon as it is stored, or take the lock themselves when it vanished without
//!    one (the winner failed or died).
//!
//! Every command has `refresh.redis.timeout_ms` (a connection found dropped, as after a Redis
//! restart, is tried once more on the reconnected one within it); an error, a timeout or a value
//! that does not open makes the flight go on as in one process (the auth API call of this
//! instance), counted and logged at most every 10 s. What that call gets is still stored for the
//! others once Redis answers again (unless one is stored already), and an auth API rejection
//! first looks for a result another instance stored: with an auth API that rotates refresh
//! tokens, the old cookies on another instance would otherwise replay a rotated token and be
//! logged out. Each request thread has a connection of its own (a
//! `ConnectionManager`, which reconnects by itself), made there at first use: its driver runs on
//! the runtime whose requests send through it, so a command is no hop to another thread and
//! back, and no runtime ever waits on another one's connection; a runtime that ends takes only
//! its own connection with it (the next one made on that thread is new).

pub mod seal;
pub mod settings;

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, Registry};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::hex;
use crate::ops::throttle::Throttle;
use crate::refresh::auth_api::AuthApiError;
use crate::refresh::flight::{Landing, SessionEnded, SessionKey};
use crate::refresh::renew::{RefreshError, RenewedSession};
use seal::{Seal, SessionKeys};
pub use settings::{SharedStoreSettings, StoreKind};

/// Reads the tombstone and the kept result, else takes the lock (already ours: a command tried
/// again after its answer was lost). KEYS: ended, result, lock. ARGV: token, lease ms.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'E' end
local r = redis.call('GET', KEYS[2])
if r then return 'R' .. r end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'W' end
if redis.call('GET', KEYS[3]) == ARGV[1] then return 'W' end
return 'L'
";

/// Extends the lease if it is still ours. KEYS: lock. ARGV: token, lease ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Compare-and-delete. KEYS: lock. ARGV: token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Releases the lock and stores the result, unless the session was ended meanwhile, or, with
/// ARGV[5] = '1' (a refresh made without the lock), a result is stored already.
/// KEYS: ended, result, lock, next. ARGV: token, value, ms, next (hex or ''), keep ('1' or '0').
const STORE: &str = r"
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'E' end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 'K' end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3]) end
return 'S'
";

/// Ends one session if Redis knows anything of it; returns its chain links.
/// KEYS: ended, result, next, origin, lock. ARGV: ms.
const END: &str = r"
local n = redis.call('GET', KEYS[3])
local o = redis.call('GET', KEYS[4])
local known = n or o or redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[5]) == 1
if known then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
return {n or '', o or ''}
";

/// Longest chain ended across instances at once.
const MAX_CHAIN: usize = 16;
const POLL_FIRST: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(50);
/// Longest pause between attempts to store a result made alone: every refresh of an outage
/// retries in the background, so a few attempts each, not one per poll of a waiter.
const STORE_RETRY_MAX: Duration = Duration::from_millis(400);

/// The cross-instance counters, registered in the proxy's registry.
pub struct StoreMetrics {
    pub errors: IntCounter,
    pub fallbacks: IntCounter,
    pub waits: IntCounter,
    pub contention: IntCounter,
    pub lease_renewals: IntCounter,
    pub shared_hits: IntCounter,
    pub ended: IntCounter,
}

impl StoreMetrics {
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        StoreMetrics {
            errors: counter(
                "shared_store_errors_total",
                "Redis commands that failed, timed out or answered something unusable",
            ),
            fallbacks: counter(
                "shared_store_fallbacks_total",
                "Refreshes that went on without sharing because Redis failed",
            ),
            waits: counter(
                "shared_store_waits_total",
                "Refreshes that waited for another instance holding the session's lock",
            ),
            contention: counter(
                "shared_store_lock_contention_total",
                "Lock attempts that found the session's lock held by another instance",
            ),
            lease_renewals: counter(
                "shared_store_lease_renewals_total",
                "Lock leases extended while an auth API call ran",
            ),
            shared_hits: counter(
                "shared_store_results_total",
                "Refreshes answered with a result another instance stored (no auth API call here)",
            ),
            ended: counter(
                "shared_store_ended_total",
                "Sessions found ended (logout or rejection) on another instance",
            ),
        }
    }
}

#[derive(Debug)]
enum StoreError {
    Redis(redis::RedisError),
    Timeout,
    Garbage(&'static str),
    /// A command outside any runtime (never from a request).
    NoRuntime,
    Client(redis::RedisError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The server's error code (`NOAUTH`, `WRONGPASS`, `ERR`), else the client's category
            // (`I/O error`, `authentication failed`): never the server's text, which may hold a
            // key.
            StoreError::Redis(e) => {
                let code = e
                    .code()
                    .filter(|c| c.bytes().all(|b| b.is_ascii_uppercase()));
                match (code, e.category()) {
                    (Some(code), _) => write!(f, "Redis error ({code})"),
                    (None, "") => write!(f, "Redis error ({:?})", e.kind()),
                    (None, category) => write!(f, "Redis error ({category})"),
                }
            }
            StoreError::Timeout => f.write_str("Redis command timed out"),
            StoreError::Garbage(what) => write!(f, "unusable answer from Redis: {what}"),
            StoreError::NoRuntime => f.write_str("no runtime to run the Redis client on"),
            StoreError::Client(e) => write!(f, "the Redis client could not start ({:?})", e.kind()),
        }
    }
}

impl StoreError {
    /// Redis answered, and refused who this client is: no password where one is needed, a
    /// wrong one, or a user without the right to run scripts.
    fn refused_credentials(&self) -> bool {
        match self {
            StoreError::Redis(e) | StoreError::Client(e) => {
                e.kind() == redis::ErrorKind::AuthenticationFailed
                    || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
            }
            _ => false,
        }
    }
}

/// Why the start probe's `PING` failed.
#[derive(Debug, PartialEq, Eq)]
pub struct PingFailure {
    pub refused: bool,
    pub what: String,
}

enum Acquired {
    Ended,
    Result(Vec<u8>),
    Won,
    Locked,
}

struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    store: Script,
    end: Script,
}

/// One session's refresh, as the in-process flight's leader hands it over.
pub struct SharedFlight<'a> {
    pub key: SessionKey,
    /// From the running configuration (`SharedStoreSettings::value_key`).
    pub value_key: &'a [u8; 32],
    /// The session's auth API cookies, as sent to the auth API.
    pub api_cookies: &'a str,
    /// `auth_api.timeout_ms`: the lease outlives it.
    pub auth_timeout: Duration,
    pub grace: Duration,
}

/// One session's refresh on this instance, as every step with Redis needs it.
#[derive(Clone)]
struct Refreshing {
    key: SessionKey,
    keys: SessionKeys,
    seal: Seal,
    /// The lock's value while this instance holds it.
    token: String,
    /// Outlives the auth API's deadline, and is renewed while the call runs anyway.
    lease: Duration,
    grace: Duration,
}

/// A connection of one store on one thread, with a task of the runtime it was made on that never
/// ends by itself: once that task is finished, the runtime is gone, and so is the connection's
/// driver.
struct ThreadConnection {
    store: u64,
    runtime: AbortHandle,
    conn: ConnectionManager,
}

thread_local! {
    static CONNECTIONS: RefCell<Vec<ThreadConnection>> = const { RefCell::new(Vec::new()) };
}

static STORE_IDS: AtomicU64 = AtomicU64::new(0);

/// The Redis client, and what the protocol needs.
pub struct SharedStore {
    /// Tells this store's connections from another's on the same thread (tests run several).
    id: u64,
    redis: redis::Client,
    connection: ConnectionManagerConfig,
    scripts: Scripts,
    settings: SharedStoreSettings,
    pub metrics: StoreMetrics,
    error_log: Throttle,
}

impl SharedStore {
    /// The store; each thread connects at its first command (after Pingora's daemon fork, `-d`,
    /// which keeps no thread), and again after any failure.
    pub fn start(settings: SharedStoreSettings, registry: &Registry) -> Result<Arc<Self>, String> {
        let redis = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("refresh.redis.url: {:?}", e.kind()))?;
        let connection = ConnectionManagerConfig::new()
            // A (TLS) connection may take longer than one command: requests stop waiting at
            // the command timeout, the connection goes on being made for the next ones.
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_secs(1))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        Ok(Arc::new(SharedStore {
            id: STORE_IDS.fetch_add(1, Ordering::Relaxed),
            redis,
            connection,
            scripts: Scripts {
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                store: Script::new(STORE),
                end: Script::new(END),
            },
            settings,
            metrics: StoreMetrics::new(registry),
            error_log: Throttle::new(),
        }))
    }

    /// This thread's connection, made on its runtime at first use.
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        CONNECTIONS.with_borrow_mut(|connections| {
            connections.retain(|c| !c.runtime.is_finished());
            if let Some(c) = connections.iter().find(|c| c.store == self.id) {
                return Ok(c.conn.clone());
            }
            let runtime = Handle::try_current().map_err(|_| StoreError::NoRuntime)?;
            let conn = ConnectionManager::new_lazy_with_config(
                self.redis.clone(),
                self.connection.clone(),
            )
            .map_err(StoreError::Client)?;
            let runtime = runtime.spawn(std::future::pending::<()>()).abort_handle();
            connections.push(ThreadConnection {
                store: self.id,
                runtime,
                conn: conn.clone(),
            });
            Ok(conn)
        })
    }

    /// The value key of the configuration the store started with.
    pub fn value_key(&self) -> [u8; 32] {
        self.settings.value_key
    }

    pub fn display(&self) -> &str {
        &self.settings.display
    }

    /// One `PING`: whether Redis answers now, and if not, whether it refused this client's
    /// credentials (a configuration to fix, not an outage to wait out).
    pub async fn ping(&self) -> Result<(), PingFailure> {
        self.run(
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await
        .map(|_| ())
        .map_err(|e| PingFailure {
            refused: e.refused_credentials(),
            what: e.to_string(),
        })
    }

    /// Runs one command on this thread's connection, within the timeout. A connection found
    /// dropped (Redis restarted, or closed it) gets the command once more, on the connection the
    /// client makes again, within the same timeout: every command here may run twice (the lock
    /// script knows its own token), and without this each thread's first refresh after a
    /// restart would go on alone.
    async fn run<T, F, C>(&self, command: C) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
        C: Fn(ConnectionManager) -> F,
    {
        let deadline = Instant::now() + self.settings.timeout;
        let timed = |conn| tokio::time::timeout_at(deadline, command(conn));
        let answer = match timed(self.connection()?).await {
            Ok(Err(e)) if e.is_connection_dropped() => timed(self.connection()?).await,
            answer => answer,
        };
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Counts the error; one log line every 10 s at most, with how many there were.
    fn failed(&self, what: &str, error: &StoreError) {
        self.metrics.errors.inc();
        if let Some(unlogged) = self.error_log.tick(1) {
            log::warn!(
                "shared store {}: {what}: {error} ({unlogged} error(s) since the last line); refreshes go on in this process",
                self.settings.display
            );
        }
    }

    async fn acquire(
        &self,
        keys: &SessionKeys,
        token: &str,
        lease: Duration,
    ) -> Result<Acquired, StoreError> {
        let answer: Vec<u8> = self
            .run(|mut conn| async move {
                self.scripts
                    .acquire
                    .key(&keys.ended)
                    .key(&keys.result)
                    .key(&keys.lock)
                    .arg(token)
                    .arg(millis(lease))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match answer.split_first() {
            Some((b'E', [])) => Ok(Acquired::Ended),
            Some((b'W', [])) => Ok(Acquired::Won),
            Some((b'L', [])) => Ok(Acquired::Locked),
            Some((b'R', value)) => Ok(Acquired::Result(value.to_vec())),
            _ => Err(StoreError::Garbage("lock script")),
        }
    }

    /// The outcome of a refresh of `key` for the whole fleet: a result another instance stored,
    /// the logout when another instance ended the session, or `call` (this instance's auth API
    /// call) run under the session's lock and stored for the others. Redis failing never fails
    /// it: `call` then runs as in one process.
    pub async fn coordinate<C>(
        self: Arc<Self>,
        flight: SharedFlight<'_>,
        call: C,
        next: impl FnOnce(&RenewedSession) -> Option<SessionKey>,
    ) -> Landing<Arc<RenewedSession>, RefreshError>
    where
        C: Future<Output = Result<Arc<RenewedSession>, RefreshError>>,
    {
        let SharedFlight {
            key,
            value_key,
            api_cookies,
            auth_timeout,
            grace,
        } = flight;
        let r = Refreshing {
            key,
            keys: SessionKeys::new(&self.settings.key_prefix, &key),
            seal: Seal::new(value_key, api_cookies.as_bytes()),
            token: hex::encode(&rand::random::<[u8; 16]>()),
            lease: auth_timeout + Duration::from_secs(1),
            grace,
        };
        let (keys, seal) = (&r.keys, &r.seal);
        let give_up = Instant::now() + r.lease + auth_timeout;
        let mut delay = POLL_FIRST;
        let mut waited = false;
        loop {
            match self.acquire(keys, &r.token, r.lease).await {
                // Another instance was seen calling: its result is awaited through a stall
                // (it stores it once Redis answers), as a call here would replay the token
                // that call rotates.
                Err(error) if waited && Instant::now() + delay <= give_up => {
                    self.failed("waiting for another instance", &error);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(POLL_MAX);
                }
                Err(error) => {
                    self.failed("taking the refresh lock", &error);
                    self.metrics.fallbacks.inc();
                    return self.alone(&r, call, next).await;
                }
                Ok(Acquired::Ended) => {
                    self.metrics.ended.inc();
                    return Landing::Ended(SessionEnded.into());
                }
                Ok(Acquired::Result(value)) => match open(seal, &value, &keys.result) {
                    Some(renewed) => {
                        self.metrics.shared_hits.inc();
                        let next = next(&renewed);
                        return Landing::Renewed {
                            value: renewed,
                            next,
                        };
                    }
                    None => {
                        self.failed(
                            "reading a kept result",
                            &StoreError::Garbage("a value that does not open"),
                        );
                        self.metrics.fallbacks.inc();
                        return self.alone(&r, call, next).await;
                    }
                },
                Ok(Acquired::Won) => {
                    return self.lead(&r, call, next).await;
                }
                Ok(Acquired::Locked) => {
                    self.metrics.contention.inc();
                    if !waited {
                        waited = true;
                        self.metrics.waits.inc();
                    }
                    if Instant::now() + delay > give_up {
                        // The holder renews a lease it no longer uses, or clocks disagree:
                        // bounded, then this instance goes on alone.
                        self.failed("waiting for another instance", &StoreError::Timeout);
                        self.metrics.fallbacks.inc();
                        return self.alone(&r, call, next).await;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(POLL_MAX);
                }
            }
        }
    }

    async fn lead<C>(
        self: &Arc<Self>,
        r: &Refreshing,
        call: C,
        next: impl FnOnce(&RenewedSession) -> Option<SessionKey>,
    ) -> Landing<Arc<RenewedSession>, RefreshError>
    where
        C: Future<Output = Result<Arc<RenewedSession>, RefreshError>>,
    {
        // The lease is renewed beside the call, in this task: it stops with the call, or when
        // this future is dropped first.
        let result = {
            let renewing = self.renew_lease(&r.keys.lock, &r.token, r.lease);
            tokio::pin!(call, renewing);
            tokio::select! {
                biased;
                result = &mut call => result,
                () = &mut renewing => call.await,
            }
        };
        match result {
            Ok(renewed) => {
                let next = next(&renewed);
                self.publish(r, renewed, next, false).await
            }
            Err(error) if error.ends_session() => {
                if is_rejection(&error)
                    && let Some(landing) = self.rescue(r, next, None).await
                {
                    self.release(&r.keys, &r.token).await;
                    return landing;
                }
                // A rejection (or a renewal the browser cannot carry) ends the session on every
                // instance, as a logout does. Ended while the lock is still ours, so the script
                // knows the session.
                self.end_keys(r.key, r.grace, r.lease).await;
                self.release(&r.keys, &r.token).await;
                Landing::Ended(error)
            }
            Err(error) => {
                // Not kept: the waiters on other instances find the lock gone and try again.
                self.release(&r.keys, &r.token).await;
                Landing::Failed(error)
            }
        }
    }

    /// Extends the lease every third of it while the call runs; it stops at the first failure
    /// (the waiters' bound covers the rest).
    async fn renew_lease(&self, lock: &str, token: &str, lease: Duration) {
        loop {
            tokio::time::sleep(lease / 3).await;
            let renewed = self
                .run(|mut conn| async move {
                    let mut invocation = self.scripts.renew.key(lock);
                    invocation.arg(token).arg(millis(lease));
                    invocation.invoke_async::<i64>(&mut conn).await
                })
                .await;
            match renewed {
                Ok(1) => self.metrics.lease_renewals.inc(),
                _ => return,
            }
        }
    }

    /// Stores `value` (sealed) for the grace window and releases the lock; with `unless_stored`,
    /// not over a result another instance stored first.
    async fn store(
        &self,
        r: &Refreshing,
        value: &[u8],
        next: Option<SessionKey>,
        unless_stored: bool,
    ) -> Result<Stored, StoreError> {
        let (keys, token, keep_ms) = (&r.keys, &r.token, keep_ms(r.grace));
        let next_hex = &next.map(|n| hex::encode(n.as_bytes())).unwrap_or_default();
        let store = self.run(|mut conn| async move {
            let mut invocation = self.scripts.store.prepare_invoke();
            invocation
                .key(&keys.ended)
                .key(&keys.result)
                .key(&keys.lock)
                .key(&keys.next)
                .arg(token)
                .arg(value)
                .arg(keep_ms)
                .arg(next_hex)
                .arg(if unless_stored { "1" } else { "0" });
            invocation.invoke_async::<String>(&mut conn).await
        });
        // The link back, so a logout carrying the renewed cookies finds the old ones: another
        // hash tag, so another slot and its own command, sent beside the script (one round
        // trip). Harmless if the script finds the session ended: those cookies are never sent.
        let link = async {
            let Some(next) = next else { return };
            let origin = &SessionKeys::origin_of(&self.settings.key_prefix, &next);
            let own = &hex::encode(r.key.as_bytes());
            let linked = self
                .run(|mut conn| async move {
                    let mut set = redis::cmd("SET");
                    set.arg(origin).arg(own).arg("PX").arg(keep_ms);
                    set.query_async::<()>(&mut conn).await
                })
                .await;
            if let Err(error) = linked {
                self.failed("linking a renewed session", &error);
            }
        };
        let (answer, ()) = tokio::join!(store, link);
        match answer?.as_str() {
            "S" => Ok(Stored::Kept),
            "E" => Ok(Stored::Ended),
            "K" => Ok(Stored::Already),
            _ => Err(StoreError::Garbage("store script")),
        }
    }

    /// A refresh this instance made, sealed and stored for the other instances; `alone` when it
    /// was made without the lock: a result stored first by another instance stays (both are the
    /// auth API's), and a failure is not logged again (it was, when the lock could not be taken).
    async fn publish(
        self: &Arc<Self>,
        r: &Refreshing,
        renewed: Arc<RenewedSession>,
        next: Option<SessionKey>,
        alone: bool,
    ) -> Landing<Arc<RenewedSession>, RefreshError> {
        let records = renewed.records();
        let value = r
            .seal
            .seal(records.iter().map(Vec::as_slice), &r.keys.result);
        match self.store(r, &value, next, alone).await {
            // Logged out on another instance while the call ran: these tokens must not bring
            // the session back.
            Ok(Stored::Ended) => {
                self.metrics.ended.inc();
                return Landing::Ended(SessionEnded.into());
            }
            Ok(Stored::Kept | Stored::Already) => {}
            // Redis stalled: tried again in the background, for the instances waiting for this
            // result (polling the lock, or refused the token this one rotated: `rescue`).
            Err(error) => {
                if !alone {
                    self.failed("storing a result", &error);
                }
                self.store_later(r, value, next);
            }
        }
        Landing::Renewed {
            value: renewed,
            next,
        }
    }

    /// Stores a result whose store failed (made alone, or by a leader) once Redis answers
    /// again, in the background (the answer does not wait), never over one already stored;
    /// tried until a lease from now (as long as another instance refused meanwhile polls for
    /// it), with pauses doubling to [`STORE_RETRY_MAX`]: about a dozen attempts.
    fn store_later(self: &Arc<Self>, r: &Refreshing, value: Vec<u8>, next: Option<SessionKey>) {
        let (store, r) = (Arc::clone(self), r.clone());
        let until = Instant::now() + r.lease;
        tokio::spawn(async move {
            let mut delay = POLL_FIRST;
            while Instant::now() + delay <= until {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(STORE_RETRY_MAX);
                if store.store(&r, &value, next, true).await.is_ok() {
                    return;
                }
            }
        });
    }

    /// The refresh when Redis failed to coordinate it: this instance's call, as in one process;
    /// then its result is stored for the others all the same, unless one is stored already
    /// (Redis may answer again by the time the auth API has), and a rejection first looks for a
    /// result another instance stored (it may have refreshed the session meanwhile, and the
    /// auth API then refuses the token it rotated).
    async fn alone<C>(
        self: &Arc<Self>,
        r: &Refreshing,
        call: C,
        next: impl FnOnce(&RenewedSession) -> Option<SessionKey>,
    ) -> Landing<Arc<RenewedSession>, RefreshError>
    where
        C: Future<Output = Result<Arc<RenewedSession>, RefreshError>>,
    {
        match call.await {
            Ok(renewed) => {
                let next = next(&renewed);
                self.publish(r, renewed, next, true).await
            }
            Err(error) if error.ends_session() => {
                // The other instance may still be waiting for Redis to store its result.
                let rescued = match is_rejection(&error) {
                    true => self.rescue(r, next, Some(Instant::now() + r.lease)).await,
                    false => None,
                };
                rescued.unwrap_or(Landing::Ended(error))
            }
            Err(error) => Landing::Failed(error),
        }
    }

    /// After the auth API rejected a session's refresh: the result another instance stored for
    /// it, if any (the rejected token is the one that instance's refresh rotated); looked for
    /// again until `until` when given (a refresh made without Redis stores it late).
    async fn rescue(
        &self,
        r: &Refreshing,
        next: impl FnOnce(&RenewedSession) -> Option<SessionKey>,
        until: Option<Instant>,
    ) -> Option<Landing<Arc<RenewedSession>, RefreshError>> {
        let result = &r.keys.result;
        let mut delay = POLL_FIRST;
        let value = loop {
            let value: Result<Option<Vec<u8>>, _> = self
                .run(|mut conn| async move {
                    redis::cmd("GET").arg(result).query_async(&mut conn).await
                })
                .await;
            match value {
                Ok(Some(value)) => break value,
                Ok(None) | Err(_) if until.is_some_and(|u| Instant::now() + delay <= u) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(POLL_MAX);
                }
                Ok(None) | Err(_) => return None,
            }
        };
        let renewed = open(&r.seal, &value, result)?;
        self.metrics.shared_hits.inc();
        Some(Landing::Renewed {
            next: next(&renewed),
            value: renewed,
        })
    }

    async fn release(&self, keys: &SessionKeys, token: &str) {
        let released: Result<i64, _> = self
            .run(|mut conn| async move {
                self.scripts
                    .release
                    .key(&keys.lock)
                    .arg(token)
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
        if let Err(error) = released {
            // The lease expires by itself.
            self.failed("releasing the refresh lock", &error);
        }
    }

    /// Ends `key`'s session on every instance (logout): a tombstone for the grace window for
    /// it and every session chained to it in Redis. Errors are counted; the logout goes on.
    pub async fn end(&self, key: SessionKey, grace: Duration, auth_timeout: Duration) {
        self.end_keys(key, grace, auth_timeout + Duration::from_secs(1))
            .await;
    }

    /// The tombstones outlive the grace window and any `lease` still running, so a refresh
    /// landing after the logout always finds them and stores nothing.
    async fn end_keys(&self, first: SessionKey, grace: Duration, lease: Duration) {
        let keep = millis(grace.max(lease));
        let mut chain = vec![first];
        let mut at = 0;
        while at < chain.len() {
            let keys = &SessionKeys::new(&self.settings.key_prefix, &chain[at]);
            at += 1;
            let links: Result<Vec<Vec<u8>>, _> = self
                .run(|mut conn| async move {
                    let mut invocation = self.scripts.end.prepare_invoke();
                    for name in [
                        &keys.ended,
                        &keys.result,
                        &keys.next,
                        &keys.origin,
                        &keys.lock,
                    ] {
                        invocation.key(name);
                    }
                    invocation.arg(keep).invoke_async(&mut conn).await
                })
                .await;
            let links = match links {
                Ok(links) => links,
                Err(error) => {
                    self.failed("ending a session", &error);
                    return;
                }
            };
            for link in links.iter().filter(|l| !l.is_empty()) {
                match hex::decode::<32>(link).map(SessionKey::from_bytes) {
                    Some(k) if !chain.contains(&k) && chain.len() < MAX_CHAIN => chain.push(k),
                    Some(_) => {}
                    None => self.failed("ending a session", &StoreError::Garbage("chain link")),
                }
            }
        }
    }

    /// The newest result Redis keeps along the chain that starts at `key` (the session of
    /// `api_cookies`), each opened with the cookies of the session it renewed; `next` gives the
    /// cookies and key of the session a result starts. What a backend logout must name when its
    /// cookies are older than the browser's because another instance refreshed them. `None`
    /// when Redis keeps no result for `key` (or cannot say: counted, and the logout goes on).
    pub async fn newest_stored(
        &self,
        value_key: &[u8; 32],
        key: SessionKey,
        api_cookies: &str,
        next: impl Fn(&str, &RenewedSession) -> (String, SessionKey),
    ) -> Option<Arc<RenewedSession>> {
        let (mut key, mut cookies) = (key, api_cookies.to_owned());
        let mut newest = None;
        for _ in 0..MAX_CHAIN {
            let result = SessionKeys::new(&self.settings.key_prefix, &key).result;
            let name = &result;
            let value: Result<Option<Vec<u8>>, _> =
                self.run(|mut conn| async move {
                    redis::cmd("GET").arg(name).query_async(&mut conn).await
                })
                .await;
            let value = match value {
                Ok(value) => value,
                Err(error) => {
                    self.failed("reading the newest result of a logout's session", &error);
                    break;
                }
            };
            let seal = Seal::new(value_key, cookies.as_bytes());
            let Some(renewed) = value.and_then(|v| open(&seal, &v, &result)) else {
                break;
            };
            (cookies, key) = next(&cookies, &renewed);
            newest = Some(renewed);
        }
        newest
    }

    /// Whether another instance ended the session (checked on a grace hit kept in this
    /// process); `None` when Redis cannot say (the kept result then serves, as in one process).
    pub async fn is_ended(&self, key: SessionKey) -> Option<bool> {
        let ended = &SessionKeys::new(&self.settings.key_prefix, &key).ended;
        match self
            .run(|mut conn| async move {
                redis::cmd("EXISTS")
                    .arg(ended)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
        {
            Ok(n) => {
                if n > 0 {
                    self.metrics.ended.inc();
                }
                Some(n > 0)
            }
            Err(error) => {
                self.failed("checking a kept result", &error);
                None
            }
        }
    }
}

/// What the store script did with a result.
enum Stored {
    Kept,
    /// Another instance's result was there first (a refresh made without the lock).
    Already,
    /// The session was ended meanwhile: this result must not bring it back.
    Ended,
}

/// How long a stored result is kept: the grace window, at least a second, so the other
/// instances' waiters find it even with `grace_secs: 0`.
fn keep_ms(grace: Duration) -> u64 {
    millis(grace.max(Duration::from_secs(1)))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn open(seal: &Seal, value: &[u8], aad: &str) -> Option<Arc<RenewedSession>> {
    let records = seal.open(value, aad).ok()?;
    RenewedSession::from_records(&records).ok().map(Arc::new)
}

/// Says at start whether Redis answers (a warning when it does not: sharing begins once it
/// does). A Pingora background service, so it runs after the daemon fork, as the client does.
pub struct StartProbe(pub Arc<SharedStore>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for StartProbe {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        match self.0.ping().await {
            Ok(()) => log::info!("refresh results shared through {}", self.0.display()),
            Err(PingFailure {
                refused: true,
                what,
            }) => log::error!(
                "refresh.redis: {} refuses this proxy's credentials ({what}): check the user and password of refresh.redis.url_env; refreshes stay in this process until it accepts them",
                self.0.display()
            ),
            Err(PingFailure { what, .. }) => log::warn!(
                "refresh.redis: {} does not answer ({what}); refreshes stay in this process until it does",
                self.0.display()
            ),
        }
    }
}

/// The auth API refused the refresh: another instance may have refreshed the session first,
/// and its stored result is looked for before the session ends.
fn is_rejection(error: &RefreshError) -> bool {
    matches!(error, RefreshError::AuthApi(AuthApiError::Rejected(_)))
}
