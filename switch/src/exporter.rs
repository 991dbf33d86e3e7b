//! The daemon's HTTP endpoint for operators: Prometheus metrics on
//! `/metrics`, liveness on `/healthz`, readiness on `/readyz`.
//!
//! It sits beside the packet path, never on it: the [`SwitchCollector`]
//! sums the workers' single-writer counters ([`crate::metrics`]) at scrape
//! time, so the datapath pays nothing for being observed. The text is
//! written by `prometheus-client` (OpenMetrics 1.0 text, which Prometheus
//! scrapes natively); one HTTP thread serves it with `tiny_http`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::conntrack::ConnTrack;
use crate::metrics::{Counter, PortStats, StageCounters, WorkerCounters, WorkerPollStats};
use crate::pipeline::drop_reason::DropReason;
use crate::tables::services::ServiceTable;
use crate::worker::PortIo;

pub use podswitch_api::config::DEFAULT_METRICS_ADDRESS;

/// The content type of what `prometheus-client` writes.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long the control loop may go without a heartbeat before liveness fails.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);

/// The histogram of control-plane apply latency: 0.5 ms to about 8 s.
pub fn apply_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// What the daemon's threads report about themselves, for `/healthz` and
/// `/readyz`.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the control loop's last turn.
    heartbeat_ms: AtomicU64,
    published: AtomicBool,
    workers_expected: AtomicUsize,
    workers_running: AtomicUsize,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            published: AtomicBool::new(false),
            workers_expected: AtomicUsize::new(0),
            workers_running: AtomicUsize::new(0),
        }
    }
}

impl Health {
    /// The control loop calls this on every turn.
    pub fn beat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The first snapshot is out: workers have ports to serve.
    pub fn set_published(&self) {
        self.published.store(true, Ordering::Release);
    }

    /// Counts a worker thread as running until the returned guard drops
    /// (when the thread returns or unwinds).
    pub fn worker_started(self: &Arc<Self>) -> WorkerRunning {
        self.workers_expected.fetch_add(1, Ordering::AcqRel);
        self.workers_running.fetch_add(1, Ordering::AcqRel);
        WorkerRunning(Arc::clone(self))
    }

