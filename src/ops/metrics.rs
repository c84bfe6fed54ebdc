//! Prometheus metrics: what each request came to, the auth API's latency and outcomes, the
//! single-flight table, reloads. Counters are resolved to their label set once at start, so
//! counting a request is one atomic add.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// What a request came to: the `decision` label of `etls_proxy_requests_total`, and the
/// access log's decision field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Public,
    Passed,
    /// Started a refresh and got its result.
    Refreshed,
    /// Joined a refresh another request of the session had started.
    Coalesced,
    /// Answered from a refresh kept for the grace window.
    GraceHit,
    LoggedOut,
    Redirected,
    RefreshEndpoint,
    LogoutEndpoint,
    AuthApiError,
    AppError,
    /// Refused before any check: 405 on an endpoint, 431, malformed HTTP.
    Rejected,
}

impl Decision {
    pub const ALL: [Decision; 12] = [
        Decision::Public,
        Decision::Passed,
        Decision::Refreshed,
        Decision::Coalesced,
        Decision::GraceHit,
        Decision::LoggedOut,
        Decision::Redirected,
        Decision::RefreshEndpoint,
        Decision::LogoutEndpoint,
        Decision::AuthApiError,
        Decision::AppError,
        Decision::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Public => "public",
            Decision::Passed => "passed",
            Decision::Refreshed => "refreshed",
            Decision::Coalesced => "coalesced",
            Decision::GraceHit => "grace_hit",
            Decision::LoggedOut => "logged_out",
            Decision::Redirected => "redirected",
            Decision::RefreshEndpoint => "refresh_endpoint",
            Decision::LogoutEndpoint => "logout_endpoint",
            Decision::AuthApiError => "auth_api_error",
            Decision::AppError => "app_error",
            Decision::Rejected => "rejected",
        }
    }
}

/// How an auth API call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthApiOutcome {
    Ok,
    Rejected,
    Failed,
    Timeout,
}

impl AuthApiOutcome {
    const ALL: [AuthApiOutcome; 4] = [
        AuthApiOutcome::Ok,
        AuthApiOutcome::Rejected,
        AuthApiOutcome::Failed,
        AuthApiOutcome::Timeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            AuthApiOutcome::Ok => "ok",
            AuthApiOutcome::Rejected => "rejected",
            AuthApiOutcome::Failed => "failed",
            AuthApiOutcome::Timeout => "timeout",
        }
    }
}

/// How a backend logout (`auth_api.logout_url`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutOutcome {
    Ok,
    Failed,
    Timeout,
    /// Not sent: `auth_api.max_in_flight` calls were in flight.
    Busy,
}

