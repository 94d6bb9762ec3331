//! Criterion benches of all-reduce; the measured code is `ascend::bench::collectives`, the same that
//! `ascend bench collectives` runs. Latency at 4 KiB with 2 ranks; bus bandwidth from 1 MiB to
//! 256 MiB with 2, 4 and 8 ranks; ranks in threads and in processes; f32 and bf16. Throughput is
//! reported as algorithm bandwidth (bytes per second); busbw = algbw · 2(n−1)/n.

use ascend::bench::collectives::{ensure_fits, World};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::Path;
use std::time::Duration;

fn world(ranks: usize, processes: bool) -> World {
    // As the CLI does: a rank that cannot allocate would leave the others waiting for it.
    ensure_fits(ranks, &[256 << 20]).expect("the largest message fits on every rank");
    if processes {
        World::processes(ranks, Path::new(env!("CARGO_BIN_EXE_ascend"))).expect("start rank processes")
    } else {
        World::threads(ranks).expect("start rank threads")
    }
}

fn bench(c: &mut Criterion) {
    for processes in [false, true] {
        let mode = if processes { "processes" } else { "threads" };
        let mut g = c.benchmark_group(format!("all_reduce_latency/{mode}"));
        let mut w = world(2, processes);
        for dtype in ["f32", "bf16"] {
            g.bench_function(format!("2ranks/{dtype}/4KiB"), |b| {
                b.iter_custom(|n| w.all_reduce(4 << 10, dtype, n).unwrap())
            });
        }
        g.finish();
        drop(w);

        let mut g = c.benchmark_group(format!("all_reduce_bandwidth/{mode}"));
        g.sample_size(10).measurement_time(Duration::from_secs(2));
        for ranks in [2, 4, 8] {
            let mut w = world(ranks, processes);
            for dtype in ["f32", "bf16"] {
                for mib in [1usize, 16, 64, 256] {
                    g.throughput(Throughput::Bytes((mib << 20) as u64));
                    g.bench_function(format!("{ranks}ranks/{dtype}/{mib}MiB"), |b| {
                        b.iter_custom(|n| w.all_reduce(mib << 20, dtype, n).unwrap())
                    });
                }
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
