//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Owns the registry, the counters and histograms the ingest path, the long-connection
//! connector, the poller, the run service, the outbox and the retention task bump (one atomic
//! add or one histogram observation each, never a lock on the ingest and connector paths), the
//! plugin figures read from the runtime at scrape time, and the two text formats a scraper may
//! ask for ([`Format`]). It decides nothing and must not hold business logic: callers say what
//! happened, this module only counts it.
//!
//! Every family is listed from start-up, with `# HELP` and `# TYPE` even before its first sample
//! ([`Listed`]), and the label sets known up front (outcomes of runs and deliveries) are there
//! at 0, so dashboards and alerts see a family before the first event of its kind.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::runtime::{CONTRACT_VERSION, HealthState, Runtime};

/// Labels of an ingested event.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestLabels {
    channel: String,
    /// The outcome label (`ingested`, `dropped:duplicate`, `ignored`, …).
    outcome: String,
}

/// Labels of a long-connection acknowledgement.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AckLabels {
    channel: String,
    /// `ack` (stored or deliberately dropped) or `nack` (infrastructure failure).
    kind: &'static str,
}

/// Labels of rows pruned by the retention task.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetentionLabels {
    /// The pruned table (`inbound_dedup`, `inbound_audit`, `binding_tokens`, `plugin_kv`,
    /// `outbox`, `pairings`, `blobs`).
    table: &'static str,
}

/// Labels of a counted outcome: a delivery attempt from the outbox, or a run's end.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// Deliveries: `delivered`, `retried` or `failed`. Runs: a [`RunResult`] label.
    outcome: &'static str,
}

/// Labels of what happens per channel (latencies).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

/// Labels of a webhook rejection or a reconnect: the channel and a reason from a fixed set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    channel: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

/// Labels of `switchboard_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    /// The host's version.
    version: &'static str,
    /// The WIT contract version plugins are checked against.
    contract_version: String,
}

/// The delivery outcomes of [`Metrics::outbox`], listed at 0 from start-up.
const DELIVERY_OUTCOMES: [&str; 3] = ["delivered", "retried", "failed"];

/// Buckets (seconds) of the ACK and ingest latencies: a millisecond to ten seconds (the channels'
/// ACK deadlines are a few seconds).
const FAST_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets (seconds) of run durations: agents answer in a fraction of a second (echo) up to
/// many minutes (a coding agent).
const RUN_BUCKETS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
/// Buckets (seconds) of delivery latencies: from enqueue to delivered, retries and backoff
/// included (up to the longest backoffs).
const DELIVERY_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

fn fast_histogram() -> Histogram {
    Histogram::new(FAST_BUCKETS)
}

fn run_histogram() -> Histogram {
    Histogram::new(RUN_BUCKETS)
}

/// A histogram family whose series are made with the buckets of `fn`.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Runs timed at once at most (one entry per session with a run acquired on this host); beyond
/// it a run is still counted, just not timed.
const MAX_TIMED_RUNS: usize = 65_536;

/// How a run ended, as [`Metrics::run_ended`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Completed (reply stored or nothing to say).
    Completed,
    /// Failed (the session is in `error`).
    Failed,
    /// Interrupted (by a newer message, an operator, an edit, or the run itself).
    Interrupted,
    /// Handed back to pending at shutdown, for another worker.
    Requeued,
    /// Recovered as stale (no heartbeat within the stale window).
    Stale,
}

impl RunResult {
    /// Every result, in label order.
    pub const ALL: [RunResult; 5] = [
        RunResult::Completed,
        RunResult::Failed,
        RunResult::Interrupted,
        RunResult::Requeued,
        RunResult::Stale,
    ];

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Completed => "completed",
            RunResult::Failed => "failed",
            RunResult::Interrupted => "interrupted",
            RunResult::Requeued => "requeued",
            RunResult::Stale => "stale",
        }
    }
}

