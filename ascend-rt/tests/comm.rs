//! The safe Communicator on the simulator: typed collectives, ordering with other stream work,
//! argument checks.

use ascend_rt::{bf16, Communicator, Context, Error, ReduceOp, RootInfo, Stream};
use std::sync::Arc;

fn contexts(n: usize) -> Vec<Arc<Context>> {
    (0..n).map(|d| Context::new(d).unwrap()).collect()
}

#[test]
fn init_all_collectives_are_correct_and_ordered() {
    let ctxs = contexts(4);
    let comms = Communicator::init_all(&ctxs).unwrap();
    assert_eq!((comms[2].rank(), comms[2].size()), (2, 4));
    std::thread::scope(|s| {
        for (r, comm) in comms.iter().enumerate() {
            let ctx = &ctxs[r];
            s.spawn(move || {
                let st = Stream::new(ctx).unwrap();
                let n = 1001;
                // all_reduce (f32, out of place) straight after a host-to-device copy on the same stream
                let x = st.clone_htod(&vec![(r + 1) as f32; n]).unwrap();
                let mut y = st.alloc::<f32>(n).unwrap();
                comm.all_reduce(&x, &mut y, ReduceOp::Sum, &st).unwrap();
                assert_eq!(st.clone_dtoh(&y).unwrap(), vec![10.0; n]);
                // bf16 in place, max
                let mut b = st.clone_htod(&vec![bf16::from_f32(r as f32); n]).unwrap();
                comm.all_reduce_in_place(&mut b, ReduceOp::Max, &st).unwrap();
                assert!(st.clone_dtoh(&b).unwrap().iter().all(|v| v.to_f32() == 3.0));
                // all_gather / reduce_scatter / broadcast / all_to_all / scatter / reduce
                let mut g = st.alloc::<i32>(4 * 3).unwrap();
                comm.all_gather(&st.clone_htod(&[r as i32; 3]).unwrap(), &mut g, &st).unwrap();
                assert_eq!(st.clone_dtoh(&g).unwrap(), vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
                let mut rs = st.alloc::<i64>(2).unwrap();
                comm.reduce_scatter(&st.clone_htod(&[1i64, 2, 3, 4, 5, 6, 7, 8]).unwrap(), &mut rs, ReduceOp::Sum, &st)
                    .unwrap();
                assert_eq!(st.clone_dtoh(&rs).unwrap(), vec![4 * (2 * r as i64 + 1), 4 * (2 * r as i64 + 2)]);
                let mut bc = st.clone_htod(&[r as u8; 5]).unwrap();
                comm.broadcast(&mut bc, 3, &st).unwrap();
                assert_eq!(st.clone_dtoh(&bc).unwrap(), vec![3; 5]);
                let mut a2a = st.alloc::<u16>(4).unwrap();
                let mine: Vec<u16> = (0..4).map(|d| (r * 10 + d) as u16).collect();
                comm.all_to_all(&st.clone_htod(&mine).unwrap(), &mut a2a, &st).unwrap();
                assert_eq!(st.clone_dtoh(&a2a).unwrap(), (0..4).map(|src| (src * 10 + r) as u16).collect::<Vec<_>>());
                let mut red = st.alloc_zeros::<f32>(2).unwrap();
                comm.reduce(&st.clone_htod(&[r as f32, 1.0]).unwrap(), &mut red, ReduceOp::Sum, 0, &st).unwrap();
                let got = st.clone_dtoh(&red).unwrap();
                assert_eq!(got, if r == 0 { vec![6.0, 4.0] } else { vec![0.0, 0.0] });
                // point to point: a ring
                let mut from_prev = st.alloc::<u32>(7).unwrap();
                let mine = st.clone_htod(&[r as u32; 7]).unwrap();
                if r % 2 == 0 {
                    comm.send(&mine, (r + 1) % 4, &st).unwrap();
                    comm.recv(&mut from_prev, (r + 3) % 4, &st).unwrap();
                } else {
                    comm.recv(&mut from_prev, (r + 3) % 4, &st).unwrap();
                    comm.send(&mine, (r + 1) % 4, &st).unwrap();
                }
                assert_eq!(st.clone_dtoh(&from_prev).unwrap(), vec![((r + 3) % 4) as u32; 7]);
                comm.barrier(&st).unwrap();
                st.synchronize().unwrap();
                assert!(comm.async_error().unwrap().is_none());
            });
        }
    });
}

#[test]
fn root_info_round_trips_through_bytes_across_threads() {
    let root = RootInfo::new().unwrap();
    let bytes = root.to_bytes();
    assert_eq!(bytes.len(), 4108);
    assert!(matches!(RootInfo::from_bytes(&bytes[..100]), Err(Error::InvalidArgument(_))));
    let sums: Vec<f32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|r| {
                let bytes = bytes.clone();
                s.spawn(move || {
                    let ctx = Context::new(r + 4).unwrap();
                    let root = RootInfo::from_bytes(&bytes).unwrap();
                    let comm = Communicator::from_root_info(&ctx, &root, 3, r).unwrap();
                    let st = Stream::new(&ctx).unwrap();
                    let mut x = st.clone_htod(&[r as f32 + 0.5]).unwrap();
                    comm.all_reduce_in_place(&mut x, ReduceOp::Sum, &st).unwrap();
                    // wrong lengths and devices are rejected before anything is enqueued
                    let mut two = st.alloc::<f32>(2).unwrap();
                    assert!(matches!(
                        comm.all_reduce(&x, &mut two, ReduceOp::Sum, &st),
                        Err(Error::InvalidArgument(_))
                    ));
                    let other = Stream::new(&Context::new(0).unwrap()).unwrap();
                    assert!(matches!(comm.barrier(&other), Err(Error::InvalidArgument(_))));
                    st.clone_dtoh(&x).unwrap()[0]
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(sums, vec![4.5; 3]);
    let ctx = Context::new(0).unwrap();
    let bad = RootInfo::from_bytes(&[7u8; 4108]).unwrap();
    let e = Communicator::from_root_info(&ctx, &bad, 2, 0).unwrap_err();
    assert_eq!(e.name(), Some("HCCL_E_PARA"), "{e}");
    assert!(e.to_string().contains("HcclCommInitRootInfo"), "{e}");
}

#[test]
fn roots_and_peers_outside_the_communicator_are_refused() {
    let ctx = Context::new(5).unwrap();
    let comm = Communicator::init_all(std::slice::from_ref(&ctx)).unwrap();
    let comm = &comm[0];
    let st = Stream::new(&ctx).unwrap();
    let mut buf = st.clone_htod(&[1u32, 2, 3]).unwrap();
    let invalid =
        |r: ascend_rt::Result<()>| matches!(r, Err(Error::InvalidArgument(ref m)) if m.contains("not a rank"));
    // 2^32 would truncate to rank 0, this communicator's only rank.
    assert!(invalid(comm.broadcast(&mut buf, 1 << 32, &st)));
    let send = st.clone_htod(&[1u32, 2, 3]).unwrap();
    assert!(invalid(comm.reduce(&send, &mut buf, ReduceOp::Sum, 1 << 32, &st)));
    assert!(invalid(comm.scatter(&send, &mut buf, 1, &st)));
    assert!(invalid(comm.send(&send, 1, &st)));
    assert!(invalid(comm.recv(&mut buf, 1 << 32, &st)));
    st.synchronize().unwrap();
    assert_eq!(st.clone_dtoh(&buf).unwrap(), vec![1, 2, 3]);
}

#[test]
fn a_barrier_inside_a_host_task_is_refused() {
    let ctx = Context::new(5).unwrap();
    let comm = Arc::new(Communicator::init_all(std::slice::from_ref(&ctx)).unwrap().remove(0));
    let st = Stream::new(&ctx).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (c, s) = (comm.clone(), st.clone());
    st.launch_host(move || tx.send(c.barrier(&s)).unwrap()).unwrap();
    st.synchronize().unwrap();
    let r = rx.recv().unwrap();
    assert!(matches!(r, Err(Error::Unsupported(ref m)) if m.contains("host task")), "{r:?}");
}

/// Two devices' communicators and a stream `st` on the first. `arm` queues on `st` an all_reduce
/// into `y` (first device) that runs, and fails, only once the returned closure has made the peer leave.
struct Collective {
    ctxs: Vec<Arc<Context>>,
    st: Arc<Stream>,
    y: ascend_rt::DeviceBuffer<f32>,
    comms: Vec<Communicator>,
}

fn collective() -> Collective {
    collective_on([0, 1])
}

fn collective_on(devices: [usize; 2]) -> Collective {
    let ctxs: Vec<_> = devices.iter().map(|&d| Context::new(d).unwrap()).collect();
    let comms = Communicator::init_all(&ctxs).unwrap();
    let st = Stream::new(&ctxs[0]).unwrap();
    let y = st.clone_htod(&[5f32; 4]).unwrap();
    Collective { ctxs, st, y, comms }
}

impl Collective {
    fn arm(&mut self) -> impl FnOnce() {
        let x = self.st.clone_htod(&[1f32; 4]).unwrap();
        let (go, gate) = std::sync::mpsc::channel::<()>();
        self.st
            .launch_host(move || {
                let _ = gate.recv();
            })
            .unwrap();
        self.comms[0].all_reduce(&x, &mut self.y, ReduceOp::Sum, &self.st).unwrap();
        let peer = self.comms.pop().unwrap();
        move || {
            drop(peer);
            go.send(()).unwrap();
        }
    }
}

#[test]
fn pinned_memory_behind_a_failed_collective_reports_the_failure() {
    let mut c = collective();
    let release = c.arm();
    let mut host = ascend_rt::PinnedHostBuffer::<f32>::from_slice(&c.ctxs[0], &[7.0; 4]).unwrap();
    c.st.memcpy_dtoh_async(&c.y, &mut host).unwrap();
    release();
    // The copy into `host` was skipped: its old contents must not read as the result.
    let e = host.as_slice().unwrap_err();
    assert!(e.code().is_some(), "{e}");
    assert!(host.as_slice().is_err(), "the failure is reported again");
    assert_eq!(c.st.synchronize().unwrap_err().code(), e.code());
}

#[test]
fn a_failure_reaches_other_streams_that_read_what_it_did_not_write() {
    let mut c = collective();
    let release = c.arm();
    let other = Stream::new(&c.ctxs[0]).unwrap();
    let mut host = ascend_rt::PinnedHostBuffer::<f32>::from_slice(&c.ctxs[0], &[7.0; 4]).unwrap();
    other.memcpy_dtoh_async(&c.y, &mut host).unwrap();
    release();
    assert!(host.as_slice().is_err(), "a copy of y on another stream read as data");
    assert!(other.clone_dtoh(&c.y).is_err(), "a blocking copy of y on another stream read as data");
}

#[test]
fn only_writes_that_failed_fail_host_access() {
    let mut c = collective();
    let ctx = c.ctxs[0].clone();
    // Written on st before the failure, read there after it: the memory holds what was written.
    let mut good = ascend_rt::PinnedHostBuffer::<f32>::new(&ctx, 4).unwrap();
    let three = c.st.clone_htod(&[3f32; 4]).unwrap();
    c.st.memcpy_dtoh_async(&three, &mut good).unwrap();
    let release = c.arm();
    let mut sink = c.st.alloc::<f32>(4).unwrap();
    c.st.memcpy_htod_async(&good, &mut sink).unwrap();
    // Only read by a copy behind the failure: the copy did not run, the memory is intact.
    let mut source = ascend_rt::PinnedHostBuffer::from_slice(&ctx, &[9f32; 4]).unwrap();
    c.st.memcpy_htod_async(&source, &mut sink).unwrap();
    release();
    assert!(c.st.synchronize().is_err());
    assert_eq!(good.as_slice().unwrap(), &[3.0; 4], "what was written before the failure");
    source.as_mut_slice().unwrap().fill(1.0);
}

#[test]
fn a_failed_stream_still_releases_the_memory_of_finished_work() {
    // Device 7 is this test's alone: the other tests of this process allocate on theirs meanwhile.
    let mut c = collective_on([7, 6]);
    let release = c.arm();
    release();
    assert!(c.st.synchronize().is_err());
    let (free, _) = c.ctxs[0].memory_info().unwrap();
    drop(c.st.alloc::<u8>(free / 2).unwrap());
    assert!(c.st.synchronize().is_err());
    assert_eq!(c.ctxs[0].memory_info().unwrap().0, free, "the dropped buffer's memory came back");
}
