//! Criterion benches of the runtime layer; the measured code is `ascend::bench::runtime`, the same
//! that `ascend bench runtime` runs. Copy throughput is in bytes copied per second.

use ascend::bench::runtime::{self, CopyBuffers, Direction, COPY_SIZES};
use ascend::rt::{Context, Event, Stream};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let ctx = Context::new(0).expect("open device 0");
    let stream = Stream::new(&ctx).expect("create a stream");
    let event = Event::new(&ctx).expect("create an event");

    let mut g = c.benchmark_group("runtime");
    g.bench_function("enqueue_empty_host_task", |b| b.iter_custom(|n| runtime::enqueue(&stream, n).unwrap()));
    g.bench_function("launch_synchronize_round_trip", |b| b.iter_custom(|n| runtime::round_trip(&stream, n).unwrap()));
    g.bench_function("event_record_query", |b| {
        b.iter_custom(|n| runtime::event_record_query(&stream, &event, n).unwrap())
    });
    g.bench_function("drop_queued", |b| b.iter_custom(|n| runtime::drop_queued(&stream, n).unwrap()));
    g.finish();

    let mut g = c.benchmark_group("copy");
    g.sample_size(10);
    for bytes in COPY_SIZES {
        let mut bufs = CopyBuffers::new(&stream, bytes).expect("allocate copy buffers");
        g.throughput(Throughput::Bytes(bytes as u64));
        for dir in Direction::ALL {
            let id = format!("{}/{}", dir.name(), runtime::human_bytes(bytes).replace(' ', ""));
            g.bench_function(id, |b| b.iter_custom(|n| bufs.copy(dir, n).unwrap()));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
