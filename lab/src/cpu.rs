//! CPU accounting for `podswitch bench`'s CPU-seconds per GB.
//!
//! Over one throughput run the bench adds up:
//! - the bench process itself (`/proc/self/stat` utime + stime, all its
//!   threads: the traffic generator's senders and sinks run as threads of
//!   this process inside the pod namespaces, and the kernel's work on
//!   their send and receive paths that runs in process context is
//!   charged here);
//! - the switch daemons of the mode (`/proc/<pid>/stat` utime + stime;
//!   none for the kernel baselines);
//! - softirq time of the whole machine (`/proc/stat`, the `cpu` line's
//!   softirq column): the kernel's forwarding (bridge, routing, vxlan,
//!   netfilter, veth and tap receive) that runs in softirq context. It is
//!   machine-wide, so unrelated network activity during the run lands in
//!   it too; on an otherwise idle network stack that is small.
//!
//! The sum divided by the gigabytes delivered is the number reported.
//! Resolution is the kernel's USER_HZ tick (10 ms).

use std::path::Path;

use anyhow::Context;

/// CPU times at one instant, in clock ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSnapshot {
    /// utime + stime of the bench process.
    pub own: u64,
    /// utime + stime of each watched process, by pid; a process that
    /// vanished counts 0.
    pub processes: Vec<(i32, u64)>,
    /// Machine-wide softirq time.
    pub softirq: u64,
}

/// CPU seconds spent between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CpuUsage {
    /// The bench process (traffic generator threads).
    pub own_s: f64,
    /// The switch daemons.
    pub switch_s: f64,
    /// Machine-wide softirq.
    pub softirq_s: f64,
}

impl CpuUsage {
    /// Everything together.
    pub fn total_s(&self) -> f64 {
        self.own_s + self.switch_s + self.softirq_s
    }
}

/// Clock ticks per second of `/proc/stat` and `/proc/<pid>/stat`: the
/// kernel reports them in USER_HZ, which is 100 on every architecture
/// Linux runs on here (x86, arm64), whatever CONFIG_HZ is.
pub fn ticks_per_second() -> u64 {
    100
}

/// utime + stime from the text of a `/proc/<pid>/stat` file. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// from the last `)`: utime and stime are fields 14 and 15.
pub fn parse_pid_stat(text: &str) -> anyhow::Result<u64> {
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' after the command name")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, index 11.
    let num = |i: usize, name: &str| -> anyhow::Result<u64> {
        f.get(i)
            .with_context(|| format!("no {name} field"))?
            .parse::<u64>()
            .with_context(|| format!("{name} is not a number"))
    };
    Ok(num(11, "utime")? + num(12, "stime")?)
}

