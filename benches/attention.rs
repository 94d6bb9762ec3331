//! Criterion benches of attention; the measured code is `ascend::bench::attention`, the same that
//! `ascend bench attention` runs: causal prefill (32 query heads, 8 KV heads, head dim 128, 512..4096
//! tokens; throughput in FLOPs) and paged decode (batch 1..64, context 128..8192, blocks of 16 and
//! 128; throughput in K/V bytes read), f32 and bf16.

use ascend::bench::attention::{default_workloads, Case, Workload, DEFAULT_HEADS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    for work in default_workloads() {
        for dtype in ["f32", "bf16"] {
            let mut case = Case::new(work, DEFAULT_HEADS, dtype).expect("allocate attention inputs");
            let name = match work {
                Workload::Prefill { seq } => {
                    g.throughput(Throughput::Elements(case.flops() as u64));
                    format!("prefill/{dtype}/seq{seq}")
                }
                Workload::Decode { batch, context, block_size } => {
                    g.throughput(Throughput::Bytes(case.kv_bytes() as u64));
                    format!("decode/{dtype}/b{batch}/ctx{context}/bs{block_size}")
                }
            };
            g.bench_function(name, |b| b.iter_custom(|n| case.time(n).unwrap()));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
