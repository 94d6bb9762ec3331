//! The collective algorithms, over the staging slots of a [`Comm`].
//!
//! Every collective proceeds in *steps*: a rank writes what its peers need into its slot for step
//! `s`, posts `s`, waits until all ranks have posted `s`, then reads the peers' slots of step `s`. A
//! slot is rewritten two steps later, once every rank has moved past, so no extra synchronisation is
//! needed. The first step of each collective carries its descriptor (kind, dtype, count, op, root):
//! ranks that disagree all fail with `HCCL_E_PARA` before any data moves.
//!
//! - all_reduce: small messages in one step (every rank reduces everything: lowest latency); large ones
//!   in chunks of two steps each (reduce-scatter of the chunk, then all-gather of the reduced parts), so
//!   each rank reduces only `1/n` of the data and the chunks stay in cache between producer and consumer.
//! - the others move each chunk in one step.
//! - point-to-point uses a mailbox per ordered pair of ranks, with its own counters.
//!
//! # Safety
//! The operations take their buffers as addresses: each must be this rank's buffer, as large as
//! the operation reads or writes, live and used by nothing else until the call returns (the C entry
//! points check them against allocations before calling).

use super::comm::{Comm, Desc, HFail, OpState, CHUNK, P2P_HALF};
use super::dtype::{reduce, DType, Op};
use ascend_sys::*;
use std::sync::atomic::Ordering::*;

/// All-reduce messages at most this large are reduced in one step by every rank.
const ONE_SHOT_BYTES: usize = 64 << 10;

/// Which collective (first descriptor word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Kind {
    /// `HcclAllReduce`.
    AllReduce = 1,
    /// `HcclBroadcast`.
    Broadcast,
    /// `HcclAllGather`.
    AllGather,
    /// `HcclReduceScatter`.
    ReduceScatter,
    /// `HcclReduce`.
    Reduce,
    /// `HcclScatter`.
    Scatter,
    /// `HcclAlltoAll`.
    AllToAll,
    /// `HcclAlltoAllV`.
    AllToAllV,
    /// `HcclBarrier`.
    Barrier,
}

fn desc(kind: Kind, t: Option<DType>, count: usize, op: Option<Op>, root: usize) -> Desc {
    [kind as u64, t.map_or(0, |t| t as u64 + 1), count as u64, op.map_or(0, |o| o as u64 + 1), root as u64, 0, 0, 0]
}

fn copy(dst: usize, src: usize, bytes: usize) {
    if bytes > 0 && dst != src {
        // SAFETY: ranges inside the callers' buffers (the unsafe operations' contract) or the
        // communicator's slots; `copy` handles overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
    }
}

/// Splits `0..len` into `n` near-equal parts; part `r`.
fn part(len: usize, n: usize, r: usize) -> (usize, usize) {
    (len * r / n, len * (r + 1) / n)
}

/// Chunks of at most `max` elements covering `0..count` (one empty chunk when `count` is 0, so that
/// every collective takes at least one step and mismatches are always detected).
fn chunks(count: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let max = max.max(1);
    let n = count.div_ceil(max).max(1);
    (0..n).map(move |i| (i * max, max.min(count - (i * max).min(count))))
}