/// The softirq column of the `cpu` line of `/proc/stat`.
pub fn parse_softirq(proc_stat: &str) -> anyhow::Result<u64> {
    let line = proc_stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
        .context("no aggregate cpu line")?;
    // cpu user nice system idle iowait irq softirq ...
    line.split_whitespace()
        .nth(7)
        .context("no softirq column")?
        .parse()
        .context("softirq is not a number")
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Takes a snapshot of the bench process, the processes `pids` and the
/// machine's softirq time.
///
/// # Errors
/// If `/proc/self/stat` or `/proc/stat` cannot be read or parsed.
pub fn snapshot(pids: &[i32]) -> anyhow::Result<CpuSnapshot> {
    let own =
        parse_pid_stat(&read(Path::new("/proc/self/stat"))?).context("parsing /proc/self/stat")?;
    let processes = pids
        .iter()
        .map(|&pid| {
            let t = read(Path::new(&format!("/proc/{pid}/stat")))
                .and_then(|s| parse_pid_stat(&s))
                .unwrap_or(0);
            (pid, t)
        })
        .collect();
    let softirq = parse_softirq(&read(Path::new("/proc/stat"))?).context("parsing /proc/stat")?;
    Ok(CpuSnapshot {
        own,
        processes,
        softirq,
    })
}

/// CPU seconds from `a` to `b` (a process missing from either counts 0).
pub fn usage(a: &CpuSnapshot, b: &CpuSnapshot, ticks_per_s: u64) -> CpuUsage {
    let s = |t: u64| t as f64 / ticks_per_s as f64;
    let switch: u64 = b
        .processes
        .iter()
        .map(|&(pid, t)| {
            let before = a
                .processes
                .iter()
                .find(|(p, _)| *p == pid)
                .map_or(t, |&(_, t0)| t0);
            t.saturating_sub(before)
        })
        .sum();
    CpuUsage {
        own_s: s(b.own.saturating_sub(a.own)),
        switch_s: s(switch),
        softirq_s: s(b.softirq.saturating_sub(a.softirq)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_stat_with_spaces_in_the_name() {
        let line =
            "4242 (pod switch) (x) S 1 4242 4242 0 -1 4194560 1 0 0 0 170 30 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_pid_stat(line).unwrap(), 200);
        assert!(parse_pid_stat("4242 (x) S 1").is_err());
        assert!(parse_pid_stat("garbage").is_err());
    }

    #[test]
    fn softirq_column_of_the_cpu_line() {
        let text = "cpu  100 2 300 4000 5 6 77 0 0 0\ncpu0 50 1 150 2000 2 3 40 0 0 0\n";
        assert_eq!(parse_softirq(text).unwrap(), 77);
        assert!(parse_softirq("cpu0 1 2 3\n").is_err());
    }

    #[test]
    fn usage_between_snapshots() {
        let a = CpuSnapshot {
            own: 100,
            processes: vec![(7, 50), (8, 10)],
            softirq: 1000,
        };
        let b = CpuSnapshot {
            own: 150,
            processes: vec![(7, 80), (8, 10), (9, 5)],
            softirq: 1020,
        };
        let u = usage(&a, &b, 100);
        assert_eq!(u.own_s, 0.5);
        assert_eq!(u.switch_s, 0.3);
        assert_eq!(u.softirq_s, 0.2);
        assert!((u.total_s() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn own_snapshot_reads() {
        let s = snapshot(&[std::process::id() as i32]).unwrap();
        assert_eq!(s.processes.len(), 1);
        assert!(ticks_per_second() > 0);
    }
}

/// The PM QoS device: while a process holds it open with a value written,
/// no CPU enters an idle state whose exit latency exceeds that value
/// (Documentation/power/pm_qos_interface.rst).
const CPU_DMA_LATENCY: &str = "/dev/cpu_dma_latency";

/// Keeps the CPUs out of idle states deeper than polling for as long as it
/// lives (`/dev/cpu_dma_latency` held at 0 µs), as latency benchmarks do:
/// otherwise every request/response measures how long an idle CPU takes to
/// wake (on a VM whose vCPUs halt when idle, tens of µs), on both sides of
/// a comparison, more than the datapath. The kernel drops the request when
/// the file is closed, also if the process dies.
#[derive(Debug)]
pub struct IdleStatesHold {
    _file: Option<std::fs::File>,
    /// What was done, for the report (`held at 0 us`, or why not).
    pub status: String,
}

impl IdleStatesHold {
    /// Takes the hold when `enable`, else records that idle states were left on.
    pub fn take(enable: bool) -> Self {
        use std::io::Write;
        if !enable {
            return IdleStatesHold {
                _file: None,
                status: "left on (--allow-cpu-idle)".into(),
            };
        }
        let held = std::fs::OpenOptions::new()
            .write(true)
            .open(CPU_DMA_LATENCY)
            .and_then(|mut f| f.write_all(&0i32.to_ne_bytes()).map(|()| f));
        match held {
            Ok(f) => IdleStatesHold {
                _file: Some(f),
                status: format!("off: {CPU_DMA_LATENCY} held at 0 us"),
            },
            Err(e) => IdleStatesHold {
                _file: None,
                status: format!("left on ({CPU_DMA_LATENCY}: {e})"),
            },
        }
    }

    pub fn is_held(&self) -> bool {
        self._file.is_some()
    }
}
