//! The simulated runtime's state: initialisation count, devices, contexts, streams, events, memory,
//! and each thread's current context.
//!
//! Handles given to C are opaque numbers, never addresses: a stale or forged handle is looked up in a
//! table and rejected with an error code, and can never be dereferenced.

use crate::config::Config;
use crate::event::Event;
use crate::fail::{fail, Fail, Result};
use crate::memory::Memory;
use crate::report::Reports;
use crate::stream::{Stream, StreamCore};
use ascend_sys::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

/// A table of live objects of one kind, keyed by handle values never given twice: a destroyed or
/// made-up handle is an error, however memory is reused (C APIs of this workspace hand these out).
pub struct Registry<T> {
    map: RwLock<HashMap<usize, Arc<T>>>,
    next: AtomicUsize,
    tag: usize,
    what: &'static str,
}

impl<T> Registry<T> {
    /// An empty table; handles carry `tag` in their high bits and `what` names them in errors.
    pub fn new(tag: usize, what: &'static str) -> Self {
        Registry { map: RwLock::default(), next: AtomicUsize::new(1), tag, what }
    }

    /// Reserves a fresh handle value (never reused within a process).
    pub fn fresh(&self) -> usize {
        (self.tag << 44) | (self.next.fetch_add(1, Relaxed) << 4)
    }

    /// Registers `value` under `handle`.
    pub fn insert(&self, handle: usize, value: Arc<T>) {
        self.map.write().unwrap().insert(handle, value);
    }

    /// The live object behind `handle`, or `ACL_ERROR_RT_PARAM_INVALID`.
    pub fn get(&self, handle: usize) -> Result<Arc<T>> {
        self.map.read().unwrap().get(&handle).cloned().ok_or_else(|| {
            Fail::new(ACL_ERROR_RT_PARAM_INVALID, format!("{handle:#x} is not a live {} handle", self.what))
        })
    }

    /// Unregisters `handle`.
    pub fn remove(&self, handle: usize) -> Result<Arc<T>> {
        self.map.write().unwrap().remove(&handle).ok_or_else(|| {
            Fail::new(ACL_ERROR_RT_PARAM_INVALID, format!("{handle:#x} is not a live {} handle", self.what))
        })
    }

    /// Every live object.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.map.read().unwrap().values().cloned().collect()
    }

    fn clear(&self) -> Vec<Arc<T>> {
        self.map.write().unwrap().drain().map(|(_, v)| v).collect()
    }
}

/// A context: a device binding with its own default stream.
pub struct Context {
    /// Handle value.
    pub handle: usize,
    /// Logical device.
    pub device: usize,
    /// Created by `aclrtCreateContext` (only those can be destroyed by the user).
    pub explicit: bool,
    /// Handle of the default stream (what a NULL stream means while this context is current).
    pub default_stream: usize,
}

/// Per-device state.
pub struct Device {
    /// `aclrtSetDevice` count minus `aclrtResetDevice` count.
    pub set_count: Mutex<u32>,
    /// Handle of the default context, while the device is set.
    pub default_context: Mutex<Option<usize>>,
    /// Peers this device may access (`aclrtDeviceEnablePeerAccess`).
    pub peers: Mutex<Vec<usize>>,
}

/// The whole simulated runtime.
pub struct Runtime {
    /// Configuration read at first initialisation.
    pub config: Config,
    /// `aclInit` count (0 = not initialised).
    pub init_count: Mutex<u32>,
    /// Held by `aclFinalize` while queued work drains, so that finalisations do not overlap.
    pub finalizing: Mutex<()>,
    /// Bumped by `aclFinalize`, invalidating every thread's current context.
    pub generation: AtomicU64,
    /// Logical devices.
    pub devices: Vec<Device>,
    /// Device and pinned memory.
    pub memory: Memory,
    /// Live contexts.
    pub contexts: Registry<Context>,
    /// Live streams.
    pub streams: Registry<Stream>,
    /// Live events.
    pub events: Registry<Event>,
    /// Callback subscriptions.
    pub reports: Reports,
}

thread_local! {
    static CURRENT: RefCell<Option<(u64, usize)>> = const { RefCell::new(None) };
}

/// The process's simulated runtime (configured from the environment on first use).
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let config = Config::from_env();
        // Said once, where every user sees it (not only `ascend info`): a setting was ignored.
        for w in &config.warnings {
            eprintln!("ascend-sim: warning: {w}");
        }
        let n = config.visible.len();
        Runtime {
            memory: Memory::new(n, config.hbm_bytes),
            devices: (0..n)
                .map(|_| Device {
                    set_count: Mutex::new(0),
                    default_context: Mutex::new(None),
                    peers: Mutex::default(),
                })
                .collect(),
            config,
            init_count: Mutex::new(0),
            finalizing: Mutex::new(()),
            generation: AtomicU64::new(0),
            contexts: Registry::new(0xC7, "context"),
            streams: Registry::new(0x57, "stream"),
            events: Registry::new(0xE7, "event"),
            reports: Reports::default(),
        }
    })
}

impl Runtime {
    /// Fails with `ACL_ERROR_UNINITIALIZE` unless `aclInit` has been called.
    pub fn ensure_init(&self) -> Result<()> {
        if *self.init_count.lock().unwrap() == 0 {
            return fail(ACL_ERROR_UNINITIALIZE, "aclInit has not been called");
        }
        Ok(())
    }

