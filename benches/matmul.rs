//! Criterion benches of matmul; the measured code is `ascend::bench::matmul`, the same that
//! `ascend bench matmul` runs. Square 512..4096 and decode shapes (m = 1, 16; n = k = 4096), each dtype;
//! throughput in FLOPs.

use ascend::bench::matmul::{default_shapes, Case};
use ascend::bench::DTYPES;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    for shape in default_shapes() {
        for dtype in DTYPES {
            let mut case = Case::new(shape, dtype, None).expect("allocate matmul inputs");
            g.throughput(Throughput::Elements(case.flops() as u64));
            g.bench_function(format!("{dtype}/{}x{}x{}", shape.m, shape.n, shape.k), |b| {
                b.iter_custom(|n| case.time(n).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