    /// Liveness: `Err(reason)` when the control loop has stalled.
    pub fn live(&self) -> Result<(), String> {
        let now = self.started.elapsed();
        let last = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        let since = now.saturating_sub(last);
        if since > LIVENESS_TIMEOUT {
            return Err(format!(
                "control loop has not run for {:.1}s",
                since.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// Readiness: `Err(reason)` until the first snapshot is published and
    /// while any worker thread is not running.
    pub fn ready(&self) -> Result<(), String> {
        self.live()?;
        if !self.published.load(Ordering::Acquire) {
            return Err("no topology snapshot published yet".to_string());
        }
        let expected = self.workers_expected.load(Ordering::Acquire);
        let running = self.workers_running.load(Ordering::Acquire);
        if expected == 0 || running < expected {
            return Err(format!("{running} of {expected} worker threads running"));
        }
        Ok(())
    }
}

/// Held by a worker thread for as long as it runs.
#[derive(Debug)]
pub struct WorkerRunning(Arc<Health>);

impl Drop for WorkerRunning {
    fn drop(&mut self) {
        self.0.workers_running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The shared handles a scrape reads, copied out of the control state
/// under its lock so the lock is held only for a few `Arc` clones.
#[derive(Debug, Clone)]
pub struct ScrapeSources {
    pub workers: Vec<Arc<WorkerCounters>>,
    /// Ports by name (`namespace/pod`, `host/<ifname>`).
    pub ports: Vec<(String, Arc<PortIo>)>,
    pub conntrack: Arc<ConnTrack>,
    pub services: Arc<ServiceTable>,
    /// Desired services (also those without frontends in the table).
    pub service_count: usize,
}

/// A datapath event counter of [`StageCounters`] exported as a metric of
/// its own.
type StageField = fn(&StageCounters) -> &Counter;

/// The datapath events exported one counter each: (metric name without
/// `_total`, help, the worker counter summed).
pub const EVENT_SERIES: [(&str, &str, StageField); 16] = [
    (
        "podswitch_batches",
        "Batches the workers ran through the pipeline",
        |c| &c.batches,
    ),
    (
        "podswitch_arp_replies",
        "ARP requests for the gateway (or proxied addresses) answered",
        |c| &c.arp_replies,
    ),
    (
        "podswitch_icmp_echo_replies",
        "ICMP echo requests to the gateway answered",
        |c| &c.icmp_echo_replies,
    ),
    (
        "podswitch_icmp_errors_sent",
        "ICMP errors generated (unreachable, time exceeded, fragmentation needed)",
        |c| &c.icmp_errors_sent,
    ),
    (
        "podswitch_icmp_related_translated",
        "ICMP errors about a tracked flow translated back (RELATED)",
        |c| &c.icmp_related_translated,
    ),
    (
        "podswitch_tcp_resets_sent",
        "TCP resets sent for segments of flows whose endpoint is gone",
        |c| &c.tcp_resets_sent,
    ),
    (
        "podswitch_conntrack_reopened",
        "SYNs reusing a closed or TIME_WAIT service flow's tuple, balanced afresh",
        |c| &c.ct_reopened,
    ),
    (
        "podswitch_lb_affinity_hits",
        "New flows sent to a backend by a session-affinity record",
        |c| &c.lb_affinity_hits,
    ),
    (
        "podswitch_vxlan_tx_tunnel_gso",
        "TCP superframes handed to the node's kernel whole (UDP-tunnel GSO)",
        |c| &c.vxlan_tx_tunnel_gso,
    ),
    (
        "podswitch_vxlan_rx_superframes",
        "VXLAN datagrams that carried a whole TCP superframe, delivered as one",
        |c| &c.vxlan_rx_superframes,
    ),
    (
        "podswitch_gro_merged",
        "Received VXLAN datagrams coalesced into larger frames (GRO)",
        |c| &c.gro_merged,
    ),
    (
        "podswitch_gso_superframes",
        "Segmentation-offload superframes handled (passed on or cut into segments)",
        |c| &c.gso_superframes,
    ),
    (
        "podswitch_fast_path_packets",
        "Packets of known flows the fast path took from frame to verdict in one pass",
        |c| &c.fast_path,
    ),
    (
        "podswitch_checksums_completed",
        "Partial (offloaded) checksums completed in software for a port that needs them",
        |c| &c.csum_completed,
    ),
    (
        "podswitch_capture_frames",
        "Frames copied into packet captures",
        |c| &c.capture_frames,
    ),
    (
        "podswitch_capture_ring_drops",
        "Frames a packet capture lost because its ring was full",
        |c| &c.capture_ring_drops,
    ),
];

/// One scrape's numbers, summed over the workers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub ports: Vec<(String, PortStats)>,
    /// Packets and bytes per reason, for every reason in [`DropReason::ALL`].
    pub drops: Vec<(DropReason, u64, u64)>,
    pub forwarded_local: u64,
    pub forwarded_overlay: u64,
    /// VXLAN datagrams sent and received.
    pub vxlan_tx: u64,
    pub vxlan_rx: u64,
    /// [`EVENT_SERIES`], in its order.
    pub events: Vec<u64>,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u64,
    pub conntrack_created: u64,
    pub conntrack_expired: u64,
    pub conntrack_evicted: u64,
    pub conntrack_removed: u64,
    /// Distinct endpoint addresses per service name.
    pub service_endpoints: BTreeMap<String, u64>,
    pub services: u64,
    /// Per worker, in worker order: where its time went.
    pub workers: Vec<WorkerPollStats>,
}

impl Scrape {
    /// Sums what `src` points at.
    pub fn read(src: &ScrapeSources) -> Scrape {
        let stage_sum = |f: fn(&WorkerCounters) -> u64| src.workers.iter().map(|w| f(w)).sum();
        let drops = DropReason::ALL
            .iter()
            .map(|&r| {
                let i = r as usize;
                let packets = src.workers.iter().map(|w| w.drop_packets[i].get()).sum();
                let bytes = src.workers.iter().map(|w| w.drop_bytes[i].get()).sum();
                (r, packets, bytes)
            })
            .collect();
        let ct = &src.conntrack.counters;
        let mut endpoints: BTreeMap<String, std::collections::BTreeSet<std::net::Ipv4Addr>> = src
            .services
            .names
            .iter()
            .map(|n| (n.clone(), Default::default()))
            .collect();
        for f in &src.services.fronts {
            let Some(name) = src.services.names.get(f.service as usize) else {
                continue;
            };
            let set = endpoints.entry(name.clone()).or_default();
            let range = f.backends.start as usize..f.backends.end as usize;
            if let Some(backends) = src.services.backends.get(range) {
                set.extend(backends.iter().map(|b| b.ip));
            }
        }
        Scrape {
            ports: src
                .ports
                .iter()
                .map(|(name, io)| (name.clone(), crate::metrics::port_stats(&io.counters)))
                .collect(),
            drops,
            forwarded_local: stage_sum(|w| w.stages.forwarded_local.get()),
            forwarded_overlay: stage_sum(|w| w.stages.forwarded_overlay.get()),
            vxlan_tx: stage_sum(|w| w.stages.vxlan_tx.get()),
            vxlan_rx: stage_sum(|w| w.stages.vxlan_rx.get()),
            events: EVENT_SERIES
                .iter()
                .map(|(_, _, f)| src.workers.iter().map(|w| f(&w.stages).get()).sum())
                .collect(),
            conntrack_entries: src.conntrack.len() as u64,
            conntrack_capacity: src.conntrack.capacity() as u64,
            conntrack_created: stage_sum(|w| w.stages.ct_created.get()),
            conntrack_expired: ct.expired.load(Ordering::Relaxed),
            conntrack_evicted: ct.evicted.load(Ordering::Relaxed),
            conntrack_removed: ct.removed.load(Ordering::Relaxed),
            service_endpoints: endpoints
                .into_iter()
                .map(|(n, s)| (n, s.len() as u64))
                .collect(),
            services: src.service_count as u64,
            workers: src
                .workers
                .iter()
                .map(|w| crate::metrics::poll_stats(&w.poll))
                .collect(),
        }
    }

    /// Packets dropped for `reason`.
    fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.iter().find(|d| d.0 == reason).map_or(0, |d| d.1)
    }
}

/// Where a scrape gets its sources; `None` when the state is unavailable
/// (a poisoned lock), in which case only the registry's own metrics are
/// written.
pub type SourceFn = dyn Fn() -> Option<ScrapeSources> + Send + Sync;

/// Reads the switch's counters at scrape time.
pub struct SwitchCollector {
    source: Box<SourceFn>,
}

impl std::fmt::Debug for SwitchCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchCollector").finish_non_exhaustive()
    }
}

impl SwitchCollector {
    pub fn new(source: Box<SourceFn>) -> Self {
        SwitchCollector { source }
    }
}

impl Collector for SwitchCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match (self.source)() {
            Some(src) => encode_scrape(&Scrape::read(&src), encoder),
            None => Ok(()),
        }
    }
}

