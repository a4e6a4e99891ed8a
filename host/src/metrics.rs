//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Owns the registry, the counters the ingest path, the long-connection connector and the
//! retention task bump (one atomic add each, never a lock on those paths), and the plugin
//! figures read from the runtime at scrape time. It decides nothing and must not hold business
//! logic: callers say what happened, this module only counts it.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::runtime::{HealthState, Runtime};

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
    /// `outbox`).
    table: &'static str,
}

/// Labels of a delivery attempt from the outbox.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    /// `delivered`, `retried` or `failed`.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    ingest: Family<IngestLabels, Counter>,
    acks: Family<AckLabels, Counter>,
    connections: Gauge,
    pruned: Family<RetentionLabels, Counter>,
    outbox: Family<OutboxLabels, Counter>,
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
        let ingest = Family::<IngestLabels, Counter>::default();
        registry.register(
            "ingest_events",
            "Inbound event payloads processed, by channel and outcome",
            ingest.clone(),
        );
        let acks = Family::<AckLabels, Counter>::default();
        registry.register(
            "long_connection_acks",
            "Events answered on long connections: ack (stored or deliberately dropped) or nack (not stored; the channel redelivers)",
            acks.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "long_connections_open",
            "Long connections (WebSockets) this process holds now",
            connections.clone(),
        );
        let outbox = Family::<OutboxLabels, Counter>::default();
        registry.register(
            "outbox_deliveries",
            "Delivery attempts of outbox rows (replies, error cards, notices) by outcome: delivered, retried, failed (given up; see GET /api/outbox?state=failed)",
            outbox.clone(),
        );
        let pruned = Family::<RetentionLabels, Counter>::default();
        registry.register(
            "retention_pruned_rows",
            "Rows deleted by the retention task, by table",
            pruned.clone(),
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
            outbox,
        }
    }

    /// One delivery attempt of an outbox row ended with `outcome` (`delivered`, `retried`,
    /// `failed`).
    pub fn outbox(&self, outcome: &'static str) {
        self.outbox.get_or_create(&OutboxLabels { outcome }).inc();
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

    /// An ACK (`stored == true`) or NACK was sent on a long connection of `channel`.
    pub fn acknowledged(&self, channel: &str, stored: bool) {
        self.acks
            .get_or_create(&AckLabels {
                channel: channel.to_string(),
                kind: if stored { "ack" } else { "nack" },
            })
            .inc();
    }

    /// The retention task deleted `rows` rows of `table` (0 still shows the table's series).
    pub fn pruned(&self, table: &'static str, rows: u64) {
        self.pruned
            .get_or_create(&RetentionLabels { table })
            .inc_by(rows);
    }

    /// A long connection opened; the guard counts it closed when dropped.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections.inc();
        OpenConnection(self.clone())
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Counts one open long connection until dropped.
#[must_use = "the connection counts as open while the guard lives"]
pub struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
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
