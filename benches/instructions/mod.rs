//! The instruction-count mode of the packet benches (issue 28): one case
//! run for a fixed number of batches, so that callgrind counts the same
//! instructions on every run of the same binary, whatever the machine is
//! doing at the time. `benches/tools/instructions.sh` runs it for every
//! case in `benches/instructions/baseline.txt` and fails on growth.
//!
//! `BENCH --instructions CASE` (`CASE` as criterion names it, without the
//! group: `route_udp64`, `established_cached_4k`, ...), or the switch
//! crate's `instructions BENCH/CASE` (`switch/benches/instructions.rs`,
//! what the guard runs: the same code, built without the podswitch
//! binaries), sets the case up,
//! runs [`WARM_UP_BATCHES`] batches, then [`MEASURED_BATCHES`] batches
//! each through [`measured`], and prints `instructions: CASE packets N`.
//! Callgrind collects inside [`measured`] only
//! (`--toggle-collect='*instructions::measured*'`): the untimed part of a
//! criterion iteration (writing or restoring the frames) and the set-up
//! stay out, exactly what the criterion case leaves out of its clock.
//! The instructions collected over the packets measured are the figure.
//!
//! The case's clock is frozen: one `Instant` read before the warm-up is
//! every batch's `now`, so nothing depends on when a batch runs; flow
//! tables use a fixed hash seed (`ConnTrack::with_seed`), and flows are
//! picked by a fixed pseudo-random sequence.

use std::hint::black_box;

/// The argument that selects this mode.
const FLAG: &str = "--instructions";
/// Batches run before counting: the first batches of a case may differ
/// (caches of the pipeline's own, a flow table's first inserts).
pub const WARM_UP_BATCHES: usize = 4;
/// Batches counted. With 64 packets each, 4096 packets: the per-packet
/// figure of the random-flow cases is settled to well under 1 % (their
/// packets differ only in which chain of the flow table they hit), and a
/// case takes seconds under callgrind.
pub const MEASURED_BATCHES: usize = 64;

/// The case `--instructions CASE` asks for, if the bench was started in
/// this mode.
pub fn requested() -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != FLAG);
    args.next()?;
    Some(args.next().unwrap_or_else(|| {
        eprintln!("usage: BENCH {FLAG} CASE");
        std::process::exit(2)
    }))
}

/// A case as this mode runs it.
pub trait Counted {
    /// Untimed: fills the batch for the next run (writes or restores
    /// frames); returns how many packets the run will take in.
    fn next_batch(&mut self) -> usize;
    /// The timed part of a criterion iteration: what is counted.
    fn run(&mut self);
    /// Checks the last run's verdicts (panics if the case did not do what
    /// it is about); untimed.
    fn check(&self);
}

/// Runs `case` (named `name`) the fixed number of batches and reports the
/// packets measured.
pub fn count(name: &str, case: &mut dyn Counted) {
    for _ in 0..WARM_UP_BATCHES {
        case.next_batch();
        case.run();
    }
    case.check();
    let mut packets = 0;
    for _ in 0..MEASURED_BATCHES {
        packets += case.next_batch();
        measured(black_box(&mut *case));
    }
    case.check();
    println!("instructions: {name} packets {packets}");
}

/// The one function callgrind collects in; never inlined, so its symbol
/// exists for `--toggle-collect`.
#[inline(never)]
pub fn measured(case: &mut dyn Counted) {
    case.run();
}

/// Exits with a message for a case this bench does not have.
pub fn unknown(name: &str, known: &[&str]) -> ! {
    eprintln!("no case {name:?} here; cases: {}", known.join(", "));
    std::process::exit(2)
}
