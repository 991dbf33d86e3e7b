//! Instructions per packet of the datapath's key cases, for callgrind
//! (issue 28): `instructions BENCH/CASE` runs case `CASE` of the root
//! package's `benches/BENCH.rs` in its instruction-count mode (a fixed
//! number of batches, a frozen clock; `benches/instructions/mod.rs`).
//! `benches/tools/instructions.sh` builds this and counts every guarded
//! case with it.
//!
//! The cases are the criterion benches' own code, compiled here as
//! modules: counting then builds only this crate and its dependencies.
//! Built as a bench of the root package it would also build the podswitch
//! binaries (cargo builds a package's binaries for its benches), which
//! costs minutes of release linking on a 2-core machine and counts
//! nothing. Each bench also runs the same mode itself
//! (`BENCH --instructions CASE`).
//!
//! Without a case (`cargo bench`, `cargo test --benches`) it only says so.

// The criterion half of each bench (its groups and `main`) is not used
// here. Each bench declares the mode's module (`benches/instructions/`)
// at its own crate root, so here it is loaded twice, once per bench: two
// copies of a few functions, both named `instructions::measured`.
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../../benches/pipeline.rs"]
mod pipeline;
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../../benches/services.rs"]
mod services;

fn main() {
    let Some(case) = std::env::args().skip(1).find(|a| !a.starts_with('-')) else {
        println!(
            "instructions: no case (BENCH/CASE) given; benches/tools/instructions.sh runs them"
        );
        return;
    };
    match case.split_once('/') {
        Some(("pipeline", name)) => pipeline::count_instructions(name),
        Some(("services", name)) => services::count_instructions(name),
        _ => {
            eprintln!("instructions: {case:?} is not pipeline/CASE or services/CASE");
            std::process::exit(2)
        }
    }
}
