//! Cost of Maglev consistent hashing (`podswitch_switch::tables::maglev`),
//! the table the load-balancing stage picks a service backend from.
//!
//! | group           | case             | what is timed                                  |
//! | --------------- | ---------------- | ---------------------------------------------- |
//! | `maglev/build`  | `m65537_n10`     | `Maglev::build`, M = 65537, 10 backends        |
//! |                 | `m65537_n100`    | same, 100 backends                             |
//! |                 | `m65537_n1000`   | same, 1000 backends (target: at most 2 ms)     |
//! |                 | `m16381_n1000`   | default table size, 1000 backends              |
//! | `maglev/lookup` | `m65537_n100`    | [`LOOKUPS`] lookups of precomputed flow hashes |
//!
//! Build runs on the control thread whenever a service's endpoints change,
//! so it bounds how fast endpoint churn can be absorbed; lookup is on the
//! packet path, once per new flow, and is reported as lookups per second
//! through `Throughput::Elements`.
//!
//! Backend keys are formed the way a caller might, `ip << 16 | port` for
//! `10.0.x.y:8080`; flow hashes are splitmix64 outputs, so lookups touch the
//! 128 KiB table at random as real flows would.
//!
//! Run: `cargo bench --bench maglev` or
//! `cargo bench --bench maglev -- --quick`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use podswitch_switch::tables::maglev::{Maglev, DEFAULT_TABLE_SIZE};

/// Lookups per iteration of `maglev/lookup`.
const LOOKUPS: usize = 1024;
/// The table size the build target is stated for.
const M_LARGE: usize = 65537;

/// `n` backend keys: `10.0.x.y:8080` packed as `ip << 16 | port`.
fn backend_keys(n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| ((0x0a00_0000 + i) << 16) | 8080)
        .collect()
}

/// `n` flow hashes spread over the whole `u64` range (splitmix64).
fn flow_hashes(n: usize) -> Vec<u64> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev/build");
    for (size, n) in [
        (M_LARGE, 10),
        (M_LARGE, 100),
        (M_LARGE, 1000),
        (DEFAULT_TABLE_SIZE, 1000),
    ] {
        let keys = backend_keys(n);
        // Check once that the case builds what it claims to.
        let t = Maglev::build(&keys, size).expect("bench case builds");
        assert_eq!((t.size(), t.backends()), (size, n));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("m{size}_n{n}")),
            &keys,
            |b, keys| b.iter(|| Maglev::build(black_box(keys), black_box(size))),
        );
    }
    group.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let table = Maglev::build(&backend_keys(100), M_LARGE).expect("bench case builds");
    let hashes = flow_hashes(LOOKUPS);
    assert!(hashes.iter().all(|&h| table.lookup(h).is_some()));
    let mut group = c.benchmark_group("maglev/lookup");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    group.bench_function("m65537_n100", |b| {
        b.iter(|| {
            for &h in black_box(&hashes) {
                black_box(table.lookup(h));
            }
        });
    });
    group.finish();
}

fn config() -> Criterion {
    // TESTBED.md: a few seconds per case; `--quick` stops earlier still.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_build, bench_lookup
}
criterion_main!(benches);