/// A counter family with labels, one sample per `(labels, value)`.
fn counter_family<'a, L>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet + 'a,
{
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v as i64);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Per-worker time by state (working, polling, sleeping), wake-ups and
/// empty polls ([`crate::worker::poll`]).
fn encode_worker_poll(
    enc: &mut DescriptorEncoder,
    workers: &[WorkerPollStats],
) -> Result<(), std::fmt::Error> {
    let ids: Vec<String> = (0..workers.len()).map(|i| i.to_string()).collect();
    {
        let mut m = enc.encode_descriptor(
            "podswitch_worker_time",
            "Worker time by state: working (moving frames), polling (busy polls that found nothing), sleeping (parked in epoll)",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for (w, id) in workers.iter().zip(&ids) {
            for (state, ns) in [
                ("working", w.working_ns),
                ("polling", w.polling_ns),
                ("sleeping", w.sleeping_ns),
            ] {
                let labels = [("worker", id.as_str()), ("state", state)];
                ConstCounter::new(ns as f64 / 1e9).encode(m.encode_family(&labels)?)?;
            }
        }
    }
    counter_family(
        enc,
        "podswitch_worker_wakeups",
        "Times a parked worker was woken by an event",
        None,
        workers
            .iter()
            .zip(&ids)
            .map(|(w, id)| ([("worker", id.as_str())], w.wakeups)),
    )?;
    counter_family(
        enc,
        "podswitch_worker_empty_polls",
        "Busy polls (zero-timeout epoll waits) that found no frame",
        None,
        workers
            .iter()
            .zip(&ids)
            .map(|(w, id)| ([("worker", id.as_str())], w.empty_polls)),
    )?;
    counter_family(
        enc,
        "podswitch_worker_contended_yields",
        "Yields between busy polls that gave the core to another thread (adaptive mode then parks)",
        None,
        workers
            .iter()
            .zip(&ids)
            .map(|(w, id)| ([("worker", id.as_str())], w.contended_yields)),
    )?;
    Ok(())
}

/// Writes one scrape. Counter names get their `_total` (and unit) suffix
/// from the encoder.
pub fn encode_scrape(s: &Scrape, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    type PortField = fn(&PortStats) -> u64;
    let port_series: [(&str, &str, Option<Unit>, PortField); 6] = [
        (
            "podswitch_port_rx_packets",
            "Frames received from the port",
            None,
            |p| p.rx_packets,
        ),
        (
            "podswitch_port_rx",
            "Bytes received from the port",
            Some(Unit::Bytes),
            |p| p.rx_bytes,
        ),
        (
            "podswitch_port_rx_drops",
            "Frames from the port dropped before the pipeline",
            None,
            |p| p.rx_drops,
        ),
        (
            "podswitch_port_tx_packets",
            "Frames written to the port",
            None,
            |p| p.tx_packets,
        ),
        (
            "podswitch_port_tx",
            "Bytes written to the port",
            Some(Unit::Bytes),
            |p| p.tx_bytes,
        ),
        (
            "podswitch_port_tx_drops",
            "Frames for the port that could not be written",
            None,
            |p| p.tx_drops,
        ),
    ];
    for (name, help, unit, field) in &port_series {
        counter_family(
            &mut enc,
            name,
            help,
            unit.as_ref(),
            s.ports
                .iter()
                .map(|(port, st)| ([("port", port.as_str())], field(st))),
        )?;
    }
    let drop_labels = |r: DropReason| [("stage", r.stage().name()), ("reason", r.name())];
    counter_family(
        &mut enc,
        "podswitch_drops",
        "Packets dropped, by pipeline stage and reason (see podswitch_drop_reason_info)",
        None,
        s.drops.iter().map(|&(r, p, _)| (drop_labels(r), p)),
    )?;
    counter_family(
        &mut enc,
        "podswitch_drop",
        "Bytes of dropped packets, by pipeline stage and reason",
        Some(&Unit::Bytes),
        s.drops.iter().map(|&(r, _, b)| (drop_labels(r), b)),
    )?;
    // A family has one HELP line, so each reason's description travels as
    // a label of an info metric (joinable on stage and reason).
    {
        let mut m = enc.encode_descriptor(
            "podswitch_drop_reason",
            "What each drop reason means",
            None,
            MetricType::Info,
        )?;
        for &(r, _, _) in &s.drops {
            m.encode_info(&[
                ("stage", r.stage().name()),
                ("reason", r.name()),
                ("description", r.description()),
            ])?;
        }
    }
    counter_family(
        &mut enc,
        "podswitch_forwarded_packets",
        "Packets routed to a local pod or to another node over the overlay",
        None,
        [
            ([("path", "local")], s.forwarded_local),
            ([("path", "overlay")], s.forwarded_overlay),
        ],
    )?;
    counter_family(
        &mut enc,
        "podswitch_vxlan_packets",
        "VXLAN datagrams sent to and received from other nodes",
        None,
        [
            ([("direction", "tx")], s.vxlan_tx),
            ([("direction", "rx")], s.vxlan_rx),
        ],
    )?;
    for ((name, help, _), v) in EVENT_SERIES.iter().zip(&s.events) {
        counter(&mut enc, name, help, *v)?;
    }
    encode_worker_poll(&mut enc, &s.workers)?;
    gauge(
        &mut enc,
        "podswitch_conntrack_entries",
        "Flows in the conntrack table",
        s.conntrack_entries,
    )?;
    gauge(
        &mut enc,
        "podswitch_conntrack_capacity",
        "Flows the conntrack table can hold (fixed at start)",
        s.conntrack_capacity,
    )?;
    counter(
        &mut enc,
        "podswitch_conntrack_created",
        "Flows created in the conntrack table",
        s.conntrack_created,
    )?;
    counter(
        &mut enc,
        "podswitch_conntrack_expired",
        "Flows removed by the sweeper after their timeout",
        s.conntrack_expired,
    )?;
    counter(
        &mut enc,
        "podswitch_conntrack_evicted",
        "Flows evicted early because the table was nearly full",
        s.conntrack_evicted,
    )?;
    counter(
        &mut enc,
        "podswitch_conntrack_removed",
        "Flows removed by the control plane (flush, stale service backends)",
        s.conntrack_removed,
    )?;
    counter(
        &mut enc,
        "podswitch_nat_port_exhausted",
        DropReason::NatPortsExhausted
            .description()
            .trim_end_matches('.'),
        s.dropped(DropReason::NatPortsExhausted),
    )?;
    {
        let mut m = enc.encode_descriptor(
            "podswitch_service_endpoints",
            "Distinct endpoint addresses of each service in the service table",
            None,
            MetricType::Gauge,
        )?;
        for (name, n) in &s.service_endpoints {
            ConstGauge::new(*n as i64).encode(m.encode_family(&[("service", name.as_str())])?)?;
        }
    }
    gauge(
        &mut enc,
        "podswitch_services",
        "Services the switch has been given",
        s.services,
    )
}

/// The registry a scrape encodes: the collector and the apply histogram.
pub fn registry(source: Box<SourceFn>, apply_seconds: Histogram) -> Registry {
    let mut r = Registry::default();
    r.register_with_unit(
        "podswitch_control_apply",
        "Latency of control-plane requests that change the switch (ports, topology, services, nodes)",
        Unit::Seconds,
        apply_seconds,
    );
    r.register_collector(Box::new(SwitchCollector::new(source)));
    r
}

/// The bound HTTP endpoint, before its thread starts.
pub struct Exporter {
    server: tiny_http::Server,
    registry: Registry,
    health: Arc<Health>,
}

impl Exporter {
    /// Binds `addr`; failing here fails the daemon's start, naming the address.
    pub fn bind(addr: SocketAddr, registry: Registry, health: Arc<Health>) -> anyhow::Result<Self> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
        Ok(Exporter {
            server,
            registry,
            health,
        })
    }

    /// Serves requests until `shutdown` is set.
    pub fn serve(self, shutdown: Arc<AtomicBool>) {
        while !shutdown.load(Ordering::SeqCst) {
            match self.server.recv_timeout(Duration::from_millis(500)) {
                Ok(Some(req)) => {
                    let resp = self.respond(req.method(), req.url());
                    if let Err(e) = req.respond(resp) {
                        tracing::debug!(error = %e, "metrics response not sent");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint stopped");
                    return;
                }
            }
        }
    }

    fn respond(
        &self,
        method: &tiny_http::Method,
        url: &str,
    ) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let path = url.split('?').next().unwrap_or(url);
        if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
            return text(405, "method not allowed\n".to_string());
        }
        match path {
            "/metrics" => {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                    Ok(()) => text(200, body).with_header(header(OPENMETRICS_CONTENT_TYPE)),
                    Err(_) => text(500, "encoding metrics failed\n".to_string()),
                }
            }
            "/healthz" => status(self.health.live()),
            "/readyz" => status(self.health.ready()),
            _ => text(404, "not found\n".to_string()),
        }
    }
}

