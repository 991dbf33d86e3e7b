//! What `podswitch bench` reports: the data (serialized as the JSON file)
//! and its rendering as the terminal table.
//!
//! Each mode has one [`Metric`] per measured quantity with one sample per
//! round; the table shows the median and the min-max of those samples,
//! and for each podswitch mode the ratio to its kernel baseline: the
//! median of the per-round ratios podswitch / kernel (rounds are measured
//! back to back, so pairing them cancels drift). Whether a higher value
//! is better depends on the metric (rates and throughput: higher;
//! latency and CPU per GB: lower); the table says which.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::cpu::CpuUsage;
use super::stats;

/// What makes a result reproducible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// `uname -r`.
    pub kernel: String,
    /// CPU model name.
    pub cpu: String,
    /// Cores available to the process.
    pub cores: usize,
    /// podswitch's version.
    pub podswitch_version: String,
    /// 1-minute load average at the start and at the end of the run.
    pub load_start: f64,
    pub load_end: f64,
    /// How long the whole run took, seconds.
    pub elapsed_s: f64,
    /// CPU idle states during the run (see `cpu::IdleStatesHold`).
    #[serde(default)]
    pub cpu_idle_states: String,
}

/// One mode's lab, as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeSetup {
    /// What the lab is (nodes, pods, the path between client and server).
    pub shape: String,
    /// The client pod's interface MTU.
    pub mtu: Option<u32>,
    /// The client pod's `eth0` offloads (`ethtool -k`), feature -> on/off.
    pub offloads: BTreeMap<String, String>,
    /// podswitch's configuration for this mode (empty for the kernel).
    pub podswitch_config: BTreeMap<String, String>,
}

/// One measured quantity of one mode: a sample per round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// `tcp-rr-64 p50`, `tcp-stream-1`, `cpu-s-per-gb` ...
    pub name: String,
    /// The test that produced it.
    pub test: String,
    pub unit: String,
    pub higher_is_better: bool,
    /// One value per round, in round order.
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Metric {
    /// A metric from its samples (median, min and max computed; NaN when
    /// there are none).
    pub fn new(
        name: &str,
        test: &str,
        unit: &str,
        higher_is_better: bool,
        samples: Vec<f64>,
    ) -> Self {
        let (min, max) = stats::min_max(&samples).unwrap_or((f64::NAN, f64::NAN));
        Metric {
            name: name.into(),
            test: test.into(),
            unit: unit.into(),
            higher_is_better,
            median: stats::median(&samples).unwrap_or(f64::NAN),
            min,
            max,
            samples,
        }
    }
}

/// A latency distribution over all rounds, for the CDF plot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cdf {
    pub test: String,
    /// (microseconds, fraction of transactions at or below).
    pub points: Vec<[f64; 2]>,
}

/// Everything measured for one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeReport {
    pub mode: String,
    pub kernel: bool,
    pub setup: ModeSetup,
    pub metrics: Vec<Metric>,
    pub cdfs: Vec<Cdf>,
    /// CPU used during each single-stream throughput run.
    pub cpu: Vec<CpuUsage>,
}

impl ModeReport {
    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

/// One row of a podswitch-vs-kernel comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub podswitch_median: f64,
    pub kernel_median: f64,
    /// Median of per-round podswitch / kernel; None when not computable.
    pub ratio: Option<f64>,
}

/// A podswitch mode against its kernel baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub podswitch: String,
    pub kernel: String,
    pub rows: Vec<ComparisonRow>,
}

/// Compares the metrics the two modes have in common.
pub fn compare(ps: &ModeReport, kernel: &ModeReport) -> Comparison {
    let rows = ps
        .metrics
        .iter()
        .filter_map(|m| {
            let k = kernel.metric(&m.name)?;
            Some(ComparisonRow {
                metric: m.name.clone(),
                unit: m.unit.clone(),
                higher_is_better: m.higher_is_better,
                podswitch_median: m.median,
                kernel_median: k.median,
                ratio: stats::paired_ratio(&m.samples, &k.samples),
            })
        })
        .collect();
    Comparison {
        podswitch: ps.mode.clone(),
        kernel: kernel.mode.clone(),
        rows,
    }
}

