//! Simulated device memory and pinned host memory, tracked by address range.
//!
//! Each device owns one virtual address region of its HBM capacity, reserved on first use with
//! `MAP_NORESERVE`: it costs nothing until touched, a pointer is known to be a device pointer even
//! after it was freed, and capacity is enforced exactly. Allocations follow CANN's rules: 64-byte aligned
//! addresses, `round_up(size, 32) + 32` bytes (`aclrtMallocAlign32`: `round_up(size, 32)`).
//!
//! Every access the simulator makes to device memory (copies, memsets, collectives) goes through
//! [`Memory::access`], which checks the ranges against live allocations and holds the allocation
//! tables' read locks for the duration, so a concurrent `aclrtFree` can never pull memory out from
//! under a copy.

use crate::fail::{fail, Fail, Result};
use ascend_sys::*;
use std::collections::BTreeMap;
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

/// CANN pads each allocation by this much after rounding to 32 bytes.
pub const PADDING: usize = 32;
/// Allocation address alignment.
pub const ALIGN: usize = 64;
/// Freed blocks at least this large have their pages returned to the system.
const RELEASE_THRESHOLD: usize = 1 << 20;

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
    /// Inside a live `aclrtMallocHost` block.
    Pinned,
    /// Anywhere else: ordinary host memory the simulator cannot check.
    Host,
}

struct Region {
    base: usize,
    len: usize,
}

#[derive(Default)]
struct Heap {
    /// Free ranges: offset → length, coalesced.
    free: BTreeMap<usize, usize>,
    /// Live blocks: address → (carved length, usable length).
    live: BTreeMap<usize, (usize, usize)>,
    /// Usable bytes allocated (what `aclrtGetMemInfo` reports as used).
    used: usize,
}

/// One device's memory.
pub struct DeviceMemory {
    capacity: usize,
    region: OnceLock<std::result::Result<Region, String>>,
    heap: RwLock<Heap>,
}

impl DeviceMemory {
    fn new(capacity: usize) -> Self {
        DeviceMemory {
            capacity,
            region: OnceLock::new(),
            heap: RwLock::new(Heap::default()),
        }
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
                self.heap.write().unwrap().free.insert(0, self.capacity);
                Ok(Region {
                    base: p as usize,
                    len: self.capacity,
                })
            }
        });
        r.as_ref()
            .map_err(|m| Fail::new(ACL_ERROR_RT_MEMORY_ALLOCATION, m.clone()))
    }

    fn contains(&self, addr: usize) -> bool {
        matches!(self.region.get(), Some(Ok(r)) if addr >= r.base && addr - r.base < r.len)
    }

    fn alloc(&self, usable: usize) -> Result<usize> {
        let region = self.region()?;
        let carved = usable.div_ceil(ALIGN) * ALIGN;
        let mut heap = self.heap.write().unwrap();
        let Some((&off, &len)) = heap.free.iter().find(|(_, &len)| len >= carved) else {
            return fail(
                ACL_ERROR_RT_MEMORY_ALLOCATION,
                format!(
                    "out of device memory: {usable} bytes requested, {} of {} bytes in use",
                    heap.used, self.capacity
                ),
            );
        };
        heap.free.remove(&off);
        if len > carved {
            heap.free.insert(off + carved, len - carved);
        }
        heap.live.insert(region.base + off, (carved, usable));
        heap.used += usable;
        Ok(region.base + off)
    }

    fn free(&self, addr: usize) -> Result<()> {
        let Some(Ok(region)) = self.region.get() else {
            return fail(ACL_ERROR_RT_PARAM_INVALID, "pointer was never allocated");
        };
        let mut heap = self.heap.write().unwrap();
        let Some((carved, usable)) = heap.live.remove(&addr) else {
            return fail(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("{addr:#x} is not the start of a live device allocation (double free, or an interior pointer)"),
            );
        };
        heap.used -= usable;
        if carved >= RELEASE_THRESHOLD {
            // SAFETY: the range lies inside our own mapping and no live block overlaps it; the
            // exclusive heap lock keeps every reader (copies) away while the pages are dropped.
            unsafe { libc::madvise(addr as *mut libc::c_void, carved, libc::MADV_DONTNEED) };
        }
        // Insert the range back and coalesce with its neighbours.
        let mut off = addr - region.base;
        let mut len = carved;
        if let Some((&prev, &plen)) = heap.free.range(..off).next_back() {
            if prev + plen == off {
                heap.free.remove(&prev);
                off = prev;
                len += plen;
            }
        }
        if let Some(&nlen) = heap.free.get(&(off + len)) {
            heap.free.remove(&(off + len));
            len += nlen;
        }
        heap.free.insert(off, len);
        Ok(())
    }

    /// Frees every allocation (finalize).
    fn reset(&self) {
        if let Some(Ok(region)) = self.region.get() {
            let mut heap = self.heap.write().unwrap();
            // SAFETY: the whole region is ours; no reader holds the lock.
            unsafe {
                libc::madvise(
                    region.base as *mut libc::c_void,
                    region.len,
                    libc::MADV_DONTNEED,
                )
            };
            *heap = Heap::default();
            heap.free.insert(0, region.len);
        }
    }

    /// (free, total) bytes.
    pub fn info(&self) -> (usize, usize) {
        let used = self.heap.read().unwrap().used;
        (self.capacity - used.min(self.capacity), self.capacity)
    }
}

