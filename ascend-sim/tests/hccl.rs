//! HCCL collectives of the simulator, through the C ABI: every op × dtype × reduce op against a host
//! reference, for 1, 2, 3, 4 and 8 ranks, in threads and in processes; faults bounded in time.
//!
//! Inputs are small integers, so every result is exact in every dtype (sums stay within ±16 and
//! products within 2^8, both exactly representable even in bf16; integer types wrap as C does), and
//! results are compared bit for bit.

#![allow(clippy::macro_metavars_in_unsafe)]

mod common;

use ascend_sim::capi::{acl::*, hccl::*};
use ascend_sys::*;
use common::*;
use std::ffi::c_void;
use std::process::Command;
use std::ptr::null_mut;
use std::time::{Duration, Instant};

const TYPES: [HcclDataType; 12] = [
    HCCL_DATA_TYPE_INT8,
    HCCL_DATA_TYPE_INT16,
    HCCL_DATA_TYPE_INT32,
    HCCL_DATA_TYPE_INT64,
    HCCL_DATA_TYPE_UINT8,
    HCCL_DATA_TYPE_UINT16,
    HCCL_DATA_TYPE_UINT32,
    HCCL_DATA_TYPE_UINT64,
    HCCL_DATA_TYPE_FP16,
    HCCL_DATA_TYPE_BFP16,
    HCCL_DATA_TYPE_FP32,
    HCCL_DATA_TYPE_FP64,
];
const OPS: [HcclReduceOp; 4] = [HCCL_REDUCE_SUM, HCCL_REDUCE_PROD, HCCL_REDUCE_MAX, HCCL_REDUCE_MIN];

fn size_of(t: HcclDataType) -> usize {
    match t {
        HCCL_DATA_TYPE_INT8 | HCCL_DATA_TYPE_UINT8 => 1,
        HCCL_DATA_TYPE_INT16 | HCCL_DATA_TYPE_UINT16 | HCCL_DATA_TYPE_FP16 | HCCL_DATA_TYPE_BFP16 => 2,
        HCCL_DATA_TYPE_INT32 | HCCL_DATA_TYPE_UINT32 | HCCL_DATA_TYPE_FP32 => 4,
        _ => 8,
    }
}

fn unsigned(t: HcclDataType) -> bool {
    matches!(t, HCCL_DATA_TYPE_UINT8 | HCCL_DATA_TYPE_UINT16 | HCCL_DATA_TYPE_UINT32 | HCCL_DATA_TYPE_UINT64)
}

/// Encodes an exact small integer as one element of `t` (integers wrap).
fn encode(t: HcclDataType, v: i64, out: &mut Vec<u8>) {
    match t {
        HCCL_DATA_TYPE_INT8 | HCCL_DATA_TYPE_UINT8 => out.push(v as u8),
        HCCL_DATA_TYPE_INT16 | HCCL_DATA_TYPE_UINT16 => out.extend((v as u16).to_le_bytes()),
        HCCL_DATA_TYPE_INT32 | HCCL_DATA_TYPE_UINT32 => out.extend((v as u32).to_le_bytes()),
        HCCL_DATA_TYPE_INT64 | HCCL_DATA_TYPE_UINT64 => out.extend((v as u64).to_le_bytes()),
        _ => encode_f(t, v as f64, out),
    }
}

fn encode_f(t: HcclDataType, v: f64, out: &mut Vec<u8>) {
    match t {
        HCCL_DATA_TYPE_FP16 => out.extend(half::f16::from_f64(v).to_bits().to_le_bytes()),
        HCCL_DATA_TYPE_BFP16 => out.extend(half::bf16::from_f64(v).to_bits().to_le_bytes()),
        HCCL_DATA_TYPE_FP32 => out.extend((v as f32).to_le_bytes()),
        _ => out.extend(v.to_le_bytes()),
    }
}

/// The types CANN reduces (cann-api.md: int8/16/32/64, fp16, fp32, bf16).
fn reducible(t: HcclDataType) -> bool {
    !unsigned(t) && t != HCCL_DATA_TYPE_FP64
}

fn float(t: HcclDataType) -> bool {
    matches!(t, HCCL_DATA_TYPE_FP16 | HCCL_DATA_TYPE_BFP16 | HCCL_DATA_TYPE_FP32 | HCCL_DATA_TYPE_FP64)
}

/// Asserts equal bytes, naming the first differing element.
#[track_caller]
fn same(got: &[u8], want: &[u8], es: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let e = i / es;
        panic!("{what}: element {e} is {:?}, expected {:?}", &got[e * es..(e + 1) * es], &want[e * es..(e + 1) * es]);
    }
}

fn value(t: HcclDataType, rank: usize, i: usize) -> i64 {
    let v = ((rank * 7 + i * 3 + 1) % 5) as i64;
    if unsigned(t) {
        v
    } else {
        v - 2
    }
}

fn data(t: HcclDataType, rank: usize, count: usize, salt: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * size_of(t));
    (0..count).for_each(|i| encode(t, value(t, rank + salt, i), &mut out));
    out
}

fn reduced(t: HcclDataType, op: HcclReduceOp, ranks: usize, count: usize, salt: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * size_of(t));
    for i in 0..count {
        if float(t) {
            // In floating point, as the reduction does (so -1 · 0 is -0).
            let vals = (0..ranks).map(|r| value(t, r + salt, i) as f64);
            let v = match op {
                HCCL_REDUCE_SUM => vals.sum(),
                HCCL_REDUCE_PROD => vals.product(),
                HCCL_REDUCE_MAX => vals.fold(f64::MIN, f64::max),
                _ => vals.fold(f64::MAX, f64::min),
            };
            encode_f(t, v, &mut out);
            continue;
        }
        let vals = (0..ranks).map(|r| value(t, r + salt, i));
        let v = match op {
            HCCL_REDUCE_SUM => vals.sum(),
            HCCL_REDUCE_PROD => vals.product(),
            HCCL_REDUCE_MAX => vals.max().unwrap(),
            _ => vals.min().unwrap(),
        };
        encode(t, v, &mut out);
    }
    out
}