/// One comparison of the built-in generator with an external tool, both
/// run on the same path right after each other (alternating, with the
/// same duration), so the machine's load of the moment hits both alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossCheck {
    pub mode: String,
    /// `iperf3` or `sockperf`.
    pub tool: String,
    /// What is compared (`tcp-stream-1`, `udp-rr-64 p50`).
    pub metric: String,
    pub unit: String,
    /// The built-in generator's runs.
    pub builtin_samples: Vec<f64>,
    /// Their median.
    pub builtin: f64,
    /// The tool's runs (empty when it could not run, see `note`).
    pub external_samples: Vec<f64>,
    /// Their median; None when the tool could not run.
    pub external: Option<f64>,
    /// The median over the alternating pairs of runs of
    /// |builtin - external| / external (pairing cancels a slow phase of
    /// the machine that hits both runs of a pair, as the main table's
    /// per-round ratios do); with unequal run counts, that of the medians.
    pub disagreement: Option<f64>,
    /// More than 10 % apart (or not comparable).
    pub flagged: bool,
    pub note: Option<String>,
    /// What both sides measured, the same way: the window and the
    /// traffic.
    #[serde(default)]
    pub window: String,
}

impl CrossCheck {
    /// Compares the built-in generator's `builtin` runs with the tool's.
    pub fn new(
        mode: &str,
        tool: &str,
        metric: &str,
        unit: &str,
        builtin: Vec<f64>,
        external: Result<Vec<f64>, String>,
    ) -> Self {
        let (external_samples, note) = match external {
            Ok(v) => (v, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let b = stats::median(&builtin).unwrap_or(f64::NAN);
        let external = stats::median(&external_samples);
        let disagreement = if external_samples.len() == builtin.len() && !builtin.is_empty() {
            stats::paired_disagreement(&builtin, &external_samples)
        } else {
            external.and_then(|e| stats::disagreement(b, e))
        };
        CrossCheck {
            mode: mode.into(),
            tool: tool.into(),
            metric: metric.into(),
            unit: unit.into(),
            builtin_samples: builtin,
            builtin: b,
            external_samples,
            external,
            disagreement,
            flagged: disagreement.is_none_or(|d| d > stats::DISAGREEMENT_LIMIT),
            note,
            window: String::new(),
        }
    }

    /// Records what both sides measured.
    pub fn with_window(mut self, window: String) -> Self {
        self.window = window;
        self
    }
}

/// The run's settings, recorded with the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub rr_secs: f64,
    pub crr_secs: f64,
    pub stream_secs: f64,
    /// Seconds left out at the start of each throughput run.
    #[serde(default)]
    pub stream_warmup_secs: f64,
    pub pps_secs: f64,
    pub crosscheck_secs: u64,
    /// Seconds of warm-up before each throughput run of the cross-check
    /// (iperf3's `--omit`).
    #[serde(default)]
    pub crosscheck_warmup_secs: u64,
    pub crosscheck_runs: usize,
    pub streams: usize,
    pub services: usize,
    pub workers_per_switch: usize,
    pub modes: Vec<String>,
    pub tests: Vec<String>,
    /// The switches' poll modes (each podswitch mode ran in each).
    #[serde(default)]
    pub poll_modes: Vec<String>,
    /// The switches' tap I/O backends (crossed with the poll modes).
    #[serde(default)]
    pub io_backends: Vec<String>,
}

/// The whole report (the JSON file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub meta: Meta,
    pub settings: Settings,
    pub modes: Vec<ModeReport>,
    pub comparisons: Vec<Comparison>,
    pub crosscheck: Vec<CrossCheck>,
}

