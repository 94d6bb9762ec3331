//! A communicator: the ranks' shared-memory segment, the rendezvous that fills it, and the waiting
//! rules (timeouts, dead peers) every collective relies on.
//!
//! One POSIX shared-memory segment per communicator, created 0600 by the first rank that arrives and
//! named by the root info. Once every rank has mapped it, the name is unlinked: the mapping lives on,
//! and nothing is left in `/dev/shm` whatever happens to the processes afterwards. A segment whose
//! ranks all died before the rendezvous completed is removed by the next communicator initialisation.
//!
//! Layout: a header; one control block per rank (its step counter and the descriptor of its current
//! collective, double-buffered by step parity); one control block per ordered pair of ranks for
//! point-to-point transfers; then per rank two staging slots of [`CHUNK`] bytes, and per ordered pair
//! two mailbox halves of [`P2P_HALF`] bytes. The creator reserves everything but the mailboxes in
//! `/dev/shm` before any rank maps the segment, and a sender reserves a pair's mailbox before its
//! first message: a full `/dev/shm` is an `HCCL_E_MEMORY` error, never a SIGBUS at a first write.

use super::root::{Root, SEGMENT_PREFIX};
use ascend_sys::*;
use std::ffi::CString;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest communicator.
pub const MAX_RANKS: usize = 64;
/// Staging slot size per rank (two per rank, alternating by step parity).
pub const CHUNK: usize = 1 << 20;
/// Point-to-point mailbox half size (two halves per ordered pair).
pub const P2P_HALF: usize = 256 << 10;
const MAGIC: u64 = 0x4153_4353_494d_4843; // "ASCSIMHC"
const LAYOUT_VERSION: u32 = 4;

/// An HCCL failure: its code and what happened.
pub type HFail = (i32, String);

#[repr(C)]
struct Header {
    magic: AtomicU64,
    // Written by the creator before `magic`, read by joiners after it; atomics because joiners in
    // this process already hold a `&Header` while the creator writes.
    version: AtomicU32,
    nranks: AtomicU32,
    /// The root info's key, as two little-endian words.
    key: [AtomicU64; 2],
    joined: AtomicU32,
    attached: AtomicU32,
    /// First fatal error of the communicator (timeout, dead peer), seen by every rank.
    failed: AtomicI32,
    unlinked: AtomicU32,
}

/// Words of a collective's descriptor; the first [`DESC_COMPARED`] must match on every rank.
pub type Desc = [u64; 8];
/// Descriptor words compared between ranks.
pub const DESC_COMPARED: usize = 6;

#[repr(C, align(64))]
struct RankCtl {
    pid: AtomicU32,
    /// Set when the rank has destroyed its communicator: a peer waiting for it fails at once, as
    /// for a dead one, instead of at its timeout.
    left: AtomicU32,
    /// The PID namespace `pid` belongs to (0 if unknown): pids of another namespace say nothing here.
    pidns: AtomicU64,
    _pad0: [u8; 48],
    step: AtomicU64,
    _pad1: [u8; 56],
    desc: [[AtomicU64; 8]; 2],
    counts: [[AtomicU64; MAX_RANKS]; 2],
}

/// Control block of one ordered pair (from → to) of ranks.
#[repr(C, align(64))]
pub struct PairCtl {
    /// Chunks the sender has published.
    pub sent: AtomicU64,
    /// Chunks the receiver has consumed.
    pub acked: AtomicU64,
    /// Per mailbox half: bytes in the chunk, total bytes of the message it belongs to, and the
    /// message's data type (`DType as u64`).
    pub len: [[AtomicU64; 3]; 2],
    /// Set by a receiver whose expected size or data type differs from the sender's.
    pub error: AtomicU32,
}

struct Layout {
    ranks: usize,
    pairs: usize,
    slots: usize,
    mailboxes: usize,
    total: usize,
}

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

impl Layout {
    fn new(n: usize) -> Layout {
        let ranks = 4096;
        let pairs = align_up(ranks + n * std::mem::size_of::<RankCtl>(), 64);
        let slots = align_up(pairs + n * n * std::mem::size_of::<PairCtl>(), 4096);
        let mailboxes = slots + n * 2 * CHUNK;
        let total = mailboxes + n * n * 2 * P2P_HALF;
        Layout { ranks, pairs, slots, mailboxes, total }
    }
}

