//! `GET /metrics`: Prometheus (OpenMetrics) counters, gauges and histograms. Labels carry routes
//! and statuses only, never anything a client wrote.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    /// Requests accepted and waiting for a row.
    pub queue_depth: Gauge,
    /// Requests being generated (prompt processing included).
    pub active: Gauge,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    pub request_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bedside");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests by route and response status", requests.clone());
        let prompt_tokens = Counter::default();
        registry.register("prompt_tokens", "Prompt tokens processed", prompt_tokens.clone());
        let completion_tokens = Counter::default();
        registry.register("completion_tokens", "Tokens generated", completion_tokens.clone());
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Requests waiting for a free row", queue_depth.clone());
        let active = Gauge::default();
        registry.register("active_requests", "Requests being generated", active.clone());
        // 5 ms to about 80 s.
        let time_to_first_token = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "time_to_first_token_seconds",
            "From receiving a request to its first generated token",
            time_to_first_token.clone(),
        );
        // 1 ms to about 4 s.
        let time_per_output_token = Histogram::new(exponential_buckets(0.001, 2.0, 13));
        registry.register(
            "time_per_output_token_seconds",
            "Mean time per generated token after the first, per request",
            time_per_output_token.clone(),
        );
        let request_duration = Histogram::new(exponential_buckets(0.005, 2.0, 18));
        registry.register("request_duration_seconds", "From receiving a request to its last byte", request_duration.clone());
        Self {
            registry,
            requests,
            prompt_tokens,
            completion_tokens,
            queue_depth,
            active,
            time_to_first_token,
            time_per_output_token,
            request_duration,
        }
    }

    pub fn count_request(&self, route: &str, status: u16) {
        self.requests.get_or_create(&RequestLabels { route: route.into(), status: status.to_string() }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