impl Report {
    /// The mode called `name`.
    pub fn mode(&self, name: &str) -> Option<&ModeReport> {
        self.modes.iter().find(|m| m.mode == name)
    }
}

/// A number with about three significant digits.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(m: &Metric) -> String {
    format!("{} ({}-{})", num(m.median), num(m.min), num(m.max))
}

fn better(hib: bool) -> &'static str {
    if hib {
        "higher"
    } else {
        "lower"
    }
}

/// The terminal table.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.meta;
    let _ = writeln!(
        s,
        "podswitch bench - podswitch {} on Linux {}, {} ({} cores), {}",
        m.podswitch_version, m.kernel, m.cpu, m.cores, m.date
    );
    let st = &r.settings;
    let _ = writeln!(
        s,
        "{} interleaved rounds{}; per measurement: rr {} s, crr {} s, stream {} s at the receiver after {} s of warm-up ({} streams for tcp-stream-n), pps {} s; load average {:.2} at start, {:.2} at end; {:.0} s in all; CPU idle states {}",
        st.rounds,
        if st.quick { " (--quick)" } else { "" },
        st.rr_secs,
        st.crr_secs,
        st.stream_secs,
        st.stream_warmup_secs,
        st.streams,
        st.pps_secs,
        m.load_start,
        m.load_end,
        m.elapsed_s,
        m.cpu_idle_states
    );
    let _ = writeln!(
        s,
        "medians (min-max) over the rounds; ratio = median of per-round podswitch/kernel"
    );
    let header = |s: &mut String, a: &str, b: &str| {
        let _ = writeln!(
            s,
            "  {:<22} {:<8} {:<6} {:>24} {:>24} {:>7}",
            "metric", "unit", "better", a, b, "ratio"
        );
    };
    let mut shown = Vec::new();
    for c in &r.comparisons {
        let (Some(ps), Some(k)) = (r.mode(&c.podswitch), r.mode(&c.kernel)) else {
            continue;
        };
        shown.push(c.podswitch.clone());
        shown.push(c.kernel.clone());
        let _ = writeln!(s, "\n{} vs {} ({})", c.podswitch, c.kernel, ps.setup.shape);
        header(&mut s, &c.podswitch, &c.kernel);
        for row in &c.rows {
            let (Some(a), Some(b)) = (ps.metric(&row.metric), k.metric(&row.metric)) else {
                continue;
            };
            let _ = writeln!(
                s,
                "  {:<22} {:<8} {:<6} {:>24} {:>24} {:>7}",
                row.metric,
                row.unit,
                better(row.higher_is_better),
                cell(a),
                cell(b),
                row.ratio.map_or("-".into(), |x| format!("{x:.2}x"))
            );
        }
        // What the switches spent during each test: podswitch's own
        // figure, with no kernel counterpart (the kernel path's cost is
        // softirq time, in cpu-s-per-gb).
        let cpu: Vec<String> = ps
            .metrics
            .iter()
            .filter_map(|m| {
                let test = m.name.strip_suffix(" switch-cpu")?;
                Some(format!("{test} {:.2}", m.median))
            })
            .collect();
        if !cpu.is_empty() {
            let _ = writeln!(
                s,
                "  switch CPU during each test, cores (median): {}",
                cpu.join(", ")
            );
        }
    }
    for mr in r.modes.iter().filter(|mr| !shown.contains(&mr.mode)) {
        let _ = writeln!(
            s,
            "\n{} ({}), no baseline in this run",
            mr.mode, mr.setup.shape
        );
        let _ = writeln!(
            s,
            "  {:<22} {:<8} {:<6} {:>24}",
            "metric", "unit", "better", "median (min-max)"
        );
        for mt in &mr.metrics {
            let _ = writeln!(
                s,
                "  {:<22} {:<8} {:<6} {:>24}",
                mt.name,
                mt.unit,
                better(mt.higher_is_better),
                cell(mt)
            );
        }
    }
    if !r.crosscheck.is_empty() {
        let _ = writeln!(
            s,
            "\nCross-check of the built-in generator on the kernel baselines: {} alternating run(s) of {} s each (each side first in turn), medians; diff = how far the median of the per-pair ratios is from 1 (flagged when more than 10%)",
            st.crosscheck_runs,
            st.crosscheck_secs
        );
        let _ = writeln!(
            s,
            "  {:<16} {:<22} {:<7} {:>9} {:>9} {:<9} {:>6}",
            "mode", "metric", "unit", "built-in", "external", "tool", "diff"
        );
        for c in &r.crosscheck {
            let _ = writeln!(
                s,
                "  {:<16} {:<22} {:<7} {:>9} {:>9} {:<9} {:>6} {}",
                c.mode,
                c.metric,
                c.unit,
                num(c.builtin),
                c.external.map_or("-".into(), num),
                c.tool,
                c.disagreement
                    .map_or("-".into(), |d| format!("{:.0}%", d * 100.0)),
                match (&c.note, c.flagged) {
                    (Some(n), _) => format!("NOT RUN: {n}"),
                    (None, true) => "DISAGREE".into(),
                    (None, false) => "ok".into(),
                }
            );
        }
        // What each comparison measured, once per metric.
        let mut said = Vec::new();
        for c in r.crosscheck.iter().filter(|c| !c.window.is_empty()) {
            if !said.contains(&&c.metric) {
                said.push(&c.metric);
                let _ = writeln!(s, "  {} vs {}: {}", c.metric, c.tool, c.window);
            }
        }
    }
    let _ = writeln!(s, "\nLabs:");
    for mr in &r.modes {
        let off: Vec<String> = mr
            .setup
            .offloads
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "  {:<18} {}; pod MTU {}; offloads: {}{}",
            mr.mode,
            mr.setup.shape,
            mr.setup.mtu.map_or("?".into(), |m| m.to_string()),
            if off.is_empty() {
                "unknown".into()
            } else {
                off.join(", ")
            },
            if mr.setup.podswitch_config.is_empty() {
                String::new()
            } else {
                format!(
                    "; podswitch {}",
                    mr.setup
                        .podswitch_config
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
        );
    }
    let _ = writeln!(
        s,
        "cpu-s-per-gb: (bench process + switch processes + machine-wide softirq) CPU seconds during tcp-stream-1, per GB delivered"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(name: &str, kernel: bool, rr: Vec<f64>, tput: Vec<f64>) -> ModeReport {
        ModeReport {
            mode: name.into(),
            kernel,
            setup: ModeSetup {
                shape: "2 nodes".into(),
                mtu: Some(1500),
                offloads: [("tcp-segmentation-offload".to_string(), "on".to_string())].into(),
                podswitch_config: BTreeMap::new(),
            },
            metrics: vec![
                Metric::new("tcp-rr-64 p50", "tcp-rr-64", "us", false, rr),
                Metric::new("tcp-stream-1", "tcp-stream-1", "Gbit/s", true, tput),
            ],
            cdfs: vec![],
            cpu: vec![],
        }
    }

    fn report() -> Report {
        let ps = mode(
            "podswitch-native",
            false,
            vec![30.0, 20.0, 40.0],
            vec![5.0, 6.0, 4.0],
        );
        let k = mode(
            "kernel-hostgw",
            true,
            vec![15.0, 10.0, 20.0],
            vec![10.0, 10.0, 10.0],
        );
        let c = compare(&ps, &k);
        let x = CrossCheck::new(
            "kernel-hostgw",
            "iperf3",
            "tcp-stream-1",
            "Gbit/s",
            vec![9.0, 10.0, 11.0],
            Ok(vec![12.0, 11.0, 13.0]),
        )
        .with_window("receiver's bytes over 2 s after 1 s of warm-up".into());
        let y = CrossCheck::new(
            "kernel-hostgw",
            "sockperf",
            "udp-rr-64 p50",
            "us",
            vec![10.0],
            Err("not installed".into()),
        );
        Report {
            meta: Meta {
                date: "2026-11-23T16:00:00Z".into(),
                kernel: "6.1.0".into(),
                cpu: "Test CPU".into(),
                cores: 2,
                podswitch_version: "0.1.0".into(),
                load_start: 0.5,
                load_end: 0.7,
                elapsed_s: 42.0,
                cpu_idle_states: "off".into(),
            },
            settings: Settings {
                poll_modes: vec![],
                io_backends: vec![],
                quick: true,
                rounds: 3,
                rr_secs: 0.2,
                crr_secs: 0.2,
                stream_secs: 0.5,
                stream_warmup_secs: 0.1,
                pps_secs: 0.2,
                crosscheck_secs: 1,
                crosscheck_warmup_secs: 1,
                crosscheck_runs: 1,
                streams: 4,
                services: 100,
                workers_per_switch: 0,
                modes: vec!["podswitch-native".into(), "kernel-hostgw".into()],
                tests: vec!["tcp-rr-64".into(), "tcp-stream-1".into()],
            },
            modes: vec![ps, k],
            comparisons: vec![c],
            crosscheck: vec![x, y],
        }
    }

    #[test]
    fn metric_summary() {
        let m = Metric::new("x", "t", "us", false, vec![3.0, 1.0, 2.0]);
        assert_eq!((m.median, m.min, m.max), (2.0, 1.0, 3.0));
        let e = Metric::new("x", "t", "us", false, vec![]);
        assert!(e.median.is_nan());
    }

    #[test]
    fn comparison_uses_paired_ratios() {
        let r = report();
        let rows = &r.comparisons[0].rows;
        assert_eq!(rows.len(), 2);
        // Rounds 30/15, 20/10, 40/20: 2.0 each.
        assert_eq!(rows[0].ratio, Some(2.0));
        assert_eq!(rows[1].ratio, Some(0.5));
        assert_eq!(rows[0].podswitch_median, 30.0);
        assert_eq!(rows[0].kernel_median, 15.0);
    }

    #[test]
    fn crosscheck_flags() {
        let r = report();
        // Pairs 9/12, 10/11, 11/13: ratios 0.75, 0.91, 0.85; the median is
        // 15.4 % below 1.
        let x = &r.crosscheck[0];
        assert!(x.flagged);
        assert!((x.disagreement.unwrap() - 2.0 / 13.0).abs() < 1e-9);
        assert!(r.crosscheck[1].flagged && r.crosscheck[1].external.is_none());
        assert!(!CrossCheck::new("k", "iperf3", "t", "Gbit/s", vec![10.0], Ok(vec![10.5])).flagged);
    }

    #[test]
    fn table_shows_medians_ranges_ratios_and_crosschecks() {
        let t = render(&report());
        assert!(t.contains("podswitch-native vs kernel-hostgw"), "{t}");
        assert!(t.contains("30.0 (20.0-40.0)"), "{t}");
        assert!(t.contains("15.0 (10.0-20.0)"), "{t}");
        assert!(t.contains("2.00x") && t.contains("0.50x"), "{t}");
        assert!(
            t.contains("DISAGREE") && t.contains("NOT RUN: not installed"),
            "{t}"
        );
        assert!(
            t.contains("tcp-stream-1 vs iperf3: receiver's bytes over 2 s after 1 s of warm-up"),
            "{t}"
        );
        assert!(t.contains("Linux 6.1.0, Test CPU (2 cores)"), "{t}");
        assert!(t.contains("tcp-segmentation-offload on"), "{t}");
    }

    #[test]
    fn json_round_trips() {
        let r = report();
        let j = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["modes"][0]["metrics"][0]["median"], 30.0);
        assert_eq!(v["comparisons"][0]["rows"][0]["ratio"], 2.0);
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(num(1234.5), "1234");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(f64::NAN), "-");
    }
}
