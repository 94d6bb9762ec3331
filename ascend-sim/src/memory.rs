//! Simulated device memory and pinned host memory, tracked by address range.
//!
//! Each device owns one virtual address region of its HBM capacity, reserved on first use with
//! `MAP_NORESERVE`: it costs nothing until touched, a pointer is known to be a device pointer even
//! after it was freed, and capacity is enforced exactly. Allocations follow CANN's rules: 64-byte aligned
//! addresses, `round_up(size, 32) + 32` bytes (`aclrtMallocAlign32`: `round_up(size, 32)`).
//!
//! Pinned host memory (`aclrtMallocHost`) is carved the same way from a region of its own (the
//! size of physical memory), so a freed pinned pointer is still recognised as one and refused.
//!
//! Every access the simulator makes to device memory (copies, memsets, collectives) goes through
//! [`Memory::access`], which checks the ranges against live allocations and *pins* them until the
//! access is over. `aclrtFree` is immediate, as in CANN, and later accesses see the memory as freed;
//! but a pinned block is only returned to the allocator when its last access ends, so work already
//! running never writes into memory that was handed out again. No lock is held during an access, so a
//! collective waiting for its peers never blocks allocation.

use crate::fail::{fail, Fail, Result};
use ascend_sys::*;
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// CANN pads each allocation by this much after rounding to 32 bytes.
pub const PADDING: usize = 32;
/// Allocation address alignment.
pub const ALIGN: usize = 64;
/// Freed blocks at least this large have their pages returned to the system.
const RELEASE_THRESHOLD: usize = 1 << 20;

/// The system's page size (the unit of `madvise`).
fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1))
}

/// Bytes CANN reserves for a request of `size` bytes (`align32_only`: `aclrtMallocAlign32`).
pub fn padded_size(size: usize, align32_only: bool) -> Option<usize> {
    let rounded = size.checked_add(31)? & !31;
    if align32_only {
        Some(rounded)
    } else {
        rounded.checked_add(PADDING)
    }
}

/// Where an address lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Inside the region of logical device `n` (live or not).
    Device(usize),
    /// Inside the pinned host memory region (live or not).
    Pinned,
    /// Anywhere else: ordinary host memory the simulator cannot check.
    Host,
}

/// A live allocation.
struct Block {
    carved: usize,
    usable: usize,
    /// Accesses in progress.
    pins: u32,
    /// Freed by the user while pinned: released when the last access ends.
    freed: bool,
}

/// The live blocks of one device (or of pinned host memory).
#[derive(Default)]
struct Blocks {
    live: BTreeMap<usize, Block>,
    /// Free ranges of a device region: offset → length, coalesced.
    free: BTreeMap<usize, usize>,
    /// Usable bytes allocated (what `aclrtGetMemInfo` reports as used).
    used: usize,
    /// Resets so far (`aclFinalize`): a pin taken before one is not the new blocks' to drop.
    epoch: u64,
}

impl Blocks {
    /// The block containing `[addr, addr + len)`, if it is live and not freed.
    fn find(&mut self, addr: usize, len: usize) -> Option<(usize, &mut Block)> {
        let (&start, block) = self.live.range_mut(..=addr).next_back()?;
        let end = start + block.usable;
        let inside = addr + len <= end && (len > 0 || addr < end);
        (inside && !block.freed).then_some((start, block))
    }
}

struct Region {
    base: usize,
    len: usize,
}

/// One device's memory (or, once, the pinned host memory).
pub struct DeviceMemory {
    capacity: usize,
    region: OnceLock<std::result::Result<Region, String>>,
    blocks: Mutex<Blocks>,
}

impl DeviceMemory {
    fn new(capacity: usize) -> Self {
        DeviceMemory { capacity, region: OnceLock::new(), blocks: Mutex::default() }
    }