/// A metric listed even before its first sample. prometheus-client leaves an empty family out
/// of the exposition (`EncodeMetric::is_empty`); this keeps its `# HELP` and `# TYPE`, so every
/// family is there from start-up.
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// The text format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The format the `Accept` header asks for: OpenMetrics when it lists
    /// `application/openmetrics-text` at least as high as plain text (as Prometheus does), the
    /// classic text format otherwise — also when there is no header, or it names neither.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut open, mut plain) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= plain {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of a scrape in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    ingest: Family<IngestLabels, Counter>,
    acks: Family<AckLabels, Counter>,
    connections: Gauge,
    pruned: Family<RetentionLabels, Counter>,
    blob_files_deleted: Counter,
    outbox: Family<OutcomeLabels, Counter>,
    webhook_rejections: Family<ReasonLabels, Counter>,
    reconnects: Family<ReasonLabels, Counter>,
    runs: Family<OutcomeLabels, Counter>,
    ack_latency: HistogramFamily<ChannelLabels>,
    ingest_latency: HistogramFamily<ChannelLabels>,
    run_duration: HistogramFamily<OutcomeLabels>,
    delivery_latency: Histogram,
    /// Per session, the run acquired on this host and when (for the run duration).
    run_starts: Mutex<HashMap<String, (String, Instant)>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    /// Metrics without plugin figures (no runtime to read them from).
    fn default() -> Self {
        Metrics::build(None)
    }
}

impl Metrics {
    /// Metrics including the plugin figures of `runtime`, read at every scrape.
    pub fn new(runtime: Arc<Runtime>) -> Metrics {
        Metrics::build(Some(runtime))
    }

