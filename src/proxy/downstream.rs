//! Browser-side connection timeouts Pingora 0.9.1 does not apply by itself.
//!
//! - Between requests (`downstream.keepalive_timeout_secs`): the [`Deadlined`] stream below
//!   ends a connection idle that long (Pingora keeps a reused connection forever otherwise;
//!   its own keep-alive timeout would arm a timer for every request); for HTTP/2 the same value
//!   is `HttpServerOptions::h2_idle_timeout`.
//! - The whole request header (`downstream.header_timeout_secs`): Pingora only bounds each read,
//!   so a client dripping one byte a minute holds a connection forever. [`HeaderDeadlineApp`]
//!   wraps every HTTP/1 connection's stream in a [`Deadlined`] stream that answers end-of-file
//!   once a header has taken longer than the limit, from the connection's start for the first
//!   request (nginx's `client_header_timeout`) and from the first byte of each later one. The
//!   proxy tells the stream where headers end: [`header_read`] when a request reaches
//!   `request_filter`, [`next_request`] when it is logged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Applies `downstream.keepalive_timeout_secs` to an HTTP/1 session the client keeps alive
/// (Pingora's "keep alive" is otherwise unbounded); `0` closes after each answer, as nginx's
/// `keepalive_timeout 0`. A session the client closes (`Connection: close`, HTTP/1.0) stays so.
///
/// On a [`Deadlined`] stream the stream itself ends the idle connection (see
/// [`next_request`]), so Pingora arms no timer of its own for every request; only a stream
/// without one gets Pingora's keep-alive timeout.
pub fn keepalive(session: &mut Session, secs: u64) {
    if session.get_keepalive() == Some(0) {
        if secs == 0 {
            session.set_keepalive(None);
        } else if deadlined(session).is_none() {
            session.set_keepalive(Some(secs));
        }
    }
}

/// HTTP/1.1 pipelining (RFC 9112 §9.3.2): a request the client sends before it has the answer
/// to the previous one is served after it, in order. Pingora's default otherwise answers the
/// previous request itself with a 400 (`Sent data after end of body`) when the next one's bytes
/// arrive while that answer is pending (a slow app, a refresh under way): the app's answer, and
/// the connection, lost for a request that was fine.
pub fn pipelining(session: &mut Session) {
    session.as_downstream_mut().set_pipelining_enabled(true);
}

/// The header of the current request is complete: no deadline until the next one.
pub fn header_read(session: &Session) {
    if let Some(stream) = deadlined(session) {
        stream.phase.store(DONE, Ordering::Relaxed);
    }
}

/// The request is over: the connection may stay idle for `keepalive` (`downstream.
/// keepalive_timeout_secs`), and the next header's deadline starts at its first byte.
pub fn next_request(session: &Session, header_timeout: Duration, keepalive: Duration) {
    if let Some(stream) = deadlined(session) {
        stream.idle(header_timeout, keepalive);
    }
}

fn deadlined(session: &Session) -> Option<&Deadlined> {
    session.stream()?.as_any().downcast_ref::<Deadlined>()
}

/// Wraps a Pingora app (the HTTP proxy) so that each HTTP/1 connection reads through a
/// [`Deadlined`] stream. HTTP/2 connections (ALPN `h2`) are passed as they are.
pub struct HeaderDeadlineApp<A> {
    inner: Arc<A>,
    header_timeout: Box<dyn Fn() -> Duration + Send + Sync>,
}

impl<A> HeaderDeadlineApp<A> {
    /// `header_timeout` is asked once per connection (so a reload applies to new connections).
    pub fn new(inner: A, header_timeout: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        HeaderDeadlineApp {
            inner: Arc::new(inner),
            header_timeout: Box::new(header_timeout),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadlineApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            Box::new(Deadlined::new(stream, (self.header_timeout)()))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Reading a header, the deadline running.
const ARMED: u8 = 0;
/// Between the end of a header and the end of its request: no deadline.
const DONE: u8 = 1;
/// After a request: idle until the keep-alive deadline; the next byte read starts the next
/// header's deadline.
const IDLE: u8 = 2;

/// A stream whose reads end (EOF) once the connection has been idle too long between requests
/// or the current request header is late.
///
/// Every request moves the deadline, so the timer is lazy: it stays armed at an earlier
/// deadline and, when it fires early, is moved to the current one. A busy connection thus costs
/// one timer reset a minute, not one per request; the timer is only moved ahead of time when
/// the current deadline is earlier than where it stands.
pub struct Deadlined {
    inner: Stream,
    /// Fires at `armed` (ms after `start`), never later than the current deadline.
    timer: Pin<Box<Sleep>>,
    armed: u64,
    start: Instant,
    phase: AtomicU8,
    /// The current deadline, ms after `start`.
    due: AtomicU64,
    /// `downstream.header_timeout_secs` in ms, for the header after an idle period.
    header_ms: AtomicU64,
}

impl Deadlined {
    pub fn new(inner: Stream, header_timeout: Duration) -> Self {
        let header_ms = millis(header_timeout);
        let start = Instant::now();
        Deadlined {
            inner,
            timer: Box::pin(tokio::time::sleep_until(start + header_timeout)),
            armed: header_ms,
            start,
            phase: AtomicU8::new(ARMED),
            due: AtomicU64::new(header_ms),
            header_ms: AtomicU64::new(header_ms),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.start.elapsed())
    }

    fn idle(&self, header_timeout: Duration, keepalive: Duration) {
        self.header_ms
            .store(millis(header_timeout), Ordering::Relaxed);
        let due = self.now_ms().saturating_add(millis(keepalive));
        self.due.store(due, Ordering::Relaxed);
        self.phase.store(IDLE, Ordering::Relaxed);
    }

    fn arm(&mut self, due: u64) {
        self.armed = due;
        let at = self.start + Duration::from_millis(due);
        self.timer.as_mut().reset(at);
    }

    /// Whether the current deadline has passed; moves the timer to it when it fired early.
    fn late(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let due = self.due.load(Ordering::Relaxed);
            if self.armed > due {
                self.arm(due);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return false,
                Poll::Ready(()) if self.now_ms() >= due => return true,
                Poll::Ready(()) => self.arm(due),
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl std::fmt::Debug for Deadlined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlined")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for Deadlined {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let phase = this.phase.load(Ordering::Relaxed);
        if phase == DONE {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // A timer that has fired says the deadline may have passed: a client dripping bytes is
        // cut off as surely as a silent one.
        if this.timer.is_elapsed() && this.late(cx) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if phase == IDLE && buf.filled().len() > before => {
                let due = this
                    .now_ms()
                    .saturating_add(this.header_ms.load(Ordering::Relaxed));
                this.due.store(due, Ordering::Relaxed);
                this.phase.store(ARMED, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
            // End of file: Pingora closes the connection without an answer, as nginx does on
            // `keepalive_timeout` and `client_header_timeout`.
            Poll::Pending if this.late(cx) => {
                if phase == IDLE {
                    log::debug!("keep-alive timeout: closing the idle connection");
                } else {
                    log::debug!("request header timeout: closing the connection");
                }
                Poll::Ready(Ok(()))
            }
            read => read,
        }
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Deadlined {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Deadlined {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Deadlined {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Deadlined {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Deadlined {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Deadlined {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Deadlined {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
