//! Cross-stream ordering of memory uses.
//!
//! Each buffer remembers, per stream, an event recorded after its latest use there and whether that
//! use (or an earlier one on the same stream) wrote. Before a use on stream S, S waits for the events of
//! other streams that conflict with it (any write before a read; any use before a write). This is
//! only done while the context has more than one stream, or once a stream of another context used the
//! buffer: with a single stream, the stream order already orders everything, and the bookkeeping
//! costs nothing (cudarc's lesson, cudarc#386).

use crate::context::Context;
use crate::error::Result;
use crate::event::Event;
use crate::stream::Stream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

struct Use {
    stream: usize,
    /// Shared, so that a host-side wait can hold it without removing it from the list.
    event: Arc<Event>,
    wrote: bool,
    /// The stream's context when it is not the memory's own: kept alive while its event may be
    /// used (dropping the context resets the device, which destroys its events).
    context: Option<Arc<Context>>,
}

/// An event to wait for before the memory is released, and its context when that is another one.
pub(crate) type Pending = (Arc<Event>, Option<Arc<Context>>);

/// The use history of one allocation.
pub(crate) struct Tracker {
    /// The stream that owns the allocation (its release is ordered there); `None` for pinned memory.
    home: Option<Arc<Stream>>,
    /// The context the memory belongs to (its address, for identity only): uses on its streams need
    /// no keep-alive (the memory's owner keeps it alive, and holding it from its own pending frees
    /// would keep it alive forever).
    owner: usize,
    /// Set when the home stream used the memory without recording an event (single-stream mode).
    home_untracked: AtomicBool,
    /// Set once a stream other than the home one used the memory (another context's, or another
    /// device's): the home context's stream count then says nothing about its uses.
    foreign: AtomicBool,
    uses: Mutex<Vec<Use>>,
}

impl Tracker {
    /// The tracker of memory of context `owner`, released on `home` (device memory) or not.
    pub(crate) fn new(home: Option<Arc<Stream>>, owner: &Arc<Context>) -> Tracker {
        Tracker {
            owner: Arc::as_ptr(owner) as usize,
            home,
            home_untracked: AtomicBool::new(false),
            foreign: AtomicBool::new(false),
            uses: Mutex::default(),
        }
    }

    pub(crate) fn home(&self) -> Option<&Arc<Stream>> {
        self.home.as_ref()
    }

    fn fast_path(&self, s: &Stream) -> bool {
        matches!(&self.home, Some(h) if **h == *s && !s.context().multi_stream() && !self.foreign.load(Ordering::Acquire))
    }

    /// Orders `s` after conflicting earlier uses on other streams.
    pub(crate) fn before(&self, s: &Stream, write: bool) -> Result<()> {
        if self.fast_path(s) {
            return Ok(());
        }
        let mut uses = self.uses.lock().unwrap();
        if let Some(home) = &self.home {
            if **home != *s && self.home_untracked.swap(false, Ordering::AcqRel) {
                // Work queued on the home stream before tracking began: capture it now (or leave it
                // to be captured later if that fails).
                let e = home.record_event().inspect_err(|_| self.home_untracked.store(true, Ordering::Release))?;
                let e = Arc::new(e);
                uses.retain(|u| u.stream != home.raw() as usize);
                uses.push(Use { stream: home.raw() as usize, event: e, wrote: true, context: None });
            }
        }
        for u in uses.iter() {
            if u.stream != s.raw() as usize && (write || u.wrote) {
                s.wait(&u.event)?;
            }
        }
        Ok(())
    }

    /// Records the use just enqueued on `s`.
    pub(crate) fn after(&self, s: &Stream, write: bool) -> Result<()> {
        if self.fast_path(s) {
            self.home_untracked.store(true, Ordering::Release);
            return Ok(());
        }
        if !matches!(&self.home, Some(h) if **h == *s) {
            self.foreign.store(true, Ordering::Release);
        }
        let own = Arc::as_ptr(s.context()) as usize == self.owner;
        let context = (!own).then(|| s.context().clone());
        let event = Arc::new(s.record_event()?);
        let key = s.raw() as usize;
        let mut uses = self.uses.lock().unwrap();
        let wrote_here = uses.iter().any(|u| u.stream == key && u.wrote);
        if write {
            // This write is ordered after every earlier use (before() waited for them).
            uses.clear();
        } else {
            uses.retain(|u| u.stream != key);
        }
        uses.push(Use { stream: key, event, wrote: write || wrote_here, context });
        Ok(())
    }

    /// Events that must complete before the memory may be released: every use's (the tracker is
    /// left empty, as the memory is about to go).
    pub(crate) fn take_events(&self) -> Vec<Pending> {
        self.uses.lock().unwrap().drain(..).map(|u| (u.event, u.context)).collect()
    }

    /// Blocks until host code may access the memory: every write (and, for `write`, every use) done.
    /// Fails with the stream's error when a use's work failed (a copy into the memory may not have
    /// run). The uses stay listed until their wait has succeeded, so that a concurrent reader waits
    /// too, and a failure is reported again on every later access.
    /// Inside a host task, where synchronizing is refused, uses already complete are taken as done
    /// (so a task may read memory whose copy has run; a failure there shows at the stream's sync).
    pub(crate) fn wait_host(&self, write: bool) -> Result<()> {
        let waits: Vec<Arc<Event>> =
            self.uses.lock().unwrap().iter().filter(|u| write || u.wrote).map(|u| u.event.clone()).collect();
        let mut done = Vec::new(); // dropped after `waits`: an event goes before its context
        let result = waits.iter().try_for_each(|e| {
            if !(crate::host_task::running() && e.is_complete()?) {
                e.synchronize()?;
            }
            let mut uses = self.uses.lock().unwrap();
            if let Some(i) = uses.iter().position(|u| Arc::ptr_eq(&u.event, e)) {
                done.push(uses.remove(i));
            }
            Ok(())
        });
        drop(waits);
        drop(done);
        result
    }
}
