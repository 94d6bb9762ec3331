//! Cross-stream ordering of memory uses.
//!
//! Each buffer remembers, per stream, an event recorded after its latest use there and one recorded
//! after its latest write there. Before a use on stream S, S waits for the events of other streams
//! that conflict with it (the write before a read; any use before a write). Host access waits the same
//! way, and fails when the work of a write it waits for failed (the memory does not hold what was
//! written); a read that failed only needs to be over. This is
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
    /// Recorded after the latest use there. Shared, so that a host-side wait can hold it without
    /// removing it from the list.
    event: Arc<Event>,
    /// Recorded after the latest write there, if the stream wrote.
    wrote: Option<Arc<Event>>,
    /// The stream's host-task panic, which is its failure too (the runtime does not see it).
    panicked: Arc<Mutex<Option<String>>>,
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
                let (stream, panicked) = (home.raw() as usize, home.panic_flag());
                uses.push(Use { stream, event: e.clone(), wrote: Some(e), panicked, context: None });
            }
        }
        for u in uses.iter().filter(|u| u.stream != s.raw() as usize) {
            // A write waits for every use; a read for the write only.
            match (write, &u.wrote) {
                (true, _) => s.wait(&u.event)?,
                (false, Some(w)) => s.wait(w)?,
                (false, None) => {}
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
        let wrote_here = uses.iter().find(|u| u.stream == key).and_then(|u| u.wrote.clone());
        if write {
            // This write is ordered after every earlier use (before() waited for them).
            uses.clear();
        } else {
            uses.retain(|u| u.stream != key);
        }
        let wrote = if write { Some(event.clone()) } else { wrote_here };
        uses.push(Use { stream: key, event, wrote, panicked: s.panic_flag(), context });
        Ok(())
    }

    /// Events that must complete before the memory may be released: every use's (the tracker is
    /// left empty, as the memory is about to go).
    pub(crate) fn take_events(&self) -> Vec<Pending> {
        self.uses.lock().unwrap().drain(..).map(|u| (u.event, u.context)).collect()
    }

    /// Blocks until host code may access the memory: every write (and, for `write`, every use) done.
    /// Fails with the stream's error when the work of a write failed (a copy into the memory may not
    /// have run), or a host task of its stream panicked; uses that only read need only be over. The
    /// uses stay listed until their wait has succeeded, so that a concurrent reader waits too, and a
    /// failed write is reported again on every later access.
    /// Inside a host task, where synchronizing is refused, uses already complete are taken as done
    /// (so a task may read memory whose copy has run; a failure there shows at that copy's stream).
    pub(crate) fn wait_host(&self, write: bool) -> Result<()> {
        type Wait = (Arc<Event>, Option<Arc<Event>>, Arc<Mutex<Option<String>>>);
        let waits: Vec<Wait> = self
            .uses
            .lock()
            .unwrap()
            .iter()
            .filter(|u| write || u.wrote.is_some())
            .map(|u| (u.event.clone(), u.wrote.clone(), u.panicked.clone()))
            .collect();
        let mut done = Vec::new(); // dropped after `waits`: an event goes before its context
        let result = waits.iter().try_for_each(|(latest, wrote, panicked)| {
            if let Some(w) = wrote {
                if !(crate::host_task::running() && w.is_complete()?) {
                    w.synchronize()?;
                }
                if let Some(m) = panicked.lock().unwrap().clone() {
                    return Err(crate::Error::HostTaskPanicked(m));
                }
            }
            if write {
                latest.wait_over()?;
            }
            let mut uses = self.uses.lock().unwrap();
            if let Some(i) = uses.iter().position(|u| Arc::ptr_eq(&u.event, latest)) {
                done.push(uses.remove(i));
            }
            Ok(())
        });
        drop(waits);
        drop(done);
        result
    }
}