fn header(content_type: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
        .expect("a static header is valid")
}

fn text(code: u16, body: String) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_string(body)
        .with_status_code(code)
        .with_header(header("text/plain; charset=utf-8"))
}

fn status(r: Result<(), String>) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    match r {
        Ok(()) => text(200, "ok\n".to_string()),
        Err(reason) => text(503, format!("{reason}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Scrape {
        Scrape {
            ports: vec![
                (
                    "default/a".into(),
                    PortStats {
                        rx_packets: 50,
                        rx_bytes: 5000,
                        ..Default::default()
                    },
                ),
                (
                    "default/b".into(),
                    PortStats {
                        tx_packets: 50,
                        tx_bytes: 5000,
                        ..Default::default()
                    },
                ),
            ],
            drops: DropReason::ALL.iter().map(|&r| (r, 1, 100)).collect(),
            forwarded_local: 100,
            conntrack_capacity: 262_144,
            conntrack_entries: 2,
            service_endpoints: [("default/web".to_string(), 3)].into_iter().collect(),
            services: 1,
            vxlan_tx: 7,
            events: (1..=EVENT_SERIES.len() as u64).collect(),
            workers: vec![
                WorkerPollStats {
                    working_ns: 1_500_000_000,
                    polling_ns: 250_000_000,
                    sleeping_ns: 3_000_000_000,
                    wakeups: 12,
                    empty_polls: 4000,
                    contended_yields: 3,
                },
                WorkerPollStats::default(),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn every_datapath_event_is_a_counter_with_its_value() {
        let all = samples(&render(sample()));
        for (i, (name, _, _)) in EVENT_SERIES.iter().enumerate() {
            let total = format!("{name}_total");
            let v = all.iter().find(|(n, _, _)| *n == total);
            assert_eq!(v.map(|x| x.2), Some(i as f64 + 1.0), "{total}");
        }
        let tx = all
            .iter()
            .find(|(n, l, _)| n == "podswitch_vxlan_packets_total" && l["direction"] == "tx");
        assert_eq!(tx.map(|x| x.2), Some(7.0));
    }

    #[derive(Debug)]
    struct Fixed(Scrape);
    impl Collector for Fixed {
        fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_scrape(&self.0, enc)
        }
    }

    fn render(s: Scrape) -> String {
        let mut r = Registry::default();
        let h = apply_latency_histogram();
        h.observe(0.002);
        r.register_with_unit("podswitch_control_apply", "apply", Unit::Seconds, h);
        r.register_collector(Box::new(Fixed(s)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    /// A sample line split into its name, labels and value.
    fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().expect("numeric value");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("key=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        (name, labels, value)
    }

    fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            // Descriptions contain spaces but never `", `-free breaks that
            // would confuse the split; the info metric is checked on its own.
            .filter(|l| !l.starts_with("podswitch_drop_reason_info"))
            .map(parse_sample)
            .collect()
    }

    fn value(
        all: &[(String, BTreeMap<String, String>, f64)],
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<f64> {
        all.iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    }

    #[test]
    fn every_sample_line_parses_and_ends_with_eof() {
        let text = render(sample());
        assert!(text.ends_with("# EOF\n"), "{text}");
        // The encoder adds the HELP line's full stop itself.
        assert!(!text
            .lines()
            .any(|l| l.starts_with("# HELP") && l.ends_with("..")));
        let all = samples(&text);
        assert!(all.iter().all(|(n, _, _)| n.starts_with("podswitch_")));
        assert!(all.len() > DropReason::ALL.len() * 2);
    }

    #[test]
    fn counters_carry_total_and_unit_suffixes() {
        let all = samples(&render(sample()));
        assert_eq!(
            value(
                &all,
                "podswitch_port_rx_packets_total",
                &[("port", "default/a")]
            ),
            Some(50.0)
        );
        assert_eq!(
            value(
                &all,
                "podswitch_port_rx_bytes_total",
                &[("port", "default/a")]
            ),
            Some(5000.0)
        );
        assert_eq!(
            value(
                &all,
                "podswitch_port_tx_packets_total",
                &[("port", "default/b")]
            ),
            Some(50.0)
        );
        assert_eq!(
            value(
                &all,
                "podswitch_forwarded_packets_total",
                &[("path", "local")]
            ),
            Some(100.0)
        );
        assert_eq!(
            value(
                &all,
                "podswitch_forwarded_packets_total",
                &[("path", "overlay")]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(&all, "podswitch_conntrack_capacity", &[]),
            Some(262_144.0)
        );
        assert_eq!(value(&all, "podswitch_conntrack_entries", &[]), Some(2.0));
        assert_eq!(
            value(
                &all,
                "podswitch_worker_time_seconds_total",
                &[("worker", "0"), ("state", "working")]
            ),
            Some(1.5)
        );
        assert_eq!(
            value(
                &all,
                "podswitch_worker_time_seconds_total",
                &[("worker", "0"), ("state", "sleeping")]
            ),
            Some(3.0)
        );
        assert_eq!(
            value(&all, "podswitch_worker_wakeups_total", &[("worker", "0")]),
            Some(12.0)
        );
        assert_eq!(
            value(
                &all,
                "podswitch_worker_empty_polls_total",
                &[("worker", "1")]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(&all, "podswitch_nat_port_exhausted_total", &[]),
            Some(1.0)
        );
        assert_eq!(
            value(
                &all,
                "podswitch_service_endpoints",
                &[("service", "default/web")]
            ),
            Some(3.0)
        );
        assert_eq!(value(&all, "podswitch_services", &[]), Some(1.0));
        assert_eq!(
            value(&all, "podswitch_control_apply_seconds_count", &[]),
            Some(1.0)
        );
        assert_eq!(
            value(
                &all,
                "podswitch_control_apply_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn every_drop_reason_has_packet_and_byte_series() {
        let text = render(sample());
        let all = samples(&text);
        for r in DropReason::ALL {
            let l = [("stage", r.stage().name()), ("reason", r.name())];
            assert_eq!(
                value(&all, "podswitch_drops_total", &l),
                Some(1.0),
                "{}",
                r.name()
            );
            assert_eq!(
                value(&all, "podswitch_drop_bytes_total", &l),
                Some(100.0),
                "{}",
                r.name()
            );
            assert!(
                text.contains(&format!("reason=\"{}\"", r.name())),
                "info for {}",
                r.name()
            );
        }
    }

    #[test]
    fn readiness_waits_for_snapshot_and_workers() {
        let h = Arc::new(Health::default());
        h.beat();
        assert!(h.live().is_ok());
        assert!(h.ready().unwrap_err().contains("snapshot"));
        h.set_published();
        assert!(h.ready().is_err(), "no workers yet");
        let w = h.worker_started();
        assert!(h.ready().is_ok());
        drop(w);
        assert!(h.ready().unwrap_err().contains("0 of 1"));
    }
}