    fn region(&self) -> Result<&Region> {
        let r = self.region.get_or_init(|| {
            // SAFETY: an anonymous private mapping at an address of the kernel's choosing; it aliases
            // nothing, and is only released when the process exits.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    self.capacity,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                Err(format!(
                    "could not reserve {} bytes of address space for device memory: {}",
                    self.capacity,
                    std::io::Error::last_os_error()
                ))
            } else {
                // Device memory is backed by huge pages on an NPU; here they spare kernels that
                // stride through large buffers (KV caches) a TLB miss per row. Only a hint.
                #[cfg(target_os = "linux")]
                // SAFETY: advice on the mapping just made; it changes no contents.
                unsafe {
                    libc::madvise(p, self.capacity, libc::MADV_HUGEPAGE)
                };
                self.blocks.lock().unwrap().free.insert(0, self.capacity);
                Ok(Region { base: p as usize, len: self.capacity })
            }
        });
        r.as_ref().map_err(|m| Fail::new(ACL_ERROR_RT_MEMORY_ALLOCATION, m.clone()))
    }

    fn contains(&self, addr: usize) -> bool {
        matches!(self.region.get(), Some(Ok(r)) if addr >= r.base && addr - r.base < r.len)
    }

    fn alloc(&self, usable: usize) -> Result<usize> {
        let region = self.region()?;
        let carved = usable.div_ceil(ALIGN) * ALIGN;
        let mut b = self.blocks.lock().unwrap();
        let Some((&off, &len)) = b.free.iter().find(|(_, &len)| len >= carved) else {
            return fail(
                ACL_ERROR_RT_MEMORY_ALLOCATION,
                format!("out of device memory: {usable} bytes requested, {} of {} bytes in use", b.used, self.capacity),
            );
        };
        b.free.remove(&off);
        if len > carved {
            b.free.insert(off + carved, len - carved);
        }
        b.live.insert(region.base + off, Block { carved, usable, pins: 0, freed: false });
        b.used += usable;
        Ok(region.base + off)
    }

    fn free(&self, addr: usize) -> Result<()> {
        let mut b = self.blocks.lock().unwrap();
        match b.live.get_mut(&addr) {
            Some(block) if !block.freed => {
                block.freed = true;
                if block.pins == 0 {
                    self.release(&mut b, addr);
                }
                Ok(())
            }
            _ => fail(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("{addr:#x} is not the start of a live device allocation (double free, or an interior pointer)"),
            ),
        }
    }

    /// Returns a freed, unpinned block to the allocator.
    fn release(&self, b: &mut Blocks, addr: usize) {
        let (Some(Ok(region)), Some(block)) = (self.region.get(), b.live.remove(&addr)) else {
            return;
        };
        b.used -= block.usable;
        if block.carved >= RELEASE_THRESHOLD {
            // Only the whole pages inside the block: madvise rounds its length up to a page, and the
            // bytes past the block's end belong to its neighbour (which DONTNEED would zero).
            let page = page_size();
            let (start, end) = (addr.div_ceil(page) * page, (addr + block.carved) / page * page);
            if end > start {
                // SAFETY: [start, end) lies inside this block of our own mapping, which belongs to no
                // live allocation, and no access is in progress on it (it was unpinned).
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
            }
        }
        // Insert the range back and coalesce with its neighbours.
        let (mut off, mut len) = (addr - region.base, block.carved);
        if let Some((&prev, &plen)) = b.free.range(..off).next_back() {
            if prev + plen == off {
                b.free.remove(&prev);
                off = prev;
                len += plen;
            }
        }
        if let Some(nlen) = b.free.remove(&(off + len)) {
            len += nlen;
        }
        b.free.insert(off, len);
    }

    /// Frees every allocation (finalize).
    fn reset(&self) {
        if let Some(Ok(region)) = self.region.get() {
            let mut b = self.blocks.lock().unwrap();
            // SAFETY: the whole region is ours; nothing may use device memory across aclFinalize.
            unsafe { libc::madvise(region.base as *mut libc::c_void, region.len, libc::MADV_DONTNEED) };
            *b = Blocks { epoch: b.epoch + 1, ..Blocks::default() };
            b.free.insert(0, region.len);
        }
    }

    /// (free, total) bytes.
    pub fn info(&self) -> (usize, usize) {
        let used = self.blocks.lock().unwrap().used;
        (self.capacity - used.min(self.capacity), self.capacity)
    }
}

