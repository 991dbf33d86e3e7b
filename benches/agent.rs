//! The agent's translation and encoding at scale (issue #5: 10k Services
//! with 50k endpoints translated and pushed within 1 s; one endpoint
//! change within 10 ms). In memory: the switch's side is measured by
//! `tests/lab_agent.rs` against a real switch.
//!
//! `cargo bench --bench agent` (`-- --quick` for a short run).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use podswitch_agent::translate::{
    diff, synthetic, translate, Changes, ClusterObjects, TranslateConfig, Translator,
};
use podswitch_switch::control::api::{encode_request, ServiceSettings};

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 5;

fn config() -> TranslateConfig {
    TranslateConfig {
        node_name: "node-1".into(),
        settings: ServiceSettings::default(),
    }
}

/// `objects` with `svc-<i>`'s slice at generation `g`, and what changed.
fn bump(objects: &mut ClusterObjects, i: usize, g: u64) -> Changes {
    let key = format!("bench/svc-{i}-abcde");
    objects
        .endpoint_slices
        .insert(key.clone(), synthetic::slice(i, ENDPOINTS, "node-1", g));
    Changes {
        endpoint_slices: [key].into(),
        ..Changes::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("agent_10k_services_50k_endpoints");
    g.sample_size(10);
    let objects = synthetic::cluster(SERVICES, ENDPOINTS, "node-1");

    g.bench_function("translate_all", |b| {
        b.iter(|| {
            let mut t = Translator::new(config());
            black_box(t.update(&objects, &Changes::everything()));
        })
    });

    let mut t = Translator::new(config());
    t.update(&objects, &Changes::everything());
    let sync = t.topology().full_sync();
    g.bench_function("encode_full_sync", |b| {
        b.iter(|| {
            for r in sync.requests() {
                black_box(encode_request(&r));
            }
        })
    });

    // One endpoint change: incremental, and as before (translate all,
    // then diff).
    let mut objects_inc = objects.clone();
    let mut gen = 0;
    g.bench_function("one_endpoint_change_incremental", |b| {
        b.iter(|| {
            gen += 1;
            let changes = bump(&mut objects_inc, 4242, gen);
            let patch = t.update(&objects_inc, &changes);
            for r in patch.requests() {
                black_box(encode_request(&r));
            }
        })
    });
    let mut objects_old = objects.clone();
    let mut before = translate(&objects_old, &config());
    g.bench_function("one_endpoint_change_translate_all_and_diff", |b| {
        b.iter(|| {
            gen += 1;
            bump(&mut objects_old, 4242, gen);
            let after = translate(&objects_old, &config());
            black_box(diff(&before, &after));
            before = after;
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