fn check_live(
    live: &BTreeMap<usize, (usize, usize)>,
    addr: usize,
    len: usize,
    what: &str,
) -> Result<()> {
    let ok = live
        .range(..=addr)
        .next_back()
        .is_some_and(|(&start, &(_, usable))| {
            addr + len <= start + usable && (len > 0 || addr < start + usable.max(1))
        });
    if ok {
        Ok(())
    } else {
        fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!(
                "{what} range [{addr:#x}, +{len}) is not inside one live allocation (out of range, or freed)"
            ),
        )
    }
}

/// All simulated memory of the process.
pub struct Memory {
    devices: Vec<DeviceMemory>,
    /// Live pinned host blocks: address → usable length.
    pinned: RwLock<BTreeMap<usize, (usize, usize)>>,
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

/// Read locks on the allocation tables, held while the checked ranges are accessed.
pub struct Access<'a> {
    _device: Vec<RwLockReadGuard<'a, Heap>>,
    _pinned: Option<RwLockReadGuard<'a, BTreeMap<usize, (usize, usize)>>>,
}

impl Memory {
    /// Memory for `devices` logical devices of `capacity` bytes each.
    pub fn new(devices: usize, capacity: usize) -> Self {
        Memory {
            devices: (0..devices).map(|_| DeviceMemory::new(capacity)).collect(),
            pinned: RwLock::default(),
        }
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
        let pinned = self.pinned.read().unwrap();
        match pinned.range(..=addr).next_back() {
            Some((&start, &(carved, _))) if addr < start + carved => Location::Pinned,
            _ => Location::Host,
        }
    }

    /// `aclrtMalloc` / `aclrtMallocAlign32` on logical device `device`.
    pub fn malloc(&self, device: usize, size: usize, align32_only: bool) -> Result<usize> {
        let usable = match padded_size(size, align32_only) {
            Some(n) if size > 0 && n <= self.devices[device].capacity => n,
            _ if size == 0 => return fail(ACL_ERROR_INVALID_PARAM, "size is 0"),
            _ => {
                return fail(
                    ACL_ERROR_RT_MEMORY_ALLOCATION,
                    format!(
                        "{size} bytes exceed the device's {} bytes",
                        self.devices[device].capacity
                    ),
                )
            }
        };
        self.devices[device].alloc(usable)
    }

    /// `aclrtFree`: immediate, does not wait for queued work.
    pub fn free(&self, addr: usize) -> Result<()> {
        match self.locate(addr) {
            Location::Device(d) => self.devices[d].free(addr),
            Location::Pinned => fail(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("{addr:#x} is pinned host memory: free it with aclrtFreeHost"),
            ),
            Location::Host => fail(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("{addr:#x} is not device memory"),
            ),
        }
    }

