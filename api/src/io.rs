//! How the switch's workers wait for and move frames, as configured and
//! reported: the poll mode with its adaptive budget, and the I/O backend.

use serde::{Deserialize, Serialize};

/// The default adaptive budget: how long after its last frame a worker
/// keeps polling. A request/response round trip between pods is 20-60 µs
/// on the test VMs, so 100 µs keeps a worker awake across a ping-pong
/// while an idle switch parks within a tenth of a millisecond.
pub const DEFAULT_ADAPTIVE_BUDGET_US: u64 = 100;
/// The largest adaptive budget accepted (beyond this, use `poll`).
pub const MAX_ADAPTIVE_BUDGET_US: u64 = 1_000_000;

/// How an idle worker waits for frames.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PollMode {
    /// Park in epoll as soon as no frame is waiting.
    Interrupt,
    /// Busy-poll for the adaptive budget after the last frame, then park.
    #[default]
    Adaptive,
    /// Never park: busy-poll for as long as the switch runs.
    Poll,
}

impl PollMode {
    /// Every mode, in the order the CLI lists them.
    pub const ALL: [PollMode; 3] = [PollMode::Interrupt, PollMode::Adaptive, PollMode::Poll];

    /// The name in configs, flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            PollMode::Interrupt => "interrupt",
            PollMode::Adaptive => "adaptive",
            PollMode::Poll => "poll",
        }
    }
}

impl std::fmt::Display for PollMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A poll mode name that is not one of [`PollMode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown poll mode {0:?} (modes: interrupt, adaptive, poll)")]
pub struct UnknownPollMode(pub String);

impl std::str::FromStr for PollMode {
    type Err = UnknownPollMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PollMode::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| UnknownPollMode(s.to_string()))
    }
}

/// An adaptive budget outside 1 µs ..= [`MAX_ADAPTIVE_BUDGET_US`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("adaptive poll budget {0} µs is outside 1..={MAX_ADAPTIVE_BUDGET_US} µs")]
pub struct BudgetOutOfRange(pub u64);

/// Checks an adaptive budget in microseconds.
pub fn check_budget_us(us: u64) -> Result<u64, BudgetOutOfRange> {
    if (1..=MAX_ADAPTIVE_BUDGET_US).contains(&us) {
        Ok(us)
    } else {
        Err(BudgetOutOfRange(us))
    }
}

/// How a worker moves frames to and from its tap queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoBackend {
    /// io_uring where the kernel allows it, else read/write.
    #[default]
    Auto,
    /// io_uring, or the switch refuses to start.
    IoUring,
    /// One read/write system call per frame.
    Syscalls,
}

impl IoBackend {
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::IoUring => "io_uring",
            IoBackend::Syscalls => "syscalls",
        }
    }
}

impl std::str::FromStr for IoBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [IoBackend::Auto, IoBackend::IoUring, IoBackend::Syscalls]
            .into_iter()
            .find(|b| b.name() == s.trim())
            .ok_or_else(|| format!("unknown I/O backend {s:?} (auto, io_uring, syscalls)"))
    }
}

impl std::fmt::Display for IoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