/// A mapped segment, and a descriptor of it (kept to reserve mailboxes on first use).
struct Segment {
    base: usize,
    len: usize,
    name: String,
    fd: i32,
}

/// The size a creator gives a segment it could not reserve: the ranks that opened it meanwhile
/// fail at once instead of waiting for it.
const FAILED_SIZE: usize = 1;

/// Reserves `len` bytes of the object at `offset` in `/dev/shm` now (extending it if needed).
fn reserve(fd: i32, offset: usize, len: usize, what: &str) -> Result<(), HFail> {
    // SAFETY: plain syscall on a descriptor we own. tmpfs gives up with EINTR when a signal arrives
    // meanwhile: that is no shortage, try again.
    let r = loop {
        match unsafe { libc::posix_fallocate(fd, offset as libc::off_t, len as libc::off_t) } {
            libc::EINTR => continue,
            r => break r,
        }
    };
    match r {
        0 => Ok(()),
        e => Err((
            HCCL_E_MEMORY,
            format!(
                "cannot reserve {:.1} MiB of /dev/shm for {what}: {} (make /dev/shm larger, e.g. docker --shm-size)",
                len as f64 / (1 << 20) as f64,
                std::io::Error::from_raw_os_error(e)
            ),
        )),
    }
}

impl Segment {
    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (zero-initialised by ftruncate, written by the
        // creator) and lives as long as `self`; every mutable field is atomic.
        unsafe { &*(self.base as *const Header) }
    }
}

fn shm_path(name: &str) -> CString {
    CString::new(format!("/{name}")).expect("segment names have no NUL")
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// This process's PID namespace (the inode of `/proc/self/ns/pid`), 0 if unknown.
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// A rank's process, as recorded in the segment.
#[derive(Clone, Copy, Debug)]
struct Process {
    pid: u32,
    pidns: u64,
}

impl Process {
    /// True when it is known to be gone: only a pid of our own namespace can be looked up (ranks
    /// in other containers, sharing /dev/shm but not /proc, are left to the timeouts).
    fn known_dead(self, our_ns: u64) -> bool {
        self.pidns != 0 && self.pidns == our_ns && pid_dead(self.pid)
    }
}

/// A root info key as the header stores it.
fn key_words(key: &[u8; 16]) -> [u64; 2] {
    let word = |i: usize| u64::from_le_bytes(key[i * 8..(i + 1) * 8].try_into().expect("8 bytes"));
    [word(0), word(1)]
}

/// True when process `pid` no longer runs (gone, or a zombie).
pub fn pid_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// Removes our segments whose every attached process is dead (left by a rendezvous that never
/// completed). Returns how many were removed.
pub fn remove_stale_segments() -> usize {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return 0;
    };
    let (mut removed, ns) = (0, pid_namespace());
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(SEGMENT_PREFIX) {
            continue;
        }
        let Ok(procs) = processes_in(&e.path()) else {
            continue;
        };
        if !procs.is_empty() && procs.iter().all(|p| p.known_dead(ns)) {
            let _ = std::fs::remove_file(e.path());
            removed += 1;
        }
    }
    removed
}

/// The processes recorded in a segment file (reads only the control blocks).
fn processes_in(path: &std::path::Path) -> std::io::Result<Vec<Process>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let mut head = [0u8; 16];
    f.read_exact(&mut head)?;
    let n = u32::from_le_bytes(head[12..16].try_into().unwrap()) as usize;
    let mut procs = Vec::new();
    for r in 0..n.min(MAX_RANKS) {
        f.seek(SeekFrom::Start((4096 + r * std::mem::size_of::<RankCtl>()) as u64))?;
        let mut p = [0u8; 16];
        f.read_exact(&mut p)?;
        let pid = u32::from_le_bytes(p[..4].try_into().unwrap());
        if pid != 0 {
            procs.push(Process { pid, pidns: u64::from_le_bytes(p[8..].try_into().unwrap()) });
        }
    }
    Ok(procs)
}

/// State changed by each operation, under the communicator's lock.
pub struct OpState {
    /// Steps this rank has posted.
    pub step: u64,
    /// Chunks sent to each peer.
    pub p2p_sent: Vec<u64>,
    /// Chunks received from each peer.
    pub p2p_recv: Vec<u64>,
}