/// All simulated memory of the process.
pub struct Memory {
    devices: Vec<DeviceMemory>,
    pinned: DeviceMemory,
}

/// Bytes of physical memory (the most that can be pinned).
fn physical_memory() -> usize {
    // SAFETY: sysconf has no preconditions.
    let pages = usize::try_from(unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) }).unwrap_or(0);
    pages.saturating_mul(page_size()).max(1 << 30)
}

/// A memory range a task touches.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    /// Start address.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
    /// Written (true) or only read.
    pub write: bool,
}

/// Pins on the blocks an access touches; dropping it ends the access.
pub struct Access<'a> {
    memory: &'a Memory,
    /// (device index or `None` for pinned host memory, block start, epoch of the blocks).
    pinned: Vec<(Option<usize>, usize, u64)>,
}

impl Drop for Access<'_> {
    fn drop(&mut self) {
        for &(d, start, epoch) in &self.pinned {
            let mem = self.memory.of(d);
            let mut b = mem.blocks.lock().unwrap();
            // A reset since (a task that outlived aclFinalize): the block it pinned is gone, and one
            // at the same address now is another allocation's.
            if b.epoch != epoch {
                continue;
            }
            if let Some(block) = b.live.get_mut(&start) {
                block.pins -= 1;
                if block.pins == 0 && block.freed {
                    mem.release(&mut b, start);
                }
            }
        }
    }
}

impl Memory {
    /// Memory for `devices` logical devices of `capacity` bytes each.
    pub fn new(devices: usize, capacity: usize) -> Self {
        Memory {
            devices: (0..devices).map(|_| DeviceMemory::new(capacity)).collect(),
            pinned: DeviceMemory::new(physical_memory()),
        }
    }

    /// Device `d`'s memory, or the pinned host memory for `None`.
    fn of(&self, d: Option<usize>) -> &DeviceMemory {
        d.map_or(&self.pinned, |d| &self.devices[d])
    }

    /// One device's memory.
    pub fn device(&self, index: usize) -> &DeviceMemory {
        &self.devices[index]
    }

    /// Where `addr` lives.
    pub fn locate(&self, addr: usize) -> Location {
        if let Some(d) = self.devices.iter().position(|d| d.contains(addr)) {
            return Location::Device(d);
        }
        if self.pinned.contains(addr) {
            Location::Pinned
        } else {
            Location::Host
        }
    }

    /// `aclrtMalloc` / `aclrtMallocAlign32` on logical device `device`.
    pub fn malloc(&self, device: usize, size: usize, align32_only: bool) -> Result<usize> {
        let usable = match padded_size(size, align32_only) {
            _ if size == 0 => return fail(ACL_ERROR_INVALID_PARAM, "size is 0"),
            // CANN refuses a size whose padding overflows as a bad parameter, not as a failed allocation.
            None => return fail(ACL_ERROR_INVALID_PARAM, format!("size {size} overflows once padded")),
            Some(n) if n <= self.devices[device].capacity => n,
            Some(_) => {
                return fail(
                    ACL_ERROR_RT_MEMORY_ALLOCATION,
                    format!("{size} bytes exceed the device's {} bytes", self.devices[device].capacity),
                )
            }
        };
        self.devices[device].alloc(usable)
    }

    /// `aclrtFree`: immediate, does not wait for queued work.
    pub fn free(&self, addr: usize) -> Result<()> {
        match self.locate(addr) {
            Location::Device(d) => self.devices[d].free(addr),
            Location::Pinned => {
                fail(ACL_ERROR_RT_PARAM_INVALID, format!("{addr:#x} is pinned host memory: free it with aclrtFreeHost"))
            }
            Location::Host => fail(ACL_ERROR_RT_PARAM_INVALID, format!("{addr:#x} is not device memory")),
        }
    }