    fn build(runtime: Option<Arc<Runtime>>) -> Metrics {
        let mut registry = Registry::with_prefix("switchboard");
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                contract_version: CONTRACT_VERSION.to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which host version serves and which plugin contract version it speaks",
            build,
        );
        let ingest = Family::<IngestLabels, Counter>::default();
        registry.register(
            "ingest_events",
            "Inbound event payloads processed, by channel and outcome",
            Listed(ingest.clone()),
        );
        let webhook_rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "webhook_rejections",
            "Webhook requests refused, by channel and reason (bad-signature, bad-token, decrypt-failed, malformed, stale, routed_elsewhere, unroutable, unknown_installation)",
            Listed(webhook_rejections.clone()),
        );
        let ingest_latency: HistogramFamily<ChannelLabels> =
            Family::new_with_constructor(fast_histogram);
        registry.register_with_unit(
            "ingest_latency",
            "Time from a chat message's arrival to its outcome being durable (decode, enrich, store), by channel",
            Unit::Seconds,
            Listed(ingest_latency.clone()),
        );
        let acks = Family::<AckLabels, Counter>::default();
        registry.register(
            "long_connection_acks",
            "Events answered on long connections: ack (stored or deliberately dropped) or nack (not stored; the channel redelivers)",
            Listed(acks.clone()),
        );
        let ack_latency: HistogramFamily<ChannelLabels> =
            Family::new_with_constructor(fast_histogram);
        registry.register_with_unit(
            "ack_latency",
            "Time from an event's arrival on a long connection to its ACK or NACK being queued, by channel",
            Unit::Seconds,
            Listed(ack_latency.clone()),
        );
        let connections = Gauge::default();
        registry.register(
            "long_connections_open",
            "Long connections (WebSockets) this process holds now",
            connections.clone(),
        );
        let reconnects = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconnects",
            "Long connections and long-poll loops started again, by channel and reason (closed_normally, requested, closed (abnormally), retryable, terminal, plugin, handshake_timeout, read, idle, write, ingest, poll_failed)",
            Listed(reconnects.clone()),
        );
        let runs = Family::<OutcomeLabels, Counter>::default();
        let run_duration: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(run_histogram);
        for result in RunResult::ALL {
            // Created at 0: the series is listed before the first run ends.
            runs.get_or_create(&OutcomeLabels {
                outcome: result.as_str(),
            })
            .inc_by(0);
        }
        registry.register(
            "runs",
            "Agent runs ended, by outcome: completed, failed, interrupted, requeued (shutdown), stale (recovered)",
            Listed(runs.clone()),
        );
        registry.register_with_unit(
            "run_duration",
            "Time from a run's acquisition to its end, by outcome (runs acquired and ended on this host)",
            Unit::Seconds,
            Listed(run_duration.clone()),
        );
        let outbox = Family::<OutcomeLabels, Counter>::default();
        for outcome in DELIVERY_OUTCOMES {
            outbox.get_or_create(&OutcomeLabels { outcome }).inc_by(0);
        }
        registry.register(
            "outbox_deliveries",
            "Delivery attempts of outbox rows (replies, error cards, notices) by outcome: delivered, retried, failed (given up; see GET /api/outbox?state=failed)",
            Listed(outbox.clone()),
        );
        let delivery_latency = Histogram::new(DELIVERY_BUCKETS);
        registry.register_with_unit(
            "delivery_latency",
            "Time from an outbox row's enqueue to its delivery, retries included",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let pruned = Family::<RetentionLabels, Counter>::default();
        registry.register(
            "retention_pruned_rows",
            "Rows deleted by the retention task, by table",
            Listed(pruned.clone()),
        );
        let blob_files_deleted = Counter::default();
        registry.register(
            "retention_blob_files_deleted",
            "Blob files the retention task deleted (their last row went, or no row named them)",
            blob_files_deleted.clone(),
        );
        if let Some(runtime) = runtime {
            registry.register_collector(Box::new(PluginFigures(runtime)));
        }
        Metrics {
            registry,
            ingest,
            acks,
            connections,
            pruned,
            blob_files_deleted,
            outbox,
            webhook_rejections,
            reconnects,
            runs,
            ack_latency,
            ingest_latency,
            run_duration,
            delivery_latency,
            run_starts: Mutex::new(HashMap::new()),
        }
    }

    /// One delivery attempt of an outbox row ended with `outcome` (`delivered`, `retried`,
    /// `failed`).
    pub fn outbox(&self, outcome: &'static str) {
        self.outbox.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// An outbox row was delivered `latency` after it was enqueued.
    pub fn delivery_latency(&self, latency: Duration) {
        self.delivery_latency.observe(latency.as_secs_f64());
    }

    /// One payload of `channel` ended with `outcome` (a `PayloadOutcome` label).
    pub fn ingested(&self, channel: &str, outcome: &str) {
        self.ingest
            .get_or_create(&IngestLabels {
                channel: channel.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A chat message of `channel` reached its durable outcome `latency` after it arrived.
    pub fn ingest_latency(&self, channel: &str, latency: Duration) {
        self.ingest_latency
            .get_or_create(&ChannelLabels {
                channel: channel.to_string(),
            })
            .observe(latency.as_secs_f64());
    }

    /// A webhook request of `channel` was refused for `reason`.
    pub fn webhook_rejected(&self, channel: &str, reason: &'static str) {
        self.webhook_rejections
            .get_or_create(&ReasonLabels {
                channel: channel.to_string(),
                reason,
            })
            .inc();
    }

    /// An ACK (`stored == true`) or NACK was sent on a long connection of `channel`, `latency`
    /// after the event arrived.
    pub fn acknowledged(&self, channel: &str, stored: bool, latency: Duration) {
        self.acks
            .get_or_create(&AckLabels {
                channel: channel.to_string(),
                kind: if stored { "ack" } else { "nack" },
            })
            .inc();
        self.ack_latency
            .get_or_create(&ChannelLabels {
                channel: channel.to_string(),
            })
            .observe(latency.as_secs_f64());
    }

    /// A long connection or long-poll loop of `channel` starts again, because of `reason`.
    pub fn reconnect(&self, channel: &str, reason: &'static str) {
        self.reconnects
            .get_or_create(&ReasonLabels {
                channel: channel.to_string(),
                reason,
            })
            .inc();
    }

    /// Run `run` of `session` was acquired on this host: its duration is measured from now.
    pub fn run_started(&self, session: &str, run: &str) {
        let mut starts = self.run_starts.lock().unwrap_or_else(|e| e.into_inner());
        if starts.len() < MAX_TIMED_RUNS || starts.contains_key(session) {
            starts.insert(session.to_string(), (run.to_string(), Instant::now()));
        }
    }

    /// The run of `session` (`run`, when the caller knows which) ended with `result`: counted,
    /// and timed when it was acquired on this host.
    pub fn run_ended(&self, session: &str, run: Option<&str>, result: RunResult) {
        let labels = OutcomeLabels {
            outcome: result.as_str(),
        };
        self.runs.get_or_create(&labels).inc();
        let started = {
            let mut starts = self.run_starts.lock().unwrap_or_else(|e| e.into_inner());
            match starts.get(session) {
                Some((timed, _)) if run.is_none_or(|run| run == timed) => {
                    starts.remove(session).map(|(_, at)| at)
                }
                _ => None,
            }
        };
        if let Some(started) = started {
            self.run_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// `session` is gone: a run it had is no longer timed.
    pub fn run_forgotten(&self, session: &str) {
        self.run_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
    }

    /// The retention task deleted `rows` rows of `table` (0 still shows the table's series).
    pub fn pruned(&self, table: &'static str, rows: u64) {
        self.pruned
            .get_or_create(&RetentionLabels { table })
            .inc_by(rows);
    }

    /// The retention task deleted `files` blob files.
    pub fn blob_files_deleted(&self, files: u64) {
        self.blob_files_deleted.inc_by(files);
    }

    /// A long connection opened; the guard counts it closed when dropped.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections.inc();
        OpenConnection(self.clone())
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// The registry in `format`.
    pub fn render_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.render(),
            Format::Prometheus => openmetrics_to_prometheus(&self.render()),
        }
    }
}

/// The classic Prometheus text format 0.0.4 of an OpenMetrics rendering.
///
/// prometheus-client writes OpenMetrics only (its other encoder is protobuf), so the classic
/// format is derived from its output rather than written by a second encoder: one source of
/// names, help texts and label escaping. For what this registry emits the two formats differ in
/// the metadata lines only:
/// - OpenMetrics names a counter family without its `_total` suffix (`# TYPE x counter`,
///   samples `x_total`); 0.0.4 names it as its samples (`# TYPE x_total counter`), or a
///   classic parser leaves the `x_total` series untyped;
/// - 0.0.4 has no `# UNIT` line and no `# EOF` terminator;
/// - 0.0.4 has no `info`, `stateset`, `gaugehistogram` or `unknown` types (none is emitted here;
///   mapped to their classic equivalents should one appear).
///
/// Sample lines (names, labels, escaping, `+Inf`, histogram `_bucket`/`_sum`/`_count`) are
/// written alike in both and pass through unchanged. Help texts are written unescaped by the
/// crate and contain no backslash or newline, so they read the same in both formats.
fn openmetrics_to_prometheus(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    // A family's `# HELP` comes before its `# TYPE`, which decides the family's classic name.
    let mut help: Option<(&str, &str)> = None;
    let flush_help = |out: &mut String, help: &mut Option<(&str, &str)>| {
        if let Some((name, text)) = help.take() {
            out.push_str(&format!("# HELP {name} {text}\n"));
        }
    };
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, &mut help);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (classic, kind) = match kind {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_string(), "gauge"),
                "gaugehistogram" => (name.to_string(), "histogram"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            match help.take() {
                Some((help_name, text)) if help_name == name => {
                    out.push_str(&format!("# HELP {classic} {text}\n"));
                }
                other => {
                    let mut other = other;
                    flush_help(&mut out, &mut other);
                }
            }
            out.push_str(&format!("# TYPE {classic} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut out, &mut help);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, &mut help);
    out
}
/// Counts one open long connection until dropped.
#[must_use = "the connection counts as open while the guard lives"]
pub struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// Labels of a plugin reload outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    plugin: String,
    outcome: &'static str,
}

/// Plugin health and pool figures, read from the runtime at scrape time.
struct PluginFigures(Arc<Runtime>);

impl fmt::Debug for PluginFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PluginFigures")
    }
}

impl Collector for PluginFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let plugins = self.0.plugins();
        let stats: Vec<_> = plugins
            .iter()
            .map(|p| {
                (
                    PluginLabels {
                        plugin: p.name().to_string(),
                    },
                    p.stats(),
                    p.idle_instances(),
                )
            })
            .collect();
        type Counter = (
            &'static str,
            &'static str,
            fn(&crate::runtime::PluginStats) -> u64,
        );
        let counters: [Counter; 3] = [
            ("plugin_calls", "Export calls made to the plugin", |s| {
                s.calls
            }),
            (
                "plugin_failures",
                "Export calls that failed (trap, timeout, limit, host failure)",
                |s| s.failures,
            ),
            ("plugin_instantiations", "Plugin instances created", |s| {
                s.instantiations
            }),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (labels, stats, _) in &stats {
                ConstCounter::new(value(stats)).encode(family.encode_family(labels)?)?;
            }
        }
        let mut degraded = encoder.encode_descriptor(
            "plugin_degraded",
            "1 while the plugin is degraded (repeated failures), else 0",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (labels, stats, _) in &stats {
            let value = i64::from(stats.state == HealthState::Degraded);
            ConstGauge::new(value).encode(degraded.encode_family(labels)?)?;
        }
        let mut reloads = encoder.encode_descriptor(
            "plugin_reloads",
            "Plugin files handled by reloads, by outcome (swapped, added, refused)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for ((plugin, outcome), count) in self.0.reload_counts() {
            let labels = ReloadLabels { plugin, outcome };
            ConstCounter::new(count).encode(reloads.encode_family(&labels)?)?;
        }
        let mut rollbacks = encoder.encode_descriptor(
            "plugin_rollbacks",
            "New plugin versions rolled back after failing during probation",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (plugin, count) in self.0.rollback_counts() {
            let labels = PluginLabels { plugin };
            ConstCounter::new(count).encode(rollbacks.encode_family(&labels)?)?;
        }
        let mut idle = encoder.encode_descriptor(
            "plugin_idle_instances",
            "Warm plugin instances parked for reuse",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (labels, _, count) in &stats {
            ConstGauge::new(*count as i64).encode(idle.encode_family(labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_openmetrics_only_when_asked_for() {
        let prometheus_server = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, expected) in [
            (None, Format::Prometheus),
            (Some(""), Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain; version=0.0.4"), Format::Prometheus),
            (Some("application/json"), Format::Prometheus),
            (Some(prometheus_server), Format::OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0"),
                Format::OpenMetrics,
            ),
            (
                Some("Application/OpenMetrics-Text;Version=1.0.0"),
                Format::OpenMetrics,
            ),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Format::Prometheus,
            ),
            (
                Some("application/openmetrics-text;q=0, */*"),
                Format::Prometheus,
            ),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
    }

    #[test]
    fn every_family_is_listed_before_its_first_sample() {
        let metrics = Metrics::default();
        for format in [Format::OpenMetrics, Format::Prometheus] {
            let text = metrics.render_as(format);
            for family in [
                "switchboard_build_info gauge",
                "switchboard_ingest_events counter",
                "switchboard_webhook_rejections counter",
                "switchboard_ingest_latency_seconds histogram",
                "switchboard_long_connection_acks counter",
                "switchboard_ack_latency_seconds histogram",
                "switchboard_long_connections_open gauge",
                "switchboard_reconnects counter",
                "switchboard_runs counter",
                "switchboard_run_duration_seconds histogram",
                "switchboard_outbox_deliveries counter",
                "switchboard_delivery_latency_seconds histogram",
                "switchboard_retention_pruned_rows counter",
            ] {
                let (name, kind) = family.split_once(' ').unwrap();
                let name = match (format, kind) {
                    (Format::Prometheus, "counter") => format!("{name}_total"),
                    _ => name.to_string(),
                };
                assert!(
                    text.contains(&format!("# TYPE {name} {kind}\n")),
                    "{format:?}: no {name} {kind} in:\n{text}"
                );
            }
            assert!(text.contains("switchboard_runs_total{outcome=\"stale\"} 0\n"));
            assert!(text.contains("switchboard_outbox_deliveries_total{outcome=\"failed\"} 0\n"));
            assert!(text.contains(&format!(
                "switchboard_build_info{{version=\"{}\",contract_version=\"{CONTRACT_VERSION}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )));
        }
    }

    #[test]
    fn the_classic_format_names_counters_as_their_samples_and_drops_openmetrics_lines() {
        let metrics = Metrics::default();
        metrics.webhook_rejected("chat", "bad-signature");
        metrics.acknowledged("chat", true, Duration::from_millis(3));
        let open = metrics.render_as(Format::OpenMetrics);
        assert!(open.contains("# TYPE switchboard_webhook_rejections counter\n"));
        assert!(open.contains("# UNIT switchboard_ack_latency_seconds seconds\n"));
        assert!(open.ends_with("# EOF\n"));

        let classic = metrics.render_as(Format::Prometheus);
        assert!(classic.contains(
            "# HELP switchboard_webhook_rejections_total Webhook requests refused, by channel"
        ));
        assert!(classic.contains("# TYPE switchboard_webhook_rejections_total counter\n"));
        assert!(classic.contains(
            "switchboard_webhook_rejections_total{channel=\"chat\",reason=\"bad-signature\"} 1\n"
        ));
        assert!(classic.contains("# TYPE switchboard_ack_latency_seconds histogram\n"));
        assert!(
            classic.contains(
                "switchboard_ack_latency_seconds_bucket{le=\"0.005\",channel=\"chat\"} 1\n"
            ) || classic.contains(
                "switchboard_ack_latency_seconds_bucket{channel=\"chat\",le=\"0.005\"} 1\n"
            ),
            "{classic}"
        );
        assert!(!classic.contains("# UNIT"), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
        // Sample lines are the same in both formats.
        let samples = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&open), samples(&classic));
    }

    #[test]
    fn conversion_keeps_a_help_line_without_a_type_and_maps_openmetrics_only_types() {
        let open = "# HELP a_thing some help\n# TYPE a_thing info\na_thing_info{x=\"1\"} 1\n\
                    # HELP orphan help without a type\n# TYPE b unknown\nb 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(open),
            "# HELP a_thing_info some help\n# TYPE a_thing_info gauge\na_thing_info{x=\"1\"} 1\n\
             # HELP orphan help without a type\n# TYPE b untyped\nb 2\n"
        );
    }

    #[test]
    fn a_run_is_timed_from_its_acquisition_and_counted_once_per_end() {
        let metrics = Metrics::default();
        metrics.run_started("s1", "r1");
        // Another run's end for the same session (an older, fenced-out run) is counted but
        // does not end this run's timer.
        metrics.run_ended("s1", Some("r0"), RunResult::Interrupted);
        metrics.run_ended("s1", Some("r1"), RunResult::Completed);
        // Ended on another host: counted, not timed.
        metrics.run_ended("s2", None, RunResult::Stale);
        let text = metrics.render();
        assert!(text.contains("switchboard_runs_total{outcome=\"completed\"} 1\n"));
        assert!(text.contains("switchboard_runs_total{outcome=\"interrupted\"} 1\n"));
        assert!(text.contains("switchboard_runs_total{outcome=\"stale\"} 1\n"));
        assert!(text.contains("switchboard_run_duration_seconds_count{outcome=\"completed\"} 1\n"));
        assert!(!text.contains("switchboard_run_duration_seconds_count{outcome=\"interrupted\"}"));
        assert!(!text.contains("switchboard_run_duration_seconds_count{outcome=\"stale\"}"));
        assert!(metrics.run_starts.lock().unwrap().is_empty());
    }
}