/// One rank's device buffers and stream.
struct Rank {
    rank: usize,
    n: usize,
    comm: HcclComm,
    stream: aclrtStream,
}

impl Rank {
    fn upload(&self, bytes: &[u8]) -> *mut c_void {
        let p = malloc(bytes.len().max(1));
        if !bytes.is_empty() {
            assert_code!(
                aclrtMemcpy(p, bytes.len(), bytes.as_ptr().cast(), bytes.len(), ACL_MEMCPY_HOST_TO_DEVICE),
                ACL_SUCCESS
            );
        }
        p
    }

    fn download(&self, p: *mut c_void, len: usize) -> Vec<u8> {
        assert_code!(aclrtSynchronizeStream(self.stream), ACL_SUCCESS);
        let mut out = vec![0u8; len];
        if len > 0 {
            assert_code!(aclrtMemcpy(out.as_mut_ptr().cast(), len, p, len, ACL_MEMCPY_DEVICE_TO_HOST), ACL_SUCCESS);
        }
        assert_code!(aclrtFree(p), ACL_SUCCESS);
        out
    }

    /// Every collective × dtype × op at `count` elements, checked against the reference.
    fn check_all(&self, t: HcclDataType, count: usize) {
        let (me, n, es, c, s) = (self.rank, self.n, size_of(t), self.comm, self.stream);
        let what = |op: &str| format!("{op} dtype {t} count {count} rank {me}/{n}");
        for op in OPS {
            let send = self.upload(&data(t, me, count, 0));
            let recv = self.upload(&vec![0u8; count * es]);
            let r = unsafe { HcclAllReduce(send, recv, count as u64, t, op, c, s) };
            if !reducible(t) {
                // As in CANN: no reduction of unsigned types or fp64, whatever the operation.
                assert_eq!(r, HCCL_E_NOT_SUPPORT, "{}", what("all_reduce"));
                let root = (n - 1) as u32;
                assert_eq!(unsafe { HcclReduce(send, recv, count as u64, t, op, root, c, s) }, HCCL_E_NOT_SUPPORT);
                let all = self.upload(&vec![0u8; n * count * es]);
                let rs = unsafe { HcclReduceScatter(all, recv, count as u64, t, op, c, s) };
                assert_eq!(rs, HCCL_E_NOT_SUPPORT, "{}", what("reduce_scatter"));
                self.download(all, 0);
                self.download(send, 0);
                self.download(recv, 0);
                continue;
            }
            if op == HCCL_REDUCE_PROD && matches!(t, HCCL_DATA_TYPE_INT16 | HCCL_DATA_TYPE_BFP16) {
                assert_eq!(r, HCCL_E_NOT_SUPPORT, "{}", what("prod"));
                self.download(send, 0);
                self.download(recv, 0);
                continue;
            }
            assert_eq!(r, HCCL_SUCCESS, "{}", what("all_reduce"));
            same(&self.download(recv, count * es), &reduced(t, op, n, count, 0), es, &what("all_reduce"));
            self.download(send, 0);
            // reduce to the last rank
            let send = self.upload(&data(t, me, count, 1));
            let recv = self.upload(&vec![0u8; count * es]);
            assert_eq!(unsafe { HcclReduce(send, recv, count as u64, t, op, (n - 1) as u32, c, s) }, HCCL_SUCCESS);
            let got = self.download(recv, count * es);
            if me == n - 1 {
                same(&got, &reduced(t, op, n, count, 1), es, &what("reduce"));
            } else {
                assert!(got.iter().all(|&b| b == 0), "{}: non-root recv untouched", what("reduce"));
            }
            self.download(send, 0);
            // reduce-scatter: rank r's send block b holds value(r + b, i)
            let mut all = Vec::new();
            (0..n).for_each(|b| all.extend(data(t, me + b * 11, count, 0)));
            let send = self.upload(&all);
            let recv = self.upload(&vec![0u8; count * es]);
            assert_eq!(unsafe { HcclReduceScatter(send, recv, count as u64, t, op, c, s) }, HCCL_SUCCESS);
            same(&self.download(recv, count * es), &reduced(t, op, n, count, me * 11), es, &what("reduce_scatter"));
            self.download(send, 0);
        }
        // in-place all-reduce
        if reducible(t) {
            let buf = self.upload(&data(t, me, count, 2));
            assert_eq!(unsafe { HcclAllReduce(buf, buf, count as u64, t, HCCL_REDUCE_SUM, c, s) }, HCCL_SUCCESS);
            same(
                &self.download(buf, count * es),
                &reduced(t, HCCL_REDUCE_SUM, n, count, 2),
                es,
                &what("in-place all_reduce"),
            );
        }
        // broadcast from a rank that depends on the count
        let root = count % n;
        let buf = self.upload(&data(t, me, count, 3));
        assert_eq!(unsafe { HcclBroadcast(buf, count as u64, t, root as u32, c, s) }, HCCL_SUCCESS);
        same(&self.download(buf, count * es), &data(t, root, count, 3), es, &what("broadcast"));
        // all-gather
        let send = self.upload(&data(t, me, count, 4));
        let recv = self.upload(&vec![0u8; n * count * es]);
        assert_eq!(unsafe { HcclAllGather(send, recv, count as u64, t, c, s) }, HCCL_SUCCESS);
        let want: Vec<u8> = (0..n).flat_map(|r| data(t, r, count, 4)).collect();
        same(&self.download(recv, n * count * es), &want, es, &what("all_gather"));
        self.download(send, 0);
        // scatter from rank 0: block b is data(b + 5)
        let all: Vec<u8> = (0..n).flat_map(|b| data(t, b, count, 5)).collect();
        let send = if me == 0 { self.upload(&all) } else { null_mut() };
        let recv = self.upload(&vec![0u8; count * es]);
        assert_eq!(unsafe { HcclScatter(send, recv, count as u64, t, 0, c, s) }, HCCL_SUCCESS);
        same(&self.download(recv, count * es), &data(t, me, count, 5), es, &what("scatter"));
        if me == 0 {
            self.download(send, 0);
        }
        // all-to-all: my block for rank d is data(me * 16 + d)
        let all: Vec<u8> = (0..n).flat_map(|d| data(t, me * 16 + d, count, 6)).collect();
        let send = self.upload(&all);
        let recv = self.upload(&vec![0u8; n * count * es]);
        assert_eq!(unsafe { HcclAlltoAll(send, count as u64, t, recv, count as u64, t, c, s) }, HCCL_SUCCESS);
        let want: Vec<u8> = (0..n).flat_map(|r| data(t, r * 16 + me, count, 6)).collect();
        same(&self.download(recv, n * count * es), &want, es, &what("all_to_all"));
        self.download(send, 0);
        // all-to-all-v: rank r sends (r + d) % 3 * count / 2 + d elements to rank d
        let cnt = |r: usize, d: usize| ((r + d) % 3 * count / 2 + d) as u64;
        let scounts: Vec<u64> = (0..n).map(|d| cnt(me, d)).collect();
        let sdispls: Vec<u64> = scounts
            .iter()
            .scan(0, |a, &c| {
                let d = *a;
                *a += c;
                Some(d)
            })
            .collect();
        let rcounts: Vec<u64> = (0..n).map(|r| cnt(r, me)).collect();
        let rdispls: Vec<u64> = rcounts
            .iter()
            .scan(0, |a, &c| {
                let d = *a;
                *a += c;
                Some(d)
            })
            .collect();
        let all: Vec<u8> = (0..n).flat_map(|d| data(t, me * 16 + d, cnt(me, d) as usize, 7)).collect();
        let rtotal: usize = rcounts.iter().sum::<u64>() as usize;
        let send = self.upload(&all);
        let recv = self.upload(&vec![0u8; rtotal * es]);
        let r = unsafe {
            HcclAlltoAllV(
                send,
                scounts.as_ptr().cast(),
                sdispls.as_ptr().cast(),
                t,
                recv,
                rcounts.as_ptr().cast(),
                rdispls.as_ptr().cast(),
                t,
                c,
                s,
            )
        };
        assert_eq!(r, HCCL_SUCCESS);
        let want: Vec<u8> = (0..n).flat_map(|r| data(t, r * 16 + me, cnt(r, me) as usize, 7)).collect();
        same(&self.download(recv, rtotal * es), &want, es, &what("all_to_all_v"));
        self.download(send, 0);
        if n > 1 {
            // ring send/recv, both ways at once (batch), and single send/recv pairs
            let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
            let send = self.upload(&data(t, me, count, 8));
            let recv = self.upload(&vec![0u8; count * es]);
            let mut items = [
                HcclSendRecvItem {
                    sendRecvType: HCCL_SEND,
                    buf: send,
                    count: count as u64,
                    dataType: t,
                    remoteRank: next as u32,
                },
                HcclSendRecvItem {
                    sendRecvType: HCCL_RECV,
                    buf: recv,
                    count: count as u64,
                    dataType: t,
                    remoteRank: prev as u32,
                },
            ];
            assert_eq!(unsafe { HcclBatchSendRecv(items.as_mut_ptr(), 2, c, s) }, HCCL_SUCCESS);
            same(&self.download(recv, count * es), &data(t, prev, count, 8), es, &what("batch send/recv"));
            if me < 2 && n >= 2 {
                let peer = 1 - me;
                let r = if me == 0 {
                    unsafe { HcclSend(send, count as u64, t, peer as u32, c, s) }
                } else {
                    let recv = self.upload(&vec![0u8; count * es]);
                    let r = unsafe { HcclRecv(recv, count as u64, t, peer as u32, c, s) };
                    same(&self.download(recv, count * es), &data(t, 0, count, 8), es, &what("send/recv"));
                    r
                };
                assert_eq!(r, HCCL_SUCCESS);
            }
            self.download(send, 0);
        }
        assert_eq!(unsafe { HcclBarrier(c, s) }, HCCL_SUCCESS);
        assert_code!(aclrtSynchronizeStream(s), ACL_SUCCESS);
    }

