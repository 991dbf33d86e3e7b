//! `podswitch bench`: overlay vs native vs kernel, measured interleaved in
//! one run (see `podswitch_bench`). Parses the flags, runs the
//! bench, prints the table and writes the JSON and SVG files.

use std::path::PathBuf;

use anyhow::Context;
use podswitch_bench::{self as bench, BenchConfig, Mode, Test};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Short measurements (CI, the README demo): under a minute on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the plot (latency CDFs, throughput bars) as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Modes to measure, comma-separated (default: all): podswitch-local,
    /// kernel-bridge, podswitch-native, kernel-hostgw, podswitch-vxlan,
    /// kernel-vxlan, podswitch-services, kernel-iptables.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// The switches' poll modes, comma-separated: interrupt, adaptive,
    /// poll (default: adaptive). With several, each podswitch mode runs in
    /// each, interleaved, and is reported as `MODE@POLL`.
    #[arg(long, value_delimiter = ',')]
    poll_modes: Vec<podswitch_switch::worker::poll::PollMode>,
    /// The switches' tap I/O, comma-separated: auto, io_uring, syscalls
    /// (default: auto). With several, crossed with the poll modes and
    /// reported as `MODE/IO` (`MODE@POLL/IO`).
    #[arg(long, value_delimiter = ',')]
    io_backends: Vec<podswitch_switch::worker::IoBackend>,
    /// Tests to run, comma-separated (default: all): tcp-rr-64, tcp-rr-1k,
    /// udp-rr-64, udp-rr-1k, tcp-crr, tcp-stream-1, tcp-stream-n, udp-pps-64.
    #[arg(long, value_delimiter = ',')]
    tests: Vec<String>,
    /// Interleaved rounds (default 3, --quick 2).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per request/response measurement (default 0.8, --quick 0.15).
    #[arg(long)]
    rr_secs: Option<f64>,
    /// Seconds per new-connection measurement (default 1, --quick 0.15).
    #[arg(long)]
    crr_secs: Option<f64>,
    /// Seconds per throughput measurement, counted at the receiver after
    /// the warm-up (default 1.5, --quick 0.3).
    #[arg(long)]
    stream_secs: Option<f64>,
    /// Seconds left out at the start of each throughput measurement, as
    /// iperf3's --omit (default 0.5, --quick 0.1).
    #[arg(long)]
    stream_warmup_secs: Option<f64>,
    /// Seconds per small-packet measurement (default 1, --quick 0.15).
    #[arg(long)]
    pps_secs: Option<f64>,
    /// Seconds of each iperf3/sockperf cross-check run (default 2, --quick 1).
    #[arg(long)]
    crosscheck_secs: Option<u64>,
    /// Seconds of warm-up before each throughput run of the cross-check,
    /// left out on both sides (iperf3 --omit; default 1).
    #[arg(long)]
    crosscheck_warmup_secs: Option<u64>,
    /// Alternating runs of each side in the cross-check (default 5, --quick 1).
    #[arg(long)]
    crosscheck_runs: Option<usize>,
    /// Skip the iperf3/sockperf cross-check.
    #[arg(long)]
    no_crosscheck: bool,
    /// Leave CPU idle states on. By default the run holds
    /// /dev/cpu_dma_latency at 0 so that a CPU waking from idle (tens of
    /// microseconds on a VM) does not dominate every round trip.
    #[arg(long)]
    allow_cpu_idle: bool,
    /// Streams of tcp-stream-n.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Services on both Service sides.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Worker threads per switch (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut cfg = BenchConfig::new(args.quick);
    if !args.modes.is_empty() {
        cfg.modes = args
            .modes
            .iter()
            .map(|m| Mode::parse(m.trim()))
            .collect::<anyhow::Result<_>>()?;
    }
    if !args.io_backends.is_empty() {
        cfg.io_backends = args.io_backends.clone();
    }
    if !args.poll_modes.is_empty() {
        cfg.poll_modes = args.poll_modes.clone();
    }
    if !args.tests.is_empty() {
        cfg.tests = args
            .tests
            .iter()
            .map(|t| Test::parse(t.trim()))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(r) = args.rounds {
        cfg.rounds = r;
    }
    if let Some(s) = args.rr_secs {
        cfg.rr_secs = s;
    }
    if let Some(s) = args.crr_secs {
        cfg.crr_secs = s;
    }
    if let Some(s) = args.stream_secs {
        cfg.stream_secs = s;
    }
    if let Some(s) = args.stream_warmup_secs {
        cfg.stream_warmup_secs = s;
    }
    if let Some(s) = args.pps_secs {
        cfg.pps_secs = s;
    }
    if let Some(s) = args.crosscheck_secs {
        cfg.crosscheck_secs = s;
    }
    if let Some(s) = args.crosscheck_warmup_secs {
        cfg.crosscheck_warmup_secs = s;
    }
    if let Some(n) = args.crosscheck_runs {
        cfg.crosscheck_runs = n;
    }
    cfg.crosscheck = !args.no_crosscheck;
    cfg.allow_cpu_idle = args.allow_cpu_idle;
    cfg.streams = args.streams;
    cfg.services = args.services;
    cfg.workers = args.workers;
    let exe = std::env::current_exe().context("locating the podswitch binary")?;
    // A per-run prefix: parallel runs never collide and a crashed run's
    // leftovers never block the next (TESTBED.md).
    let name = format!("bn{}", std::process::id());
    let report = bench::run(&cfg, &exe, &name)?;
    out!("{}", bench::report::render(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, bench::plot::render_svg(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
