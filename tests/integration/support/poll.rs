//! The one bounded wait: every test that waits for something polls a condition here, every
//! 20 ms, and fails naming what it waited for once the limit has passed.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `probe` until it gives a value and returns it; panics with `what` after `limit`.
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls the plain condition `check` until it holds; panics with `what` after `limit`.
pub async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    poll(what, limit, || std::future::ready(check().then_some(()))).await
}

/// Polls the async condition `check` until it holds; panics with `what` after `limit`.
pub async fn until_async<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(what, limit, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

#[tokio::test]
async fn poll_returns_the_first_value_and_until_the_first_true() {
    let mut n = 0;
    let got = poll("the third probe", Duration::from_secs(5), || {
        n += 1;
        std::future::ready((n == 3).then_some(n))
    })
    .await;
    assert_eq!(got, 3);
    let mut m = 0;
    until("the second check", Duration::from_secs(5), || {
        m += 1;
        m == 2
    })
    .await;
    assert_eq!(m, 2);
}

#[tokio::test]
#[should_panic(expected = "never: not within")]
async fn poll_fails_naming_what_it_waited_for() {
    until("never", Duration::from_millis(50), || false).await;
}