    /// Validates a logical device id.
    pub fn device_index(&self, id: i32) -> Result<usize> {
        usize::try_from(id).ok().filter(|&d| d < self.devices.len()).ok_or_else(|| {
            Fail::new(
                ACL_ERROR_RT_INVALID_DEVICEID,
                format!("device {id} does not exist ({} visible devices)", self.devices.len()),
            )
        })
    }

    /// The calling thread's current context.
    pub fn current(&self) -> Result<Arc<Context>> {
        self.ensure_init()?;
        let gen = self.generation.load(Acquire);
        let handle = CURRENT.with(|c| *c.borrow()).filter(|(g, _)| *g == gen).map(|(_, h)| h);
        let Some(handle) = handle else {
            return fail(ACL_ERROR_RT_CONTEXT_NULL, "no device is set on this thread (call aclrtSetDevice first)");
        };
        self.contexts.get(handle).map_err(|_| {
            Fail::new(ACL_ERROR_RT_CONTEXT_NULL, "this thread's current context was destroyed (set a device again)")
        })
    }

    /// Makes `ctx` the calling thread's current context.
    pub fn set_current(&self, ctx: usize) {
        let gen = self.generation.load(Acquire);
        CURRENT.with(|c| *c.borrow_mut() = Some((gen, ctx)));
    }

    fn clear_current_if(&self, ctx: usize) {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if matches!(*c, Some((_, h)) if h == ctx) {
                *c = None;
            }
        });
    }

    /// Creates a context on `device` with its default stream.
    pub fn create_context(&self, device: usize, explicit: bool) -> Result<Arc<Context>> {
        let handle = self.contexts.fresh();
        let stream = self.create_stream_in(device, handle)?;
        let ctx = Arc::new(Context { handle, device, explicit, default_stream: stream.handle });
        self.contexts.insert(handle, ctx.clone());
        Ok(ctx)
    }

    /// Creates a stream in context `context` on `device`.
    pub fn create_stream_in(&self, device: usize, context: usize) -> Result<Arc<Stream>> {
        let handle = self.streams.fresh();
        let core = StreamCore::start(format!("ascend-sim-d{device}-s{:x}", handle >> 4 & 0xffff))?;
        let stream = Arc::new(Stream { handle, device, context, core });
        self.streams.insert(handle, stream.clone());
        Ok(stream)
    }

    /// Destroys a stream after its queued work has run, callbacks included (as CANN does): its
    /// subscription ends only then. When the calling thread is the stream's subscriber, it runs the
    /// callbacks delivered meanwhile itself: nobody else would, and a blocking one would hold the
    /// stream forever.
    pub fn destroy_stream(&self, handle: usize) -> Result<()> {
        let s = self.streams.remove(handle)?;
        s.core.close();
        if self.reports.subscriber(handle) == Some(crate::report::this_thread()) {
            while !s.core.idle() {
                // A timeout or another stream's callback: look again.
                let _ = self.reports.process(Some(Duration::from_millis(1)));
            }
        }
        s.core.shutdown();
        self.reports.forget_stream(handle);
        Ok(())
    }

    /// Destroys a context: its streams (after their work) and the context itself.
    pub fn destroy_context(&self, ctx: &Context) {
        for s in self.streams.all().into_iter().filter(|s| s.context == ctx.handle) {
            let _ = self.destroy_stream(s.handle);
        }
        let _ = self.contexts.remove(ctx.handle);
        self.clear_current_if(ctx.handle);
    }

    /// The stream a C call names: NULL means the current context's default stream.
    pub fn stream(&self, handle: usize) -> Result<Arc<Stream>> {
        self.ensure_init()?;
        if handle == 0 {
            let ctx = self.current()?;
            return self.streams.get(ctx.default_stream);
        }
        self.streams.get(handle)
    }

    /// `aclrtSetDevice`.
    pub fn set_device(&self, id: i32) -> Result<()> {
        self.ensure_init()?;
        let d = self.device_index(id)?;
        let dev = &self.devices[d];
        let mut count = dev.set_count.lock().unwrap();
        let mut default = dev.default_context.lock().unwrap();
        let ctx = match *default {
            Some(h) => h,
            None => {
                let h = self.create_context(d, false)?.handle;
                *default = Some(h);
                h
            }
        };
        *count += 1;
        self.set_current(ctx);
        Ok(())
    }

    /// `aclrtResetDevice`: reference counted; the last reset destroys the default context after its
    /// streams' work has run.
    pub fn reset_device(&self, id: i32) -> Result<()> {
        self.ensure_init()?;
        let d = self.device_index(id)?;
        let dev = &self.devices[d];
        let last = {
            let mut count = dev.set_count.lock().unwrap();
            if *count == 0 {
                return Ok(());
            }
            *count -= 1;
            if *count > 0 {
                return Ok(());
            }
            dev.default_context.lock().unwrap().take()
        };
        // Without the device's locks: the queued work that runs first may call the runtime itself.
        if let Some(ctx) = last.and_then(|h| self.contexts.get(h).ok()) {
            self.destroy_context(&ctx);
        }
        Ok(())
    }

    /// `aclFinalize`: everything is released (queued work runs first).
    pub fn finalize(&self) {
        for s in self.streams.clear() {
            s.core.shutdown();
        }
        self.contexts.clear();
        self.events.clear();
        self.reports.clear();
        for dev in &self.devices {
            *dev.set_count.lock().unwrap() = 0;
            *dev.default_context.lock().unwrap() = None;
            dev.peers.lock().unwrap().clear();
        }
        self.memory.reset();
        self.generation.fetch_add(1, AcqRel);
    }
}
