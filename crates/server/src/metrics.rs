//! Prometheus metrics: requests by route and status, a latency histogram, logins, active
//! devices. The `metrics` facade is process-global, so the recorder is installed once and every
//! server in the process (tests start many) shares it.

use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

pub const REQUESTS: &str = "nextsync_http_requests_total";
pub const LATENCY: &str = "nextsync_http_request_duration_seconds";
pub const LOGINS: &str = "nextsync_logins_total";
pub const ACTIVE_DEVICES: &str = "nextsync_active_devices";

#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

impl Metrics {
    pub fn install() -> anyhow::Result<Self> {
        // `get_or_init` makes concurrent callers (tests start servers in parallel) wait for the
        // one that installs, instead of racing it to the global recorder.
        let installed = HANDLE.get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(LATENCY.to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                )
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|_| "another metrics recorder is installed".to_owned())?;
            Ok(handle)
        });
        let handle = installed.clone().map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self { handle })
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Middleware: counts every request by matched route, method and status, and times it.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(LATENCY, "route" => route).record(start.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`, in the Prometheus text format.
pub async fn render_metrics(State(state): State<AppState>) -> Response {
    match state.store.count_active_devices().await {
        Ok(n) => metrics::gauge!(ACTIVE_DEVICES).set(n as f64),
        Err(e) => tracing::warn!(error = %e, "could not count active devices for /metrics"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