impl Comm {
    /// This rank's operation state, once the communicator is known not to have failed: nothing
    /// runs on a poisoned communicator, whichever path (stream task or host call) starts it.
    fn begin(&self) -> Result<std::sync::MutexGuard<'_, OpState>, HFail> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match self.poisoned() {
            Some(f) => Err(f),
            None => Ok(st),
        }
    }

    /// `HcclAllReduce`: `recv = op(send of every rank)`; `send == recv` is allowed.
    ///
    /// # Safety
    /// As for every operation here: see the module's *Safety* section.
    pub unsafe fn all_reduce(&self, send: usize, recv: usize, count: usize, t: DType, op: Op) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        let (es, n, me) = (t.size(), self.n, self.rank);
        let d = desc(Kind::AllReduce, Some(t), count, Some(op), 0);
        if count * es <= ONE_SHOT_BYTES {
            let s = st.step + 1;
            copy(self.slot(me, s) as usize, send, count * es);
            self.step(st, Some(&d), "HcclAllReduce")?;
            let srcs: Vec<*const u8> = (0..n).map(|r| self.slot(r, s) as *const u8).collect();
            // SAFETY: every slot holds `count` elements (count * es <= ONE_SHOT_BYTES <= CHUNK), `recv`
            // was checked to hold them, and recv is not a slot.
            unsafe { reduce(t, op, &[recv as *mut u8], &srcs, count) };
            return Ok(());
        }
        for (i, (off, len)) in chunks(count, CHUNK / es).enumerate() {
            // Step 1: publish the parts of my input that the other ranks reduce.
            let s = st.step + 1;
            for r in (0..n).filter(|&r| r != me) {
                let (lo, hi) = part(len, n, r);
                copy(self.slot(me, s) as usize + lo * es, send + (off + lo) * es, (hi - lo) * es);
            }
            self.step(st, (i == 0).then_some(&d), "HcclAllReduce")?;
            // Reduce my part (my input in place of my slot, ranks in order) into my output and into my
            // slot of the next step, in one pass. The next-step slot is not read by anyone until we
            // post s + 1 (its previous contents, from s - 1, were consumed before step s).
            let (lo, hi) = part(len, n, me);
            let srcs: Vec<*const u8> = (0..n)
                .map(|r| {
                    if r == me {
                        (send + (off + lo) * es) as *const u8
                    } else {
                        self.slot(r, s).wrapping_add(lo * es) as *const u8
                    }
                })
                .collect();
            let dsts = [self.slot(me, s + 1).wrapping_add(lo * es), (recv + (off + lo) * es) as *mut u8];
            // SAFETY: [lo, hi) lies inside each slot's chunk and inside send/recv (checked); the
            // destinations overlap no source except recv == send (in place), which `reduce` allows.
            unsafe { reduce(t, op, &dsts, &srcs, hi - lo) };
            // Step 2: gather the other ranks' reduced parts.
            let s2 = self.step(st, None, "HcclAllReduce")?;
            for r in (0..n).filter(|&r| r != me) {
                let (lo, hi) = part(len, n, r);
                copy(recv + (off + lo) * es, self.slot(r, s2) as usize + lo * es, (hi - lo) * es);
            }
        }
        Ok(())
    }

    /// `HcclBroadcast`: every rank's `buf` becomes the root's.
    ///
    /// # Safety
    /// As for every operation here: see the module's *Safety* section.
    pub unsafe fn broadcast(&self, buf: usize, count: usize, t: DType, root: usize) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        let es = t.size();
        let d = desc(Kind::Broadcast, Some(t), count, None, root);
        for (i, (off, len)) in chunks(count, CHUNK / es).enumerate() {
            let s = st.step + 1;
            if self.rank == root {
                copy(self.slot(root, s) as usize, buf + off * es, len * es);
            }
            self.step(st, (i == 0).then_some(&d), "HcclBroadcast")?;
            if self.rank != root {
                copy(buf + off * es, self.slot(root, s) as usize, len * es);
            }
        }
        Ok(())
    }

    /// `HcclAllGather`: `recv[r * count ..]` = rank r's `send`.
    ///
    /// # Safety
    /// As for every operation here: see the module's *Safety* section.
    pub unsafe fn all_gather(&self, send: usize, recv: usize, count: usize, t: DType) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        let es = t.size();
        let d = desc(Kind::AllGather, Some(t), count, None, 0);
        for (i, (off, len)) in chunks(count, CHUNK / es).enumerate() {
            let s = st.step + 1;
            copy(self.slot(self.rank, s) as usize, send + off * es, len * es);
            self.step(st, (i == 0).then_some(&d), "HcclAllGather")?;
            for r in 0..self.n {
                copy(recv + (r * count + off) * es, self.slot(r, s) as usize, len * es);
            }
        }
        Ok(())
    }

    /// `HcclReduceScatter`: `recv` = op over ranks of their `send[rank * count ..]`.
    ///
    /// # Safety
    /// As for every operation here: see the module's *Safety* section.
    pub unsafe fn reduce_scatter(&self, send: usize, recv: usize, count: usize, t: DType, op: Op) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        let (es, n, me) = (t.size(), self.n, self.rank);
        let d = desc(Kind::ReduceScatter, Some(t), count, Some(op), 0);
        let area = CHUNK / n / es;
        for (i, (off, len)) in chunks(count, area).enumerate() {
            let s = st.step + 1;
            for r in 0..n {
                copy(self.slot(me, s) as usize + r * area * es, send + (r * count + off) * es, len * es);
            }
            self.step(st, (i == 0).then_some(&d), "HcclReduceScatter")?;
            let srcs: Vec<*const u8> =
                (0..n).map(|r| self.slot(r, s).wrapping_add(me * area * es) as *const u8).collect();
            // SAFETY: each area holds `len` elements; `recv` holds `count` (checked) and is not a slot.
            unsafe { reduce(t, op, &[(recv + off * es) as *mut u8], &srcs, len) };
        }
        Ok(())
    }

    /// `HcclReduce`: the root's `recv` = op(send of every rank); other ranks' `recv` is untouched.
    ///
    /// # Safety
    /// As for every operation here: see the module's *Safety* section.
    pub unsafe fn reduce(
        &self,
        send: usize,
        recv: usize,
        count: usize,
        t: DType,
        op: Op,
        root: usize,
    ) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        let es = t.size();
        let d = desc(Kind::Reduce, Some(t), count, Some(op), root);
        for (i, (off, len)) in chunks(count, CHUNK / es).enumerate() {
            let s = st.step + 1;
            copy(self.slot(self.rank, s) as usize, send + off * es, len * es);
            self.step(st, (i == 0).then_some(&d), "HcclReduce")?;
            if self.rank == root {
                let srcs: Vec<*const u8> = (0..self.n).map(|r| self.slot(r, s) as *const u8).collect();
                // SAFETY: each slot holds `len` elements; `recv` holds `count` and is not a slot.
                unsafe { reduce(t, op, &[(recv + off * es) as *mut u8], &srcs, len) };
            }
        }
        Ok(())
    }

    /// `HcclScatter`: `recv` = the root's `send[rank * count ..]`.
    ///
    /// # Safety
    /// As for every operation here: see the module's *Safety* section.
    pub unsafe fn scatter(&self, send: usize, recv: usize, count: usize, t: DType, root: usize) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        let (es, n) = (t.size(), self.n);
        let d = desc(Kind::Scatter, Some(t), count, None, root);
        let area = CHUNK / n / es;
        for (i, (off, len)) in chunks(count, area).enumerate() {
            let s = st.step + 1;
            if self.rank == root {
                for r in 0..n {
                    copy(self.slot(root, s) as usize + r * area * es, send + (r * count + off) * es, len * es);
                }
            }
            self.step(st, (i == 0).then_some(&d), "HcclScatter")?;
            copy(recv + off * es, self.slot(root, s) as usize + self.rank * area * es, len * es);
        }
        Ok(())
    }

    /// `HcclAlltoAll`: `recv[r * count ..]` = rank r's `send[rank * count ..]`.
    ///
    /// # Safety
    /// As for every operation here: see the module's *Safety* section.
    pub unsafe fn all_to_all(&self, send: usize, recv: usize, count: usize, t: DType) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        let (es, n, me) = (t.size(), self.n, self.rank);
        let d = desc(Kind::AllToAll, Some(t), count, None, 0);
        let area = CHUNK / n / es;
        for (i, (off, len)) in chunks(count, area).enumerate() {
            let s = st.step + 1;
            for r in 0..n {
                copy(self.slot(me, s) as usize + r * area * es, send + (r * count + off) * es, len * es);
            }
            self.step(st, (i == 0).then_some(&d), "HcclAlltoAll")?;
            for r in 0..n {
                copy(recv + (r * count + off) * es, self.slot(r, s) as usize + me * area * es, len * es);
            }
        }
        Ok(())
    }

    /// `HcclAlltoAllV`: rank r's block for this rank (`send_counts[rank]` at `sdispls[rank]` there)
    /// lands at `rdispls[r]`, and must be `recv_counts[r]` long (else every rank fails `HCCL_E_PARA`).
    #[allow(clippy::too_many_arguments)]
    ///
    /// # Safety
    /// As for every operation here: see the module's *Safety* section.
    pub unsafe fn all_to_all_v(
        &self,
        send: usize,
        scounts: &[u64],
        sdispls: &[u64],
        recv: usize,
        rcounts: &[u64],
        rdispls: &[u64],
        t: DType,
    ) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        let (es, n, me) = (t.size(), self.n, self.rank);
        // Step 1: exchange the count rows; each rank checks its column.
        let s1 = st.step + 1;
        self.set_counts(s1, scounts);
        let mut d = desc(Kind::AllToAllV, Some(t), 0, None, 0);
        self.step(st, Some(&d), "HcclAlltoAllV")?;
        let ok = (0..n).all(|r| self.count(r, s1, me) == rcounts[r]);
        let max =
            (0..n).flat_map(|r| (0..n).map(move |c| (r, c))).map(|(r, c)| self.count(r, s1, c)).max().unwrap_or(0);
        // Step 2: agree on whether every column matched.
        d[6] = ok as u64;
        let s2 = self.step(st, Some(&d), "HcclAlltoAllV")?;
        if let Some(bad) = (0..n).find(|&r| self.desc_word(r, s2, 6) == 0) {
            return Err((
                HCCL_E_PARA,
                format!("HcclAlltoAllV: rank {bad}'s receive counts differ from what its peers send"),
            ));
        }
        let area = (CHUNK / n / es) as u64;
        let rounds = max.div_ceil(area).max(1);
        for round in 0..rounds {
            let s = st.step + 1;
            let base = round * area;
            for r in 0..n {
                let len = scounts[r].saturating_sub(base).min(area) as usize;
                copy(
                    self.slot(me, s) as usize + r * area as usize * es,
                    send + (sdispls[r] + base) as usize * es,
                    len * es,
                );
            }
            self.step(st, None, "HcclAlltoAllV")?;
            for r in 0..n {
                let len = rcounts[r].saturating_sub(base).min(area) as usize;
                copy(
                    recv + (rdispls[r] + base) as usize * es,
                    self.slot(r, s) as usize + me * area as usize * es,
                    len * es,
                );
            }
        }
        Ok(())
    }

    /// `HcclBarrier`.
    pub fn barrier(&self) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        self.step(st, Some(&desc(Kind::Barrier, None, 0, None, 0)), "HcclBarrier").map(drop)
    }

    /// Point-to-point transfers, all progressing together (`HcclBatchSendRecv`; `HcclSend`/`HcclRecv`
    /// are batches of one). Transfers with the same peer and direction run in order.
    ///
    /// # Safety
    /// As for every operation here: see the module's *Safety* section.
    pub unsafe fn send_recv(&self, items: &mut [P2p]) -> Result<(), HFail> {
        let st = &mut *self.begin()?;
        loop {
            // Snapshot before polling, so that a change made while we poll is never missed.
            let before: Vec<(u64, u64)> = items.iter().map(|it| self.p2p_counters(it)).collect();
            let mut progressed = false;
            let mut pending = false;
            for i in 0..items.len() {
                if items[i].finished {
                    continue;
                }
                pending = true;
                let (peer, send) = (items[i].peer, items[i].send);
                if items[..i].iter().any(|o| !o.finished && o.peer == peer && o.send == send) {
                    continue;
                }
                progressed |= self.p2p_poll(st, &mut items[i])?;
            }
            if !pending {
                return Ok(());
            }
            if !progressed {
                let peers: Vec<usize> = items.iter().filter(|it| !it.finished).map(|it| it.peer).collect();
                self.wait(
                    "HcclSend/HcclRecv",
                    |r| peers.contains(&r),
                    || items.iter().zip(&before).any(|(it, b)| self.p2p_counters(it) != *b),
                )?;
            }
        }
    }

    fn p2p_counters(&self, it: &P2p) -> (u64, u64) {
        let p = if it.send { self.pair(self.rank, it.peer) } else { self.pair(it.peer, self.rank) };
        (p.sent.load(Acquire), p.acked.load(Acquire) + p.error.load(Acquire) as u64)
    }

    /// Moves at most one chunk of `it`; true if it did.
    fn p2p_poll(&self, st: &mut OpState, it: &mut P2p) -> Result<bool, HFail> {
        if it.send {
            let p = self.pair(self.rank, it.peer);
            if p.error.load(Acquire) != 0 {
                let f = (HCCL_E_PARA, format!("HcclSend: rank {} expected a different size or data type", it.peer));
                return Err(self.poison(f));
            }
            if it.all_sent {
                // A send completes when the receiver has taken the last chunk (synchronous pairing).
                it.finished = p.acked.load(Acquire) >= st.p2p_sent[it.peer];
                return Ok(it.finished);
            }
            let c = st.p2p_sent[it.peer] + 1;
            if p.acked.load(Acquire) + 2 < c {
                return Ok(false); // both mailbox halves are full
            }
            if c == 1 {
                self.reserve_mailbox(it.peer).map_err(|f| self.poison(f))?;
            }
            let len = (it.bytes - it.done).min(P2P_HALF);
            copy(self.mailbox(self.rank, it.peer, c) as usize, it.ptr + it.done, len);
            let h = (c % 2) as usize;
            p.len[h][0].store(len as u64, Relaxed);
            p.len[h][1].store(it.bytes as u64, Relaxed);
            p.len[h][2].store(it.t as u64, Relaxed);
            p.sent.store(c, Release);
            st.p2p_sent[it.peer] = c;
            it.done += len;
            it.all_sent = it.done == it.bytes;
        } else {
            let p = self.pair(it.peer, self.rank);
            let c = st.p2p_recv[it.peer] + 1;
            if p.sent.load(Acquire) < c {
                return Ok(false);
            }
            let h = (c % 2) as usize;
            let (len, total) = (p.len[h][0].load(Relaxed) as usize, p.len[h][1].load(Relaxed) as usize);
            let t = p.len[h][2].load(Relaxed);
            if total != it.bytes || t != it.t as u64 {
                // The pair's counters now disagree (the chunk stays unacknowledged): the communicator
                // cannot pair later transfers correctly, so it fails for every rank.
                p.error.store(1, Release);
                let theirs = DType::ALL.get(t as usize).map_or("?".into(), |d| format!("{d:?}"));
                let f = (
                    HCCL_E_PARA,
                    format!(
                        "HcclRecv: rank {} sends {total} bytes of {theirs}, this rank expects {} bytes of {:?}",
                        it.peer, it.bytes, it.t
                    ),
                );
                return Err(self.poison(f));
            }
            copy(it.ptr + it.done, self.mailbox(it.peer, self.rank, c) as usize, len);
            p.acked.store(c, Release);
            st.p2p_recv[it.peer] = c;
            it.done += len;
            it.finished = it.done == it.bytes;
        }
        Ok(true)
    }
}

/// One point-to-point transfer.
#[derive(Clone, Debug)]
pub struct P2p {
    /// The other rank.
    pub peer: usize,
    /// Send (true) or receive.
    pub send: bool,
    /// Buffer address.
    pub ptr: usize,
    /// Bytes to move.
    pub bytes: usize,
    /// Their data type: sender and receiver must agree on it, not only on the size.
    pub t: DType,
    done: usize,
    all_sent: bool,
    finished: bool,
}

impl P2p {
    /// A transfer of `count` elements of `t` at `ptr` to (send) or from `peer`. An empty transfer
    /// still exchanges one empty chunk, so that the peers stay paired.
    pub fn new(peer: usize, send: bool, ptr: usize, count: usize, t: DType) -> P2p {
        P2p { peer, send, ptr, bytes: count * t.size(), t, done: 0, all_sent: false, finished: false }
    }
}
