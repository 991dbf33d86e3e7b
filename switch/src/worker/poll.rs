//! How a worker waits for frames: its poll mode, and the accounting of
//! where its time goes.
//!
//! Waking a parked thread costs more latency than copying a frame: a
//! request/response between two pods pays the wake-up twice per round trip
//! (once per direction), and the kernel's own bridge pays none. So, like
//! VPP's rx modes and the kernel's NAPI busy polling, a worker can keep
//! polling its queues instead of sleeping:
//!
//! | mode | when idle |
//! | --- | --- |
//! | [`PollMode::Interrupt`] | parks in epoll at once (lowest CPU, highest latency) |
//! | [`PollMode::Adaptive`] | keeps polling (epoll with a zero timeout) until the budget has passed since the last frame, then parks; parks at once when a yield between polls shows another thread waiting for the core |
//! | [`PollMode::Poll`] | never parks (a dedicated core, as DPDK/VPP deployments run) |
//!
//! The mode and the budget are read by every worker once per loop from a
//! [`PollControl`] the daemon shares, so `ctl poll-mode` changes them on a
//! running switch. Time is charged to one of three states per worker
//! ([`crate::metrics::PollCounters`]): working (an iteration that moved
//! frames), polling (a busy poll that found nothing) and sleeping (parked
//! in epoll).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

pub use podswitch_api::io::{
    check_budget_us, BudgetOutOfRange, PollMode, UnknownPollMode, DEFAULT_ADAPTIVE_BUDGET_US,
    MAX_ADAPTIVE_BUDGET_US,
};

/// How long a parked worker sleeps without events before it looks at the
/// shutdown flag and the snapshot on its own. Everything that needs a
/// parked worker sooner wakes it (a published snapshot with new ports,
/// `ctl poll-mode`, shutdown), so this is only a backstop; each idle
/// wake-up costs ~0.5 ms of CPU on the test VMs (#29: an idle switch's
/// budget is 1 % of a core), hence a second rather than 200 ms.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(1);
/// A yield between busy polls that takes longer than this gave the core to
/// another thread: the core is contended (a system call alone takes
/// 0.2-1.3 µs on the test VMs).
pub const CONTENDED_YIELD: Duration = Duration::from_micros(10);
/// How long the worker may wait in epoll when nothing is ready and its
/// last frame was `since_last_frame` ago; `core_contended`: since that
/// frame, a yield between polls gave the core to another thread for
/// longer than [`CONTENDED_YIELD`].
///
/// Adaptive polling pays off only on a core nobody else needs: where
/// the pods the switch serves wait for this core (more busy threads
/// than cores), every microsecond spent polling delays them, so the
/// worker parks until the next frame, as in `interrupt`.
pub fn idle_timeout(
    mode: PollMode,
    budget: Duration,
    since_last_frame: Duration,
    core_contended: bool,
) -> Duration {
    match mode {
        PollMode::Interrupt => PARK_TIMEOUT,
        PollMode::Poll => Duration::ZERO,
        PollMode::Adaptive if since_last_frame < budget && !core_contended => Duration::ZERO,
        PollMode::Adaptive => PARK_TIMEOUT,
    }
}

fn mode_from_u8(v: u8) -> PollMode {
    match v {
        0 => PollMode::Interrupt,
        2 => PollMode::Poll,
        _ => PollMode::Adaptive,
    }
}

fn mode_as_u8(mode: PollMode) -> u8 {
    match mode {
        PollMode::Interrupt => 0,
        PollMode::Adaptive => 1,
        PollMode::Poll => 2,
    }
}

/// The poll mode and budget every worker reads once per loop, and whether
/// it moves tap frames through its io_uring (when it has one); the control
/// thread may change them while the switch runs (`ctl poll-mode`,
/// `ctl io-backend`), which is also how `podswitch bench` compares them in
/// one run.
#[derive(Debug)]
pub struct PollControl {
    mode: AtomicU8,
    budget_ns: AtomicU64,
    batched_io: AtomicBool,
    tunnel_gso: AtomicBool,
}