    /// `aclrtMallocHost`: pinned (here: ordinary, tracked) host memory, 64-byte aligned.
    pub fn malloc_host(&self, size: usize) -> Result<usize> {
        match size {
            0 => fail(ACL_ERROR_INVALID_PARAM, "size is 0"),
            _ if size > self.pinned.capacity => fail(
                ACL_ERROR_RT_MEMORY_ALLOCATION,
                format!("{size} bytes of pinned memory exceed the machine's {} bytes", self.pinned.capacity),
            ),
            _ => self.pinned.alloc(size).map_err(|f| Fail::new(f.code, format!("pinned host memory: {}", f.message))),
        }
    }

    /// `aclrtFreeHost`: immediate, as [`Memory::free`].
    pub fn free_host(&self, addr: usize) -> Result<()> {
        self.pinned.free(addr).map_err(|_| {
            Fail::new(ACL_ERROR_RT_PARAM_INVALID, format!("{addr:#x} is not a live aclrtMallocHost block"))
        })
    }

    /// Checks every span against the live allocations and pins their blocks until the returned
    /// [`Access`] is dropped. Host spans outside pinned blocks are not checked (the simulator cannot
    /// know their extent).
    pub fn access(&self, spans: &[Span]) -> Result<Access<'_>> {
        let mut access = Access { memory: self, pinned: Vec::with_capacity(spans.len()) };
        for s in spans {
            if s.addr.checked_add(s.len).is_none() {
                return fail(ACL_ERROR_RT_PARAM_INVALID, "address range overflows");
            }
            let what = if s.write { "destination" } else { "source" };
            let bad = |place: String| {
                fail(
                    ACL_ERROR_RT_PARAM_INVALID,
                    format!(
                        "{place} {what} range [{:#x}, +{}) is not inside one live allocation (out of range, or freed)",
                        s.addr, s.len
                    ),
                )
            };
            let (d, place) = match self.locate(s.addr) {
                Location::Device(d) => (Some(d), format!("device {d}")),
                Location::Pinned => (None, "pinned host".into()),
                Location::Host => continue,
            };
            let mut b = self.of(d).blocks.lock().unwrap();
            let Some((start, block)) = b.find(s.addr, s.len) else {
                return bad(place);
            };
            block.pins += 1;
            let epoch = b.epoch;
            access.pinned.push((d, start, epoch));
        }
        Ok(access)
    }

    /// (free, total) device memory of logical device `d`.
    pub fn info(&self, d: usize) -> (usize, usize) {
        self.devices[d].info()
    }

    /// Frees everything (aclFinalize).
    pub fn reset(&self) {
        self.devices.iter().for_each(DeviceMemory::reset);
        self.pinned.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rules() {
        assert_eq!(padded_size(1, false), Some(64));
        assert_eq!(padded_size(32, false), Some(64));
        assert_eq!(padded_size(33, false), Some(96));
        assert_eq!(padded_size(100, true), Some(128));
        assert_eq!(padded_size(usize::MAX, false), None);
    }

    #[test]
    fn freeing_a_large_block_leaves_its_neighbours_bytes_alone() {
        // A large block whose end is not on a page boundary, then a live neighbour right after it:
        // returning the large block's pages to the system must not zero the neighbour's first bytes.
        let m = Memory::new(1, 8 << 20);
        let size = (2 << 20) + 100;
        let big = m.malloc(0, size, false).unwrap();
        let next = m.malloc(0, 4096, false).unwrap();
        let carved = padded_size(size, false).unwrap().div_ceil(ALIGN) * ALIGN;
        assert_eq!(next, big + carved, "the neighbour follows directly");
        assert_ne!(next % page_size(), 0, "the case needs a neighbour that starts inside a page");
        // SAFETY: `next` is a live allocation of at least 4096 bytes in our own mapping.
        let bytes = unsafe { std::slice::from_raw_parts_mut(next as *mut u8, 4096) };
        bytes.fill(0xab);
        m.free(big).unwrap();
        assert!(bytes.iter().all(|&b| b == 0xab), "the neighbour's bytes changed");
        m.free(next).unwrap();
    }

    #[test]
    fn alloc_free_coalesce_and_capacity() {
        let m = Memory::new(1, 1 << 20);
        let a = m.malloc(0, 1000, false).unwrap();
        let b = m.malloc(0, 1000, false).unwrap();
        assert_eq!(a % ALIGN, 0);
        assert_eq!(b % ALIGN, 0);
        assert_eq!(m.locate(a), Location::Device(0));
        assert_eq!(m.info(0).0, (1 << 20) - 2 * 1056);
        m.free(a).unwrap();
        m.free(b).unwrap();
        assert_eq!(m.free(b).unwrap_err().code, ACL_ERROR_RT_PARAM_INVALID);
        // Everything coalesced: the whole capacity is one block again.
        let big = m.malloc(0, (1 << 20) - 32, false).unwrap();
        assert_eq!(m.malloc(0, 1, false).unwrap_err().code, ACL_ERROR_RT_MEMORY_ALLOCATION);
        m.free(big).unwrap();
    }

    #[test]
    fn an_access_that_outlives_a_reset_leaves_the_new_blocks_alone() {
        let m = Memory::new(1, 1 << 20);
        let a = m.malloc(0, 100, false).unwrap();
        let old = m.access(&[Span { addr: a, len: 100, write: true }]).unwrap();
        m.reset();
        // First fit from offset 0: the new allocation has the old one's address.
        let b = m.malloc(0, 100, false).unwrap();
        assert_eq!(a, b);
        let new = m.access(&[Span { addr: b, len: 100, write: false }]).unwrap();
        m.free(b).unwrap();
        drop(old); // the pre-reset pin must not count against the new block
        assert_eq!(m.info(0).0, (1 << 20) - 160, "freed while its own access is still running");
        drop(new);
        assert_eq!(m.info(0).0, 1 << 20, "released once its access ended");
    }

    #[test]
    fn access_checks_ranges() {
        let m = Memory::new(1, 1 << 20);
        let a = m.malloc(0, 100, false).unwrap(); // usable 160
        assert!(m.access(&[Span { addr: a, len: 160, write: true }]).is_ok());
        assert!(m.access(&[Span { addr: a + 10, len: 150, write: false }]).is_ok());
        assert!(m.access(&[Span { addr: a, len: 161, write: true }]).is_err());
        m.free(a).unwrap();
        assert!(m.access(&[Span { addr: a, len: 1, write: true }]).is_err());
        let h = m.malloc_host(10).unwrap();
        assert!(m.access(&[Span { addr: h, len: 10, write: true }]).is_ok());
        assert!(m.access(&[Span { addr: h, len: 11, write: true }]).is_err());
        m.free_host(h).unwrap();
        assert!(m.free_host(h).is_err());
    }

    #[test]
    fn a_block_freed_during_an_access_is_released_when_it_ends() {
        let m = Memory::new(1, 1 << 20);
        let a = m.malloc(0, 1000, false).unwrap();
        let access = m.access(&[Span { addr: a, len: 1000, write: true }]).unwrap();
        m.free(a).unwrap();
        assert!(m.access(&[Span { addr: a, len: 1, write: false }]).is_err(), "freed for new accesses");
        assert!(m.free(a).is_err(), "double free");
        assert_eq!(m.info(0).0, (1 << 20) - 1056, "still held by the running access");
        let b = m.malloc(0, 1000, false).unwrap();
        assert_ne!(a, b, "not handed out again while in use");
        drop(access);
        assert_eq!(m.info(0).0, (1 << 20) - 1056, "released once the access ended");
        m.free(b).unwrap();
    }
}