/// One rank's view of a communicator.
pub struct Comm {
    seg: Segment,
    layout: Layout,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub n: usize,
    /// Logical device the communicator was created on.
    pub device: usize,
    /// Name reported by `HcclGetCommName`.
    pub name: String,
    procs: Vec<Process>,
    /// Our PID namespace.
    pidns: u64,
    exec_timeout: Duration,
    /// Serialises operations of this rank; holds the step counters.
    pub state: Mutex<OpState>,
    /// Error of the last failed asynchronous operation (`HcclGetCommAsyncError`).
    pub async_error: AtomicI32,
    /// Operations enqueued and not finished (destroy refuses while non-zero).
    pub inflight: AtomicUsize,
}

// SAFETY: `seg.base` points to a shared mapping owned by this value; all cross-thread access to it
// goes through atomics or is ordered by them (step counters with release/acquire).
unsafe impl Send for Comm {}
// SAFETY: as above; mutable Rust-side state is behind a Mutex or atomics.
unsafe impl Sync for Comm {}

/// Reads a timeout in seconds from the environment: `default_s` when unset, unparsable or not
/// positive; at most `i32::MAX` seconds (68 years), so that "inf" or 1e20 means "very long"
/// rather than an overflowing deadline.
pub fn env_timeout(var: &str, default_s: u64) -> Duration {
    let secs = std::env::var(var).ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|s| *s > 0.0);
    Duration::from_secs_f64(secs.unwrap_or(default_s as f64).min(i32::MAX as f64))
}

fn map(fd: i32, len: usize) -> Result<usize, HFail> {
    // SAFETY: maps a shared-memory object we opened; the kernel picks the address.
    let p =
        unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err((HCCL_E_MEMORY, format!("mmap of the communicator segment failed: {}", errno())));
    }
    Ok(p as usize)
}