    /// The full matrix for this rank.
    fn run_matrix(&self, large: bool) {
        for t in TYPES {
            for count in [0usize, 1, 1023] {
                self.check_all(t, count);
            }
        }
        if large {
            // Several chunks and uneven parts.
            for t in [HCCL_DATA_TYPE_FP32, HCCL_DATA_TYPE_BFP16, HCCL_DATA_TYPE_INT8] {
                self.check_all(t, 300_007);
            }
        }
    }

    /// ≥ 64 MiB messages: all-reduce (f32, in place), all-gather and reduce-scatter (bf16), broadcast.
    fn run_big(&self) {
        let (n, me, c, s) = (self.n, self.rank, self.comm, self.stream);
        let count = (64 << 20) / 4 + 17;
        let buf = self.upload(&data(HCCL_DATA_TYPE_FP32, me, count, 9));
        assert_eq!(
            unsafe { HcclAllReduce(buf, buf, count as u64, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, c, s) },
            HCCL_SUCCESS
        );
        same(
            &self.download(buf, count * 4),
            &reduced(HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, n, count, 9),
            4,
            "64 MiB all_reduce",
        );
        let t = HCCL_DATA_TYPE_BFP16;
        let count = (64 << 20) / 2 + 3;
        let send = self.upload(&data(t, me, count, 10));
        let recv = self.upload(&vec![0u8; n * count * 2]);
        assert_eq!(unsafe { HcclAllGather(send, recv, count as u64, t, c, s) }, HCCL_SUCCESS);
        let want: Vec<u8> = (0..n).flat_map(|r| data(t, r, count, 10)).collect();
        same(&self.download(recv, n * count * 2), &want, 2, "64 MiB all_gather");
        self.download(send, 0);
        let all: Vec<u8> = (0..n).flat_map(|b| data(t, me + b * 11, count, 0)).collect();
        let send = self.upload(&all);
        let recv = self.upload(&vec![0u8; count * 2]);
        assert_eq!(unsafe { HcclReduceScatter(send, recv, count as u64, t, HCCL_REDUCE_SUM, c, s) }, HCCL_SUCCESS);
        same(
            &self.download(recv, count * 2),
            &reduced(t, HCCL_REDUCE_SUM, n, count, me * 11),
            2,
            "64 MiB reduce_scatter",
        );
        self.download(send, 0);
        let buf = self.upload(&data(t, me, count, 12));
        assert_eq!(unsafe { HcclBroadcast(buf, count as u64, t, 1, c, s) }, HCCL_SUCCESS);
        same(&self.download(buf, count * 2), &data(t, 1, count, 12), 2, "64 MiB broadcast");
    }
}