impl PollControl {
    /// `budget_us` must have passed [`check_budget_us`].
    pub fn new(mode: PollMode, budget_us: u64) -> Self {
        PollControl {
            mode: AtomicU8::new(mode_as_u8(mode)),
            budget_ns: AtomicU64::new(budget_us.saturating_mul(1000)),
            batched_io: AtomicBool::new(true),
            tunnel_gso: AtomicBool::new(true),
        }
    }

    /// Whether workers with an io_uring use it (else read/write).
    #[inline]
    pub fn batched_io(&self) -> bool {
        self.batched_io.load(Ordering::Relaxed)
    }

    /// Switches workers between their io_uring and read/write.
    pub fn set_batched_io(&self, on: bool) {
        self.batched_io.store(on, Ordering::Relaxed);
    }

    /// Whether workers hand TCP superframes to the node's kernel whole
    /// (where they have a tunnel port) or segment them in software.
    pub fn tunnel_gso(&self) -> bool {
        self.tunnel_gso.load(Ordering::Relaxed)
    }

    /// Switches workers between UDP-tunnel GSO and software segmentation.
    pub fn set_tunnel_gso(&self, on: bool) {
        self.tunnel_gso.store(on, Ordering::Relaxed);
    }

    /// The mode and adaptive budget in force.
    #[inline]
    pub fn get(&self) -> (PollMode, Duration) {
        (
            mode_from_u8(self.mode.load(Ordering::Relaxed)),
            Duration::from_nanos(self.budget_ns.load(Ordering::Relaxed)),
        )
    }

    /// Changes the mode and budget; workers pick them up on their next
    /// loop (a parked worker when its waker fires or its park times out).
    pub fn set(&self, mode: PollMode, budget_us: u64) {
        self.budget_ns
            .store(budget_us.saturating_mul(1000), Ordering::Relaxed);
        self.mode.store(mode_as_u8(mode), Ordering::Relaxed);
    }
}

impl Default for PollControl {
    fn default() -> Self {
        PollControl::new(PollMode::default(), DEFAULT_ADAPTIVE_BUDGET_US)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_polls_within_the_budget_then_parks() {
        let budget = Duration::from_micros(100);
        let m = PollMode::Adaptive;
        assert_eq!(
            idle_timeout(m, budget, Duration::ZERO, false),
            Duration::ZERO
        );
        assert_eq!(
            idle_timeout(m, budget, Duration::from_micros(99), false),
            Duration::ZERO
        );
        assert_eq!(
            idle_timeout(m, budget, Duration::from_micros(100), false),
            PARK_TIMEOUT
        );
        // Another thread needed the core: park at once.
        assert_eq!(idle_timeout(m, budget, Duration::ZERO, true), PARK_TIMEOUT);
        assert_eq!(
            idle_timeout(PollMode::Interrupt, budget, Duration::ZERO, false),
            PARK_TIMEOUT
        );
        // `poll` never parks, contended or not.
        assert_eq!(
            idle_timeout(PollMode::Poll, budget, Duration::from_secs(3600), true),
            Duration::ZERO
        );
    }

    #[test]
    fn names_parse_back_and_bad_ones_are_refused() {
        for m in PollMode::ALL {
            assert_eq!(m.name().parse::<PollMode>(), Ok(m));
            assert_eq!(mode_from_u8(mode_as_u8(m)), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.name()));
        }
        let e = "busy".parse::<PollMode>().unwrap_err();
        assert!(e.to_string().contains("interrupt, adaptive, poll"), "{e}");
        assert_eq!(PollMode::default(), PollMode::Adaptive);
    }

    #[test]
    fn budget_bounds_and_control_round_trip() {
        assert!(check_budget_us(0).is_err());
        assert!(check_budget_us(MAX_ADAPTIVE_BUDGET_US + 1).is_err());
        assert_eq!(check_budget_us(50), Ok(50));
        let c = PollControl::default();
        assert_eq!(
            c.get(),
            (
                PollMode::Adaptive,
                Duration::from_micros(DEFAULT_ADAPTIVE_BUDGET_US)
            )
        );
        c.set(PollMode::Poll, 7);
        assert_eq!(c.get(), (PollMode::Poll, Duration::from_micros(7)));
        assert!(c.batched_io());
        c.set_batched_io(false);
        assert!(!c.batched_io());
    }
}