impl Comm {
    /// Joins (or creates) the communicator named by `root` as `rank` of `n`, waiting up to
    /// `connect_timeout` for every rank to arrive.
    pub fn join(
        root: &Root,
        n: usize,
        rank: usize,
        device: usize,
        connect_timeout: Duration,
        exec_timeout: Duration,
    ) -> Result<Comm, HFail> {
        if n == 0 || n > MAX_RANKS || rank >= n {
            return Err((HCCL_E_PARA, format!("rank {rank} of {n} is invalid (1..={MAX_RANKS} ranks)")));
        }
        remove_stale_segments();
        let layout = Layout::new(n);
        let path = shm_path(&root.segment);
        let deadline = Instant::now() + connect_timeout;
        // Create it, or open the one another rank created.
        let (fd, created) = loop {
            // SAFETY: plain syscalls on a NUL-terminated name.
            let fd = unsafe { libc::shm_open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600) };
            if fd >= 0 {
                // SAFETY: our fresh descriptor.
                unsafe { libc::fchmod(fd, 0o600) };
                // Reserve the control blocks and staging slots first (the size stays short of the
                // full one meanwhile, so nobody maps it), then give it its full size.
                let sized = reserve(fd, 0, layout.mailboxes, "the communicator's staging slots").and_then(|()| {
                    // SAFETY: as above.
                    match unsafe { libc::ftruncate(fd, layout.total as libc::off_t) } {
                        0 => Ok(()),
                        _ => Err((HCCL_E_MEMORY, format!("cannot size the communicator segment: {}", errno()))),
                    }
                });
                if let Err(f) = sized {
                    // SAFETY: our descriptor and name.
                    unsafe {
                        libc::ftruncate(fd, FAILED_SIZE as libc::off_t);
                        libc::close(fd);
                        libc::shm_unlink(path.as_ptr())
                    };
                    return Err(f);
                }
                break (fd, true);
            }
            // SAFETY: as above.
            let fd = unsafe { libc::shm_open(path.as_ptr(), libc::O_RDWR, 0) };
            if fd >= 0 {
                break (fd, false);
            }
            if Instant::now() > deadline {
                return Err((HCCL_E_TIMEOUT, "timed out opening the communicator segment".into()));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        // The creator gives the segment its full size once it is reserved: wait for that.
        let ready = loop {
            // SAFETY: fstat into a zeroed struct.
            let size = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstat(fd, &mut st);
                st.st_size as usize
            };
            match size {
                _ if size == layout.total => break Ok(()),
                FAILED_SIZE => {
                    break Err((
                        HCCL_E_MEMORY,
                        "the rank that created the communicator could not reserve /dev/shm".into(),
                    ))
                }
                _ if size != 0 && size != layout.mailboxes => {
                    break Err((
                        HCCL_E_PARA,
                        format!("the root info was used for a communicator of another size (this rank says {n})"),
                    ))
                }
                _ if Instant::now() > deadline => {
                    break Err((HCCL_E_TIMEOUT, "timed out waiting for the communicator segment's size".into()))
                }
                _ => std::thread::sleep(Duration::from_micros(100)),
            }
        };
        let base = ready.and_then(|()| map(fd, layout.total));
        if base.is_err() {
            // SAFETY: our descriptor; and a name nobody else can have mapped yet through us.
            unsafe {
                libc::close(fd);
                if created {
                    libc::shm_unlink(path.as_ptr());
                }
            }
        }
        let seg = Segment { base: base?, len: layout.total, name: root.segment.clone(), fd };
        if created {
            let h = seg.header();
            h.version.store(LAYOUT_VERSION, Relaxed);
            h.nranks.store(n as u32, Relaxed);
            h.key.iter().zip(key_words(&root.key)).for_each(|(w, k)| w.store(k, Relaxed));
            h.magic.store(MAGIC, Release);
        }
        let mut comm = Comm {
            layout,
            rank,
            n,
            device,
            name: root.segment.clone(),
            procs: Vec::new(),
            pidns: pid_namespace(),
            exec_timeout,
            state: Mutex::new(OpState { step: 0, p2p_sent: vec![0; n], p2p_recv: vec![0; n] }),
            async_error: AtomicI32::new(0),
            inflight: AtomicUsize::new(0),
            seg,
        };
        comm.seg.header().attached.fetch_add(1, AcqRel);
        // Wait for the creator's header, then check it is ours.
        while comm.seg.header().magic.load(Acquire) != MAGIC {
            if Instant::now() > deadline {
                return Err((HCCL_E_TIMEOUT, "timed out waiting for the communicator segment's header".into()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let h = comm.seg.header();
        let key = [h.key[0].load(Relaxed), h.key[1].load(Relaxed)];
        if key != key_words(&root.key) || h.version.load(Relaxed) != LAYOUT_VERSION {
            return Err((HCCL_E_PARA, "the segment does not match the root info's key (not ours)".into()));
        }
        let nranks = h.nranks.load(Relaxed) as usize;
        if nranks != n {
            return Err((HCCL_E_PARA, format!("the root info was used with {nranks} ranks elsewhere and {n} here")));
        }
        if let Some(f) = comm.poisoned() {
            return Err((f.0, "a rank's rendezvous on this root info already failed: use a new root info".into()));
        }
        let pid = std::process::id();
        if comm.ctl(rank).pid.compare_exchange(0, pid, AcqRel, Acquire).is_err() {
            return Err((HCCL_E_PARA, format!("rank {rank} has already joined this communicator")));
        }
        // Published by `joined` (every rank reads it after seeing all joins); a stale-segment scan
        // that reads 0 meanwhile just does not trust this pid.
        comm.ctl(rank).pidns.store(comm.pidns, Relaxed);
        h.joined.fetch_add(1, AcqRel);
        comm.wait_joined(deadline, connect_timeout)?;
        comm.procs = (0..n)
            .map(|r| Process { pid: comm.ctl(r).pid.load(Acquire), pidns: comm.ctl(r).pidns.load(Relaxed) })
            .collect();
        comm.unlink();
        Ok(comm)
    }

    /// Creates all `n` ranks of a communicator in this process at once (`HcclCommInitAll`); the
    /// rendezvous is bounded by `connect_timeout` as [`Comm::join`]'s is.
    pub fn create_all(
        devices: &[usize],
        (connect_timeout, exec_timeout): (Duration, Duration),
    ) -> Result<Vec<Comm>, HFail> {
        let root = Root::generate();
        let n = devices.len();
        // Each rank's join completes only when all have arrived: join them from scoped threads.
        let joined: Vec<Result<Comm, HFail>> = std::thread::scope(|s| {
            let hs: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(r, &d)| {
                    let root = &root;
                    s.spawn(move || Comm::join(root, n, r, d, connect_timeout, exec_timeout))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err((HCCL_E_INTERNAL, "join panicked".into()))))
                .collect()
        });
        joined.into_iter().collect()
    }

    /// Waits until every rank has joined. A rank that gives up withdraws its join, unless the last
    /// rank arrived meanwhile (one atomic decision on `joined`, so no rank can succeed with a peer that
    /// failed), and fails the rendezvous for every other rank.
    fn wait_joined(&self, deadline: Instant, timeout: Duration) -> Result<(), HFail> {
        let h = self.seg.header();
        loop {
            if h.joined.load(Acquire) as usize == self.n {
                return Ok(());
            }
            if let Some(f) = self.poisoned() {
                return Err((f.0, "another rank's rendezvous failed (it timed out)".into()));
            }
            if Instant::now() > deadline {
                let n = self.n as u32;
                if h.joined.fetch_update(AcqRel, Acquire, |j| (j < n).then(|| j - 1)).is_err() {
                    return Ok(()); // everyone arrived at the last moment
                }
                let missing: Vec<usize> = (0..self.n).filter(|&r| self.ctl(r).pid.load(Acquire) == 0).collect();
                return Err(self.poison((
                    HCCL_E_TIMEOUT,
                    format!("ranks {missing:?} did not join within HCCL_CONNECT_TIMEOUT ({} s)", timeout.as_secs_f64()),
                )));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Removes the segment's name (the mappings stay valid). Idempotent across ranks.
    fn unlink(&self) {
        if self.seg.header().unlinked.swap(1, AcqRel) == 0 {
            let path = shm_path(&self.seg.name);
            // SAFETY: plain syscall on a NUL-terminated name.
            unsafe { libc::shm_unlink(path.as_ptr()) };
        }
    }

    fn ctl(&self, r: usize) -> &RankCtl {
        // SAFETY: in bounds of the mapping (layout), properly aligned (64-byte aligned offsets of a
        // page-aligned mapping), atomics only.
        unsafe { &*((self.seg.base + self.layout.ranks + r * std::mem::size_of::<RankCtl>()) as *const RankCtl) }
    }

    /// Control block of the ordered pair `from → to`.
    pub fn pair(&self, from: usize, to: usize) -> &PairCtl {
        // SAFETY: as for `ctl`.
        unsafe {
            &*((self.seg.base + self.layout.pairs + (from * self.n + to) * std::mem::size_of::<PairCtl>())
                as *const PairCtl)
        }
    }

    /// Rank `r`'s staging slot for step `s` ([`CHUNK`] bytes).
    pub fn slot(&self, r: usize, s: u64) -> *mut u8 {
        (self.seg.base + self.layout.slots + (r * 2 + (s % 2) as usize) * CHUNK) as *mut u8
    }

    /// Mailbox half `half` of the ordered pair `from → to` ([`P2P_HALF`] bytes).
    pub fn mailbox(&self, from: usize, to: usize, half: u64) -> *mut u8 {
        (self.seg.base + self.mailbox_offset(from, to) + (half % 2) as usize * P2P_HALF) as *mut u8
    }

    fn mailbox_offset(&self, from: usize, to: usize) -> usize {
        self.layout.mailboxes + (from * self.n + to) * 2 * P2P_HALF
    }

    /// Reserves this rank's mailbox to `to` in `/dev/shm` (before its first message).
    pub fn reserve_mailbox(&self, to: usize) -> Result<(), HFail> {
        reserve(self.seg.fd, self.mailbox_offset(self.rank, to), 2 * P2P_HALF, "a point-to-point mailbox")
    }

    /// Writes this rank's row of counts for step `s` (AlltoAllV).
    pub fn set_counts(&self, s: u64, counts: &[u64]) {
        for (slot, &c) in self.ctl(self.rank).counts[(s % 2) as usize].iter().zip(counts) {
            slot.store(c, Relaxed);
        }
    }

    /// Rank `r`'s count for destination `d` at step `s` (valid after the step).
    pub fn count(&self, r: usize, s: u64, d: usize) -> u64 {
        self.ctl(r).counts[(s % 2) as usize][d].load(Relaxed)
    }

    /// The failure that poisoned the communicator, if any.
    pub fn poisoned(&self) -> Option<HFail> {
        match self.seg.header().failed.load(Acquire) {
            0 => None,
            c => Some((
                c,
                "the communicator failed earlier (a rank died, left, timed out, aborted it, or failed or dropped a \
                 collective)"
                    .into(),
            )),
        }
    }

    /// Fails the communicator for every rank (`HCCL_E_REMOTE`): calls in flight here and on the
    /// other ranks return within milliseconds, and later ones fail at once. For a rank that must
    /// leave while its calls may still wait (a destroy from another thread).
    pub fn abort(&self) {
        self.poison((HCCL_E_REMOTE, format!("rank {} aborted the communicator", self.rank)));
    }

    /// Marks the communicator failed for every rank (the first failure's code is kept); returns `f`.
    pub fn poison(&self, f: HFail) -> HFail {
        let _ = self.seg.header().failed.compare_exchange(0, f.0, AcqRel, Acquire);
        f
    }

    /// Posts step `st.step + 1` with an optional descriptor, waits until every rank has posted it, and
    /// checks that the descriptors agree. Returns the step number.
    pub fn step(&self, st: &mut OpState, desc: Option<&Desc>, what: &str) -> Result<u64, HFail> {
        st.step += 1;
        let s = st.step;
        let me = self.ctl(self.rank);
        if let Some(d) = desc {
            for (w, &v) in me.desc[(s % 2) as usize].iter().zip(d) {
                w.store(v, Relaxed);
            }
        }
        me.step.store(s, Release);
        self.wait(what, |_| true, || (0..self.n).all(|r| self.ctl(r).step.load(Acquire) >= s))?;
        if let Some(d) = desc {
            for r in 0..self.n {
                let theirs: Vec<u64> = self.ctl(r).desc[(s % 2) as usize].iter().map(|w| w.load(Relaxed)).collect();
                if theirs[..DESC_COMPARED] != d[..DESC_COMPARED] {
                    return Err((
                        HCCL_E_PARA,
                        format!("{what}: rank {r} called it with {:?}, rank {} with {:?} (kind, dtype, count, op, root, ...)", &theirs[..DESC_COMPARED], self.rank, &d[..DESC_COMPARED]),
                    ));
                }
            }
        }
        Ok(s)
    }

    /// Rank `r`'s descriptor word `w` at step `s`.
    pub fn desc_word(&self, r: usize, s: u64, w: usize) -> u64 {
        self.ctl(r).desc[(s % 2) as usize][w].load(Relaxed)
    }

    /// Waits until `ready()`; fails on the communicator's exec timeout, poison, or the death of a
    /// rank it waits for (`awaited`: every rank for a collective, the peers for point-to-point; a
    /// rank that left after its part is no reason to fail).
    pub fn wait(
        &self,
        what: &str,
        awaited: impl Fn(usize) -> bool,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), HFail> {
        for _ in 0..256 {
            if ready() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let start = Instant::now();
        let mut last_check = start;
        let mut nap = Duration::from_micros(1);
        loop {
            if ready() {
                return Ok(());
            }
            let now = Instant::now();
            if now - start < Duration::from_micros(500) {
                std::thread::yield_now();
                continue;
            }
            if now - last_check > Duration::from_millis(2) {
                last_check = now;
                if let Some(f) = self.poisoned() {
                    return Err(f);
                }
                let gone = (0..self.n).filter(|&r| r != self.rank && awaited(r)).find_map(|r| {
                    let Process { pid, .. } = self.procs[r];
                    match (self.ctl(r).left.load(Acquire) != 0, self.procs[r].known_dead(self.pidns)) {
                        (true, _) => Some(format!("rank {r} (pid {pid}) left the communicator")),
                        (false, true) => Some(format!("rank {r} (pid {pid}) died")),
                        _ => None,
                    }
                });
                if let Some(why) = gone {
                    // It may have posted what we wait for just before it left.
                    if ready() {
                        return Ok(());
                    }
                    return Err(self.poison((HCCL_E_TIMEOUT, format!("{what}: {why}"))));
                }
                if now - start > self.exec_timeout {
                    return Err(self.poison((
                        HCCL_E_TIMEOUT,
                        format!(
                            "{what}: peers did not arrive within HCCL_EXEC_TIMEOUT ({} s)",
                            self.exec_timeout.as_secs_f64()
                        ),
                    )));
                }
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_micros(100));
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        self.ctl(self.rank).left.store(1, Release);
        if self.seg.header().attached.fetch_sub(1, AcqRel) == 1 {
            self.unlink();
        }
        // SAFETY: unmaps our own mapping and closes our descriptor, once; no reference into the
        // mapping outlives `self`.
        unsafe {
            libc::munmap(self.seg.base as *mut libc::c_void, self.seg.len);
            libc::close(self.seg.fd);
        }
    }
}