fn with_rank(rank: usize, n: usize, root: &HcclRootInfo, f: impl FnOnce(&Rank)) {
    setup(rank as i32);
    let mut comm = null_mut();
    assert_eq!(
        unsafe { HcclCommInitRootInfo(n as u32, root, rank as u32, &mut comm) },
        HCCL_SUCCESS,
        "init rank {rank}"
    );
    let r = Rank { rank, n, comm, stream: new_stream() };
    f(&r);
    assert_code!(aclrtDestroyStream(r.stream), ACL_SUCCESS);
    assert_eq!(unsafe { HcclCommDestroy(comm) }, HCCL_SUCCESS);
}

fn root_info() -> HcclRootInfo {
    let mut root = HcclRootInfo { internal: [0; 4108] };
    assert_eq!(unsafe { HcclGetRootInfo(&mut root) }, HCCL_SUCCESS);
    root
}

fn threads(n: usize, f: impl Fn(&Rank) + Sync) {
    let root = root_info();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|r| {
                let (root, f) = (&root, &f);
                s.spawn(move || with_rank(r, n, root, f))
            })
            .collect();
        for h in hs {
            h.join().expect("a rank failed");
        }
    });
}

fn hex(root: &HcclRootInfo) -> String {
    root.internal.iter().map(|&b| format!("{:02x}", b as u8)).collect()
}

fn unhex(s: &str) -> HcclRootInfo {
    let mut root = HcclRootInfo { internal: [0; 4108] };
    for (i, b) in root.internal.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap() as std::ffi::c_char;
    }
    root
}

/// Spawns `n` ranks of `scenario` as processes of this test binary; returns their exit statuses and
/// the path of the communicator's shared-memory segment.
fn processes(n: usize, scenario: &str, env: &[(&str, &str)]) -> (Vec<std::process::ExitStatus>, std::path::PathBuf) {
    processes_wrapped(n, scenario, env, |_| None)
}