impl LogoutOutcome {
    const ALL: [LogoutOutcome; 4] = [
        LogoutOutcome::Ok,
        LogoutOutcome::Failed,
        LogoutOutcome::Timeout,
        LogoutOutcome::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogoutOutcome::Ok => "ok",
            LogoutOutcome::Failed => "failed",
            LogoutOutcome::Timeout => "timeout",
            LogoutOutcome::Busy => "busy",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    auth_api_logouts: Vec<IntCounter>,
    auth_api_busy: IntCounter,
    requests: Vec<IntCounter>,
    auth_api_seconds: Histogram,
    auth_api_calls: Vec<IntCounter>,
    flights: IntGauge,
    reloads_ok: IntCounter,
    reloads_refused: IntCounter,
    last_reload_success: IntGauge,
    /// Refresh tokens without the `sid` binding (old routes): `[allowed, refused]`.
    unbound_refresh: [IntCounter; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// For the counters of other modules (`crate::refresh::shared_store`), exposed on the same page.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("etls_proxy".into()), None).expect("a valid prefix");
        let register = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        let requests_vec = IntCounterVec::new(
            Opts::new("requests_total", "Requests by what the proxy decided"),
            &["decision"],
        )
        .expect("valid metric");
        let requests = Decision::ALL
            .iter()
            .map(|d| requests_vec.with_label_values(&[d.as_str()]))
            .collect();
        let auth_api_seconds = Histogram::with_opts(
            HistogramOpts::new("auth_api_duration_seconds", "Auth API refresh calls").buckets(
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
        )
        .expect("valid metric");
        let calls_vec = IntCounterVec::new(
            Opts::new("auth_api_calls_total", "Auth API refresh calls by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let auth_api_calls = AuthApiOutcome::ALL
            .iter()
            .map(|o| calls_vec.with_label_values(&[o.as_str()]))
            .collect();
        let flights = IntGauge::new(
            "refresh_table_entries",
            "Single-flight table entries: refreshes running or kept for the grace window",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new("config_reloads_total", "SIGHUP reloads by result"),
            &["result"],
        )
        .expect("valid metric");
        let last_reload_success = IntGauge::new(
            "config_last_reload_success",
            "1 when the last reload was applied (or none was asked for), 0 when it was refused",
        )
        .expect("valid metric");
        last_reload_success.set(1);
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Build of the running binary"),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let (reloads_ok, reloads_refused) = (
            reloads.with_label_values(&["applied"]),
            reloads.with_label_values(&["refused"]),
        );
        register(Box::new(requests_vec));
        register(Box::new(auth_api_seconds.clone()));
        register(Box::new(calls_vec));
        register(Box::new(flights.clone()));
        register(Box::new(reloads));
        register(Box::new(last_reload_success.clone()));
        let unbound_vec = IntCounterVec::new(
            Opts::new(
                "unbound_refresh_total",
                "Refresh requests whose refresh token carries no session binding (minted by the old routes), by tokens.unbound_refresh",
            ),
            &["result"],
        )
        .expect("valid metric");
        let unbound_refresh = [
            unbound_vec.with_label_values(&["allowed"]),
            unbound_vec.with_label_values(&["refused"]),
        ];
        register(Box::new(build_info));
        let logouts_vec = IntCounterVec::new(
            Opts::new(
                "auth_api_logout_total",
                "Backend logouts (auth_api.logout_url) by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let auth_api_logouts = LogoutOutcome::ALL
            .iter()
            .map(|o| logouts_vec.with_label_values(&[o.as_str()]))
            .collect();
        let auth_api_busy = IntCounter::new(
            "auth_api_busy_total",
            "Refreshes not sent because auth_api.max_in_flight calls were in flight (answered 503, or forwarded on a still valid token)",
        )
        .expect("valid metric");
        register(Box::new(logouts_vec));
        register(Box::new(auth_api_busy.clone()));
        register(Box::new(unbound_vec));
        Metrics {
            registry,
            auth_api_logouts,
            auth_api_busy,
            requests,
            auth_api_seconds,
            auth_api_calls,
            flights,
            reloads_ok,
            reloads_refused,
            last_reload_success,
            unbound_refresh,
        }
    }

    /// A refresh token without binding, let through (`allow`) or refused.
    pub fn unbound_refresh(&self, allowed: bool) {
        self.unbound_refresh[usize::from(!allowed)].inc();
    }

    pub fn request(&self, decision: Decision) {
        self.requests[decision as usize].inc();
    }

    pub fn auth_api(&self, elapsed: Duration, outcome: AuthApiOutcome) {
        self.auth_api_seconds.observe(elapsed.as_secs_f64());
        self.auth_api_calls[outcome as usize].inc();
    }

    pub fn logout(&self, outcome: LogoutOutcome) {
        self.auth_api_logouts[outcome as usize].inc();
    }

    pub fn auth_api_busy(&self) {
        self.auth_api_busy.inc();
    }

    pub fn reload(&self, applied: bool) {
        if applied {
            self.reloads_ok.inc();
        } else {
            self.reloads_refused.inc();
        }
        self.last_reload_success.set(i64::from(applied));
    }

    /// The text exposition, with gauges read now.
    pub fn render(&self, flight_entries: usize) -> String {
        self.flights
            .set(i64::try_from(flight_entries).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("could not render metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn counters_move_and_render_with_their_labels() {
        let m = Metrics::new();
        m.request(Decision::Passed);
        m.request(Decision::Passed);
        m.request(Decision::GraceHit);
        m.auth_api(Duration::from_millis(30), AuthApiOutcome::Ok);
        m.auth_api(Duration::from_secs(2), AuthApiOutcome::Timeout);
        m.reload(false);
        m.logout(LogoutOutcome::Timeout);
        m.auth_api_busy();
        m.auth_api_busy();
        m.unbound_refresh(true);
        m.unbound_refresh(true);
        m.unbound_refresh(false);
        let text = m.render(7);
        let v = |s: &str| value(&text, s);
        assert_eq!(
            v("etls_proxy_requests_total{decision=\"passed\"}"),
            Some(2.0)
        );
        assert_eq!(
            v("etls_proxy_requests_total{decision=\"grace_hit\"}"),
            Some(1.0)
        );
        assert_eq!(
            v("etls_proxy_requests_total{decision=\"app_error\"}"),
            Some(0.0)
        );
        assert_eq!(
            v("etls_proxy_auth_api_calls_total{outcome=\"ok\"}"),
            Some(1.0)
        );
        assert_eq!(
            v("etls_proxy_auth_api_calls_total{outcome=\"timeout\"}"),
            Some(1.0)
        );
        assert_eq!(v("etls_proxy_auth_api_duration_seconds_count"), Some(2.0));
        assert_eq!(
            v("etls_proxy_auth_api_duration_seconds_bucket{le=\"0.05\"}"),
            Some(1.0)
        );
        assert_eq!(v("etls_proxy_refresh_table_entries"), Some(7.0));
        assert_eq!(
            v("etls_proxy_config_reloads_total{result=\"refused\"}"),
            Some(1.0)
        );
        assert_eq!(v("etls_proxy_config_last_reload_success"), Some(0.0));
        assert!(text.contains("etls_proxy_build_info{version=\""));
        assert_eq!(
            v("etls_proxy_auth_api_logout_total{outcome=\"timeout\"}"),
            Some(1.0)
        );
        assert_eq!(
            v("etls_proxy_auth_api_logout_total{outcome=\"ok\"}"),
            Some(0.0)
        );
        assert_eq!(v("etls_proxy_auth_api_busy_total"), Some(2.0));
        assert_eq!(
            v("etls_proxy_unbound_refresh_total{result=\"allowed\"}"),
            Some(2.0)
        );
        assert_eq!(
            v("etls_proxy_unbound_refresh_total{result=\"refused\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn every_decision_has_its_own_counter() {
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "{d:?}");
        }
        for (i, o) in AuthApiOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
        for (i, o) in LogoutOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
    }
}