    /// `aclrtMallocHost`: pinned (here: ordinary, tracked) host memory, 64-byte aligned.
    pub fn malloc_host(&self, size: usize) -> Result<usize> {
        if size == 0 {
            return fail(ACL_ERROR_INVALID_PARAM, "size is 0");
        }
        let carved = size
            .checked_next_multiple_of(ALIGN)
            .ok_or_else(|| Fail::new(ACL_ERROR_INVALID_PARAM, "size overflows"))?;
        let layout = std::alloc::Layout::from_size_align(carved, ALIGN)
            .map_err(|_| Fail::new(ACL_ERROR_INVALID_PARAM, "size overflows"))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) } as usize;
        if p == 0 {
            return fail(
                ACL_ERROR_RT_MEMORY_ALLOCATION,
                format!("host allocation of {size} bytes failed"),
            );
        }
        self.pinned.write().unwrap().insert(p, (carved, size));
        Ok(p)
    }

    /// `aclrtFreeHost`.
    pub fn free_host(&self, addr: usize) -> Result<()> {
        let mut pinned = self.pinned.write().unwrap();
        let Some((carved, _)) = pinned.remove(&addr) else {
            return fail(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("{addr:#x} is not a live aclrtMallocHost block"),
            );
        };
        // SAFETY: allocated in `malloc_host` with this exact layout, and removed from the table under
        // the write lock, so no copy is reading it and it cannot be freed twice.
        unsafe {
            std::alloc::dealloc(
                addr as *mut u8,
                std::alloc::Layout::from_size_align_unchecked(carved, ALIGN),
            )
        };
        Ok(())
    }

    /// Checks every span against the live allocations and returns the locks that keep them live.
    /// Host spans outside pinned blocks are not checked (the simulator cannot know their extent).
    pub fn access(&self, spans: &[Span]) -> Result<Access<'_>> {
        let mut devices: Vec<usize> = Vec::new();
        let mut pinned_needed = false;
        let mut located = Vec::with_capacity(spans.len());
        for s in spans {
            if s.addr.checked_add(s.len).is_none() {
                return fail(ACL_ERROR_RT_PARAM_INVALID, "address range overflows");
            }
            let loc = self.locate(s.addr);
            match loc {
                Location::Device(d) if !devices.contains(&d) => devices.push(d),
                Location::Pinned => pinned_needed = true,
                _ => {}
            }
            located.push(loc);
        }
        devices.sort_unstable(); // lock order: device index, then the pinned table
        let guards: Vec<_> = devices
            .iter()
            .map(|&d| self.devices[d].heap.read().unwrap())
            .collect();
        let pinned = pinned_needed.then(|| self.pinned.read().unwrap());
        for (s, loc) in spans.iter().zip(located) {
            let what = if s.write { "destination" } else { "source" };
            match loc {
                Location::Device(d) => {
                    let heap = &guards[devices.iter().position(|&x| x == d).unwrap()];
                    check_live(&heap.live, s.addr, s.len, &format!("device {d} {what}"))?
                }
                Location::Pinned => check_live(
                    pinned.as_ref().unwrap(),
                    s.addr,
                    s.len,
                    &format!("pinned host {what}"),
                )?,
                Location::Host => {}
            }
        }
        Ok(Access {
            _device: guards,
            _pinned: pinned,
        })
    }

    /// (free, total) device memory of logical device `d`.
    pub fn info(&self, d: usize) -> (usize, usize) {
        self.devices[d].info()
    }

    /// Frees everything (aclFinalize).
    pub fn reset(&self) {
        self.devices.iter().for_each(DeviceMemory::reset);
        let blocks: Vec<usize> = self.pinned.read().unwrap().keys().copied().collect();
        for b in blocks {
            let _ = self.free_host(b);
        }
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
        assert_eq!(
            m.malloc(0, 1, false).unwrap_err().code,
            ACL_ERROR_RT_MEMORY_ALLOCATION
        );
        m.free(big).unwrap();
    }

    #[test]
    fn access_checks_ranges() {
        let m = Memory::new(1, 1 << 20);
        let a = m.malloc(0, 100, false).unwrap(); // usable 160
        assert!(m
            .access(&[Span {
                addr: a,
                len: 160,
                write: true
            }])
            .is_ok());
        assert!(m
            .access(&[Span {
                addr: a + 10,
                len: 150,
                write: false
            }])
            .is_ok());
        assert!(m
            .access(&[Span {
                addr: a,
                len: 161,
                write: true
            }])
            .is_err());
        m.free(a).unwrap();
        assert!(m
            .access(&[Span {
                addr: a,
                len: 1,
                write: true
            }])
            .is_err());
        let h = m.malloc_host(10).unwrap();
        assert!(m
            .access(&[Span {
                addr: h,
                len: 10,
                write: true
            }])
            .is_ok());
        assert!(m
            .access(&[Span {
                addr: h,
                len: 11,
                write: true
            }])
            .is_err());
        m.free_host(h).unwrap();
        assert!(m.free_host(h).is_err());
    }
}