/// [`processes`], rank r's process started through the command `wrap(r)` when it gives one.
fn processes_wrapped(
    n: usize,
    scenario: &str,
    env: &[(&str, &str)],
    wrap: impl Fn(usize) -> Option<Vec<&'static str>>,
) -> (Vec<std::process::ExitStatus>, std::path::PathBuf) {
    let info = root_info();
    let segment = ascend_sim::hccl::root::Root::decode(&info).unwrap().segment;
    let root = hex(&info);
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..n)
        .map(|r| {
            let mut cmd = match wrap(r) {
                Some(w) => {
                    let mut c = Command::new(w[0]);
                    c.args(&w[1..]).arg(&exe);
                    c
                }
                None => Command::new(&exe),
            };
            cmd.args(["worker", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
                // A hang fails within minutes, not after the default 1836 s (tests may override).
                .env("HCCL_EXEC_TIMEOUT", "120")
                .env("HCCL_CONNECT_TIMEOUT", "120")
                .env("HCCL_TEST_RANK", r.to_string())
                .env("HCCL_TEST_RANKS", n.to_string())
                .env("HCCL_TEST_ROOT", &root)
                .env("HCCL_TEST_SCENARIO", scenario)
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    (children.into_iter().map(|mut c| c.wait().unwrap()).collect(), std::path::Path::new("/dev/shm").join(segment))
}

#[test]
#[ignore = "a rank process of the multi-process tests"]
fn worker() {
    if std::env::var("HCCL_TEST_SCENARIO").is_err() {
        return; // only meaningful as a rank process (e.g. under --include-ignored)
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let (rank, n): (usize, usize) = (var("HCCL_TEST_RANK").parse().unwrap(), var("HCCL_TEST_RANKS").parse().unwrap());
    let root = unhex(&var("HCCL_TEST_ROOT"));
    match var("HCCL_TEST_SCENARIO").as_str() {
        "matrix" => with_rank(rank, n, &root, |r| r.run_matrix(n <= 4)),
        "big" => with_rank(rank, n, &root, |r| r.run_big()),
        "drop" => with_rank(rank, n, &root, dropped_collective),
        "never-join" => {
            // Rank n-1 never arrives; the others must time out.
            if rank + 1 == n {
                return;
            }
            setup(0);
            let mut comm = null_mut();
            let t = Instant::now();
            assert_eq!(unsafe { HcclCommInitRootInfo(n as u32, &root, rank as u32, &mut comm) }, HCCL_E_TIMEOUT);
            assert!(t.elapsed() < Duration::from_secs(10));
        }
        "die" => with_rank(rank, n, &root, |r| {
            if rank + 1 == n {
                std::process::exit(3); // dies before its part of the collective
            }
            let buf = r.upload(&vec![0u8; 4096]);
            assert_eq!(
                unsafe { HcclAllReduce(buf, buf, 1024, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, r.comm, r.stream,) },
                HCCL_SUCCESS
            );
            let t = Instant::now();
            assert_code!(aclrtSynchronizeStream(r.stream), ACL_ERROR_RT_TASK_TIMEOUT);
            assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
            let mut e = 0;
            assert_eq!(unsafe { HcclGetCommAsyncError(r.comm, &mut e) }, HCCL_SUCCESS);
            assert_eq!(e, HCCL_E_TIMEOUT);
            std::process::exit(0); // skip the orderly teardown: the communicator is dead
        }),
        "late-join" => {
            // Rank 0 gives up (connect timeout 2 s); rank 2 arrives only after that (told by a
            // file rank 0 writes): nobody may succeed with a rank that failed.
            let failed = std::path::PathBuf::from(var("HCCL_TEST_MARK"));
            if rank == 1 {
                std::thread::sleep(Duration::from_millis(500));
            }
            while rank == 2 && !failed.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            setup(0);
            let mut comm = null_mut();
            let t = Instant::now();
            assert_eq!(unsafe { HcclCommInitRootInfo(n as u32, &root, rank as u32, &mut comm) }, HCCL_E_TIMEOUT);
            assert!(t.elapsed() < Duration::from_secs(10));
            if rank == 0 {
                std::fs::write(&failed, b"").unwrap();
                std::thread::sleep(Duration::from_secs(3)); // alive while the others decide
            }
        }
        "p2p-after-exit" => with_rank(rank, n, &root, |r| {
            // Rank 2 leaves at once; ranks 0 and 1 exchange afterwards, and must not care.
            let buf = r.upload(&[rank as u8; 64]);
            match rank {
                0 => {
                    std::thread::sleep(Duration::from_millis(500));
                    assert_eq!(unsafe { HcclSend(buf, 64, HCCL_DATA_TYPE_INT8, 1, r.comm, r.stream) }, HCCL_SUCCESS);
                    r.download(buf, 64);
                }
                1 => {
                    assert_eq!(unsafe { HcclRecv(buf, 64, HCCL_DATA_TYPE_INT8, 0, r.comm, r.stream) }, HCCL_SUCCESS);
                    assert_eq!(r.download(buf, 64), vec![0u8; 64]);
                }
                _ => {}
            }
        }),
        "small-shm" => small_shm(),
        "pidns" => with_rank(rank, n, &root, |r| {
            if rank == 0 {
                std::thread::sleep(Duration::from_millis(300)); // rank 1 waits, checking on rank 0
            }
            let buf = r.upload(&[1u8; 64]);
            assert_eq!(
                unsafe { HcclAllReduce(buf, buf, 16, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, r.comm, r.stream) },
                HCCL_SUCCESS
            );
            r.download(buf, 64);
        }),
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn matrix_in_threads() {
    for n in [1, 2, 3, 4, 8] {
        let t = Instant::now();
        threads(n, |r| r.run_matrix(n <= 4));
        eprintln!("{n} ranks in threads: {:?}", t.elapsed());
    }
}

#[test]
fn matrix_in_processes() {
    for n in [1, 2, 3, 4, 8] {
        let t = Instant::now();
        let (st, _) = processes(n, "matrix", &[]);
        assert!(st.iter().all(|s| s.success()), "{n} ranks: {st:?}");
        eprintln!("{n} ranks in processes: {:?}", t.elapsed());
    }
}

#[test]
fn sixty_four_mib_in_threads_and_processes() {
    threads(2, |r| r.run_big());
    threads(4, |r| r.run_big());
    let (st, _) = processes(2, "big", &[]);
    assert!(st.iter().all(|s| s.success()), "{st:?}");
}

#[test]
fn init_all_in_one_process() {
    setup(0);
    let mut devices = [0i32, 1, 2];
    let mut comms = [null_mut(); 3];
    assert_eq!(unsafe { HcclCommInitAll(3, devices.as_mut_ptr(), comms.as_mut_ptr()) }, HCCL_SUCCESS);
    let mut dup = [1i32, 1];
    assert_eq!(unsafe { HcclCommInitAll(2, dup.as_mut_ptr(), comms.as_mut_ptr()) }, HCCL_E_PARA);
    // One thread enqueues on every rank's stream; the streams run the ranks concurrently.
    let ranks: Vec<(aclrtStream, *mut c_void)> = (0..3)
        .map(|r| {
            assert_code!(aclrtSetDevice(r), ACL_SUCCESS);
            let s = new_stream();
            let mut id = 9;
            assert_eq!(unsafe { HcclGetRankId(comms[r as usize], &mut id) }, HCCL_SUCCESS);
            assert_eq!(id, r as u32);
            let p = malloc(400);
            let v = vec![(r + 1) as f32; 100];
            assert_code!(aclrtMemcpy(p, 400, v.as_ptr().cast(), 400, ACL_MEMCPY_HOST_TO_DEVICE), ACL_SUCCESS);
            assert_eq!(
                unsafe { HcclAllReduce(p, p, 100, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, comms[r as usize], s,) },
                HCCL_SUCCESS
            );
            (s, p)
        })
        .collect();
    for (r, (s, p)) in ranks.into_iter().enumerate() {
        assert_code!(aclrtSetDevice(r as i32), ACL_SUCCESS);
        assert_code!(aclrtSynchronizeStream(s), ACL_SUCCESS);
        let mut v = vec![0f32; 100];
        assert_code!(aclrtMemcpy(v.as_mut_ptr().cast(), 400, p, 400, ACL_MEMCPY_DEVICE_TO_HOST), ACL_SUCCESS);
        assert_eq!(v, vec![6.0; 100]);
        assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
        assert_eq!(unsafe { HcclCommDestroy(comms[r]) }, HCCL_SUCCESS);
    }
    assert_code!(aclrtSetDevice(0), ACL_SUCCESS);
}

#[test]
fn bad_arguments_are_rejected_at_once() {
    let root = root_info();
    let bad = {
        let mut b = root;
        b.internal[2000] ^= 0x55;
        b
    };
    setup(0);
    let mut comm = null_mut();
    assert_eq!(unsafe { HcclCommInitRootInfo(2, &bad, 0, &mut comm) }, HCCL_E_PARA, "corrupt root info");
    assert_eq!(unsafe { HcclCommInitRootInfo(2, &root, 2, &mut comm) }, HCCL_E_PARA, "rank out of range");
    assert_eq!(unsafe { HcclCommInitRootInfo(2, std::ptr::null(), 0, &mut comm) }, HCCL_E_PTR);
    assert_eq!(unsafe { HcclGetRootInfo(null_mut()) }, HCCL_E_PTR);
    let mut other_version = root;
    other_version.internal[8] = 7;
    assert_eq!(unsafe { HcclCommInitRootInfo(1, &other_version, 0, &mut comm) }, HCCL_E_PARA, "other format version");
    // A one-rank communicator to exercise argument checks.
    assert_eq!(unsafe { HcclCommInitRootInfo(1, &root, 0, &mut comm) }, HCCL_SUCCESS);
    let s = new_stream();
    let p = malloc(64);
    unsafe {
        assert_eq!(HcclAllReduce(p, p, 16, 99, HCCL_REDUCE_SUM, comm, s), HCCL_E_PARA, "unknown dtype");
        assert_eq!(HcclAllReduce(p, p, 16, HCCL_DATA_TYPE_INT128, HCCL_REDUCE_SUM, comm, s), HCCL_E_NOT_SUPPORT);
        assert_eq!(HcclAllReduce(p, p, 16, HCCL_DATA_TYPE_FP32, 9, comm, s), HCCL_E_PARA, "unknown op");
        assert_eq!(
            HcclAllReduce(p, p, 1000, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, comm, s),
            HCCL_E_PARA,
            "beyond the buffer"
        );
        assert_eq!(
            HcclAllReduce((p as usize + 2) as *mut c_void, p, 1, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, comm, s),
            HCCL_E_PARA,
            "misaligned"
        );
        assert_eq!(HcclAllReduce(null_mut(), p, 1, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, comm, s), HCCL_E_PTR);
        // Only device memory: host memory, pinned host memory and wild pointers are refused.
        let mut host = vec![0f32; 16];
        let hp = host.as_mut_ptr().cast::<c_void>();
        assert_eq!(HcclAllReduce(hp, p, 16, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, comm, s), HCCL_E_PARA, "host");
        let mut pinned = null_mut();
        assert_code!(aclrtMallocHost(&mut pinned, 64), ACL_SUCCESS);
        assert_eq!(HcclBroadcast(pinned, 16, HCCL_DATA_TYPE_FP32, 0, comm, s), HCCL_E_PARA, "pinned host");
        assert_code!(aclrtFreeHost(pinned), ACL_SUCCESS);
        let wild = 0x40usize as *mut c_void;
        assert_eq!(HcclAllReduce(p, wild, 16, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, comm, s), HCCL_E_PARA, "wild");
        assert_eq!(HcclAllReduce(p, p, 1, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, null_mut(), s), HCCL_E_PTR);
        assert_eq!(HcclAllReduce(p, p, 1, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, 0x77usize as HcclComm, s), HCCL_E_PARA);
        assert_eq!(HcclBroadcast(p, 1, HCCL_DATA_TYPE_FP32, 1, comm, s), HCCL_E_PARA, "root out of range");
        assert_eq!(HcclSend(p, 1, HCCL_DATA_TYPE_FP32, 0, comm, s), HCCL_E_PARA, "send to self");
        assert_eq!(
            HcclAllReduce(p, p, u64::MAX, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, comm, s),
            HCCL_E_PARA,
            "overflow"
        );
        // Count arrays from C need no 8-byte alignment: each u64 here starts at an odd address.
        let words = [4u64, 0, 4, 0];
        let mut odd = [0u8; 33];
        for (i, w) in words.iter().enumerate() {
            odd[1 + 8 * i..9 + 8 * i].copy_from_slice(&w.to_ne_bytes());
        }
        let c = odd.as_ptr().add(1).cast::<c_void>();
        let (d, half) = (c.byte_add(8), (p as usize + 32) as *mut c_void);
        assert_eq!(
            HcclAlltoAllV(p, c, d, HCCL_DATA_TYPE_FP32, half, c.byte_add(16), d, HCCL_DATA_TYPE_FP32, comm, s),
            HCCL_SUCCESS
        );
        assert_code!(aclrtSynchronizeStream(s), ACL_SUCCESS);
        let mut n = 0;
        assert_eq!(HcclGetRankSize(comm, &mut n), HCCL_SUCCESS);
        assert_eq!(n, 1);
        assert_eq!(HcclGetRankSize(comm, null_mut()), HCCL_E_PTR);
        let mut name = [0 as std::ffi::c_char; 128];
        assert_eq!(HcclGetCommName(comm, name.as_mut_ptr()), HCCL_SUCCESS);
        assert!(std::ffi::CStr::from_ptr(name.as_ptr()).to_str().unwrap().starts_with("ascend-hccl-"));
        assert_eq!(std::ffi::CStr::from_ptr(HcclGetErrorString(HCCL_E_PARA)).to_str().unwrap(), "HCCL_E_PARA");
        // Busy: destroy refuses while work is queued.
        let gate = Gate::hold(s);
        assert_eq!(HcclAllReduce(p, p, 16, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, comm, s), HCCL_SUCCESS);
        assert_eq!(HcclCommDestroy(comm), HCCL_E_AGAIN);
        gate.open();
        assert_code!(aclrtSynchronizeStream(s), ACL_SUCCESS);
        assert_eq!(HcclCommDestroy(comm), HCCL_SUCCESS);
        assert_eq!(HcclCommDestroy(comm), HCCL_E_PARA);
    }
    assert_code!(aclrtFree(p), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
}

#[test]
fn mismatched_arguments_between_ranks_fail_every_rank() {
    threads(3, |r| {
        let p = r.upload(&[0u8; 4096]);
        // Rank 2 passes another count: every rank's stream reports it, nothing hangs.
        let count = if r.rank == 2 { 512 } else { 1024 };
        assert_eq!(
            unsafe { HcclAllReduce(p, p, count, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, r.comm, r.stream,) },
            HCCL_SUCCESS
        );
        assert_code!(aclrtSynchronizeStream(r.stream), ACL_ERROR_RT_PARAM_INVALID);
        let mut e = 0;
        assert_eq!(unsafe { HcclGetCommAsyncError(r.comm, &mut e) }, HCCL_SUCCESS);
        assert_eq!(e, HCCL_E_PARA);
        assert_code!(aclrtFree(p), ACL_SUCCESS);
    });
    // 100 FP32 received as 200 FP32 (another size), or as 200 BF16 (the same bytes, another type:
    // not reinterpreted).
    for recv_type in [HCCL_DATA_TYPE_FP32, HCCL_DATA_TYPE_BFP16] {
        threads(2, |r| {
            let p = r.upload(&[0u8; 4096]);
            let got = if r.rank == 0 {
                unsafe { HcclSend(p, 100, HCCL_DATA_TYPE_FP32, 1, r.comm, r.stream) }
            } else {
                unsafe { HcclRecv(p, 200, recv_type, 0, r.comm, r.stream) }
            };
            assert_eq!(got, HCCL_SUCCESS);
            assert_code!(aclrtSynchronizeStream(r.stream), ACL_ERROR_RT_PARAM_INVALID);
            assert_code!(aclrtFree(p), ACL_SUCCESS);
        });
    }
}

#[test]
fn a_collective_one_rank_drops_fails_its_peers_at_once_and_poisons_the_communicator() {
    // Processes with a finite HCCL_EXEC_TIMEOUT: if the drop went unnoticed, the peer would fail
    // only after it, and the time check in `dropped_collective` would catch that.
    let (st, _) = processes(2, "drop", &[("HCCL_EXEC_TIMEOUT", "60")]);
    assert!(st.iter().all(|s| s.success()), "{st:?}");
}

/// Rank 1's stream fails before its collective runs, so the collective is dropped there.
fn dropped_collective(r: &Rank) {
    let p = r.upload(&[0u8; 4096]);
    let all_reduce = |s| unsafe { HcclAllReduce(p, p, 1024, HCCL_DATA_TYPE_FP32, HCCL_REDUCE_SUM, r.comm, s) };
    let t = Instant::now();
    if r.rank == 1 {
        // A copy into memory freed while it was queued fails the stream first.
        let gate = Gate::hold(r.stream);
        let q = malloc(64);
        assert_code!(aclrtMemcpyAsync(q, 64, p, 64, ACL_MEMCPY_DEVICE_TO_DEVICE, r.stream), ACL_SUCCESS);
        assert_code!(aclrtFree(q), ACL_SUCCESS);
        assert_eq!(all_reduce(r.stream), HCCL_SUCCESS);
        gate.open();
        assert_ne!(unsafe { aclrtSynchronizeStream(r.stream) }, ACL_SUCCESS);
    } else {
        assert_eq!(all_reduce(r.stream), HCCL_SUCCESS);
        assert_code!(aclrtSynchronizeStream(r.stream), ACL_ERROR_RT_TASK_TIMEOUT);
    }
    // Nothing pairs with the dropped collective later: every further one fails, on a fresh stream too.
    let s2 = new_stream();
    assert_eq!(all_reduce(s2), HCCL_SUCCESS);
    assert_code!(aclrtSynchronizeStream(s2), ACL_ERROR_RT_TASK_TIMEOUT);
    assert!(t.elapsed() < Duration::from_secs(10), "not after HCCL_EXEC_TIMEOUT: {:?}", t.elapsed());
    assert_code!(aclrtDestroyStream(s2), ACL_SUCCESS);
    assert_code!(aclrtFree(p), ACL_SUCCESS);
}

#[test]
fn a_rank_that_never_joins_times_out_and_leaves_no_segment() {
    let t = Instant::now();
    let (st, segment) = processes(3, "never-join", &[("HCCL_CONNECT_TIMEOUT", "1")]);
    assert!(st.iter().all(|s| s.success()), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(!segment.exists(), "{} left behind", segment.display());
}

/// Runs in a private 8 MiB `/dev/shm` (see the test below).
fn small_shm() {
    // Four ranks' staging slots (8 MiB) do not fit: every rank's init fails, none crashes.
    let root = root_info();
    std::thread::scope(|s| {
        for r in 0..4u32 {
            let root = &root;
            s.spawn(move || {
                setup(r as i32);
                let mut comm = null_mut();
                assert_eq!(unsafe { HcclCommInitRootInfo(4, root, r, &mut comm) }, HCCL_E_MEMORY, "rank {r}");
            });
        }
    });
    // Two ranks fit (4 MiB); then /dev/shm fills up and the first send's mailbox does not.
    threads(2, |r| {
        if r.rank == 0 {
            use std::io::Write;
            let path = "/dev/shm/ascend-test-filler";
            let mut f = std::fs::File::create(path).unwrap();
            while f.write_all(&[1u8; 64 << 10]).is_ok() {}
            let len = f.metadata().unwrap().len();
            f.set_len(len - (256 << 10)).unwrap(); // 256 KiB free: less than a mailbox
            let buf = r.upload(&[7u8; 64]);
            assert_eq!(unsafe { HcclSend(buf, 64, HCCL_DATA_TYPE_INT8, 1, r.comm, r.stream) }, HCCL_SUCCESS);
            assert_code!(aclrtSynchronizeStream(r.stream), ACL_ERROR_RT_PARAM_INVALID);
            let mut e = 0;
            assert_eq!(unsafe { HcclGetCommAsyncError(r.comm, &mut e) }, HCCL_SUCCESS);
            assert_eq!(e, HCCL_E_MEMORY);
            std::fs::remove_file(path).unwrap();
        } else {
            let buf = r.upload(&[0u8; 64]);
            assert_eq!(unsafe { HcclRecv(buf, 64, HCCL_DATA_TYPE_INT8, 0, r.comm, r.stream) }, HCCL_SUCCESS);
            assert_code!(aclrtSynchronizeStream(r.stream), ACL_ERROR_RT_PARAM_INVALID);
            // the peer failed
        }
    });
}

#[test]
fn a_small_dev_shm_gives_hccl_e_memory_instead_of_a_crash() {
    // In a user namespace of its own: no privilege needed where unprivileged namespaces are allowed.
    let args = ["--user", "--map-root-user", "--mount", "--propagation", "private"];
    if !namespaces(&args) {
        return;
    }
    // A private mount namespace with its own 8 MiB /dev/shm (as a container's default 64 MiB one
    // is for a large communicator): this test binary's worker runs there.
    let script = "mount -t tmpfs -o size=8m tmpfs /dev/shm && exec \"$0\" worker --exact --ignored --nocapture";
    let out = Command::new("unshare")
        .args(args)
        .args(["sh", "-c", script])
        .arg(std::env::current_exe().unwrap())
        .envs([("HCCL_TEST_RANK", "0"), ("HCCL_TEST_RANKS", "1"), ("HCCL_TEST_SCENARIO", "small-shm")])
        .env("HCCL_TEST_ROOT", hex(&root_info()))
        .env("HCCL_EXEC_TIMEOUT", "30")
        .output()
        .expect("unshare (util-linux) runs the worker in its own mount namespace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
}

#[test]
fn ranks_in_another_pid_namespace_are_not_taken_for_dead() {
    if !namespaces(&["--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]) {
        return;
    }
    // Rank 1 in its own PID namespace with its own /proc (as in a container sharing the host's
    // /dev/shm): rank 0's pid means nothing there, which must not read as "rank 0 died" (nor make
    // the communicator's segment look stale).
    let unshare =
        |r: usize| (r == 1).then(|| vec!["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]);
    let env = [("HCCL_EXEC_TIMEOUT", "30"), ("HCCL_CONNECT_TIMEOUT", "20")];
    let (st, segment) = processes_wrapped(2, "pidns", &env, unshare);
    assert!(st.iter().all(|s| s.success()), "{st:?}");
    assert!(!segment.exists(), "{} left behind", segment.display());
}

#[test]
fn a_rank_that_gives_up_joining_fails_the_rendezvous_for_every_rank() {
    let mark = std::env::temp_dir().join(format!("ascend-late-join-{}", std::process::id()));
    let _ = std::fs::remove_file(&mark);
    let mark = mark.to_str().unwrap().to_string();
    let env = [("HCCL_CONNECT_TIMEOUT", "2"), ("HCCL_EXEC_TIMEOUT", "60"), ("HCCL_TEST_MARK", mark.as_str())];
    let (st, segment) = processes(3, "late-join", &env);
    let _ = std::fs::remove_file(&mark);
    assert!(st.iter().all(|s| s.success()), "{st:?}");
    assert!(!segment.exists(), "{} left behind", segment.display());
}

/// Whether this machine lets the tests make namespaces (`unshare` with `args`, a user namespace
/// among them: any user where the kernel allows unprivileged ones, as Debian's does). Where it does
/// not (a container whose seccomp profile refuses unshare), the test that needs them says so and
/// checks nothing.
fn namespaces(args: &[&str]) -> bool {
    let ok = Command::new("unshare").args(args).arg("true").status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: `unshare {}` is not permitted here (needs CAP_SYS_ADMIN)", args.join(" "));
    }
    ok
}

#[test]
fn point_to_point_ignores_a_rank_that_left() {
    let (st, _) = processes(3, "p2p-after-exit", &[("HCCL_EXEC_TIMEOUT", "30")]);
    assert!(st.iter().all(|s| s.success()), "{st:?}");
}

#[test]
fn a_rank_that_dies_fails_the_survivors_with_a_timeout() {
    // A death is noticed whatever the timeouts, even absurd ones (which must not overflow).
    for timeouts in [[("HCCL_EXEC_TIMEOUT", "30")], [("HCCL_EXEC_TIMEOUT", "inf")], [("HCCL_CONNECT_TIMEOUT", "1e20")]]
    {
        let t = Instant::now();
        let (st, segment) = processes(3, "die", &timeouts);
        assert!(st[..2].iter().all(|s| s.success()), "{timeouts:?}: {st:?}");
        assert!(t.elapsed() < Duration::from_secs(20), "dead peers are noticed quickly");
        assert!(!segment.exists(), "{} left behind", segment.display());
    }
}

#[test]
fn init_with_config_honours_the_versioned_header() {
    let root = root_info();
    setup(0);
    // The v5 layout: the 24-byte header {size, magic, version, reserved}, then the fields.
    let mut cfg = HcclCommConfig::default();
    let mut comm = null_mut();
    assert_eq!(unsafe { HcclCommInitRootInfoConfig(1, &root, 0, &cfg, &mut comm) }, HCCL_E_PARA, "no magic");
    assert_eq!(unsafe { HcclCommInitRootInfoConfig(1, &root, 0, std::ptr::null(), &mut comm) }, HCCL_E_PTR);
    let header = |size: usize, version: u32| {
        let mut h = [0i8; 24];
        for (d, s) in h.iter_mut().zip(
            size.to_le_bytes()
                .iter()
                .chain(&(HCCL_COMM_CONFIG_MAGIC_WORD as u32).to_le_bytes())
                .chain(&version.to_le_bytes()),
        ) {
            *d = *s as i8;
        }
        h
    };
    cfg.reserved = header(std::mem::size_of::<HcclCommConfig>(), 5);
    for (d, s) in cfg.hcclCommName.iter_mut().zip(b"tp-group-0\0") {
        *d = *s as i8;
    }
    assert_eq!(unsafe { HcclCommInitRootInfoConfig(1, &root, 0, &cfg, &mut comm) }, HCCL_SUCCESS);
    let mut name = [0 as std::ffi::c_char; 128];
    assert_eq!(unsafe { HcclGetCommName(comm, name.as_mut_ptr()) }, HCCL_SUCCESS);
    assert_eq!(unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_str().unwrap(), "tp-group-0");
    assert_eq!(unsafe { HcclCommDestroy(comm) }, HCCL_SUCCESS);
    cfg.reserved = header(100, 5); // a header that claims a size smaller than the v5 struct
    assert_eq!(unsafe { HcclCommInitRootInfoConfig(1, &root_info(), 0, &cfg, &mut comm) }, HCCL_E_PARA);
}
