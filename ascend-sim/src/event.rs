//! Events: a record captures the work submitted to a stream so far; the event is complete once the
//! stream has finished that work. The record task stamps the time the stream reached it, for
//! `aclrtEventElapsedTime`, and notes whether that work failed: as CANN reports a task's error at the
//! next synchronization, synchronizing the event returns it (the status query still says complete,
//! since the work is over). A stream that waits for such an event fails too, since its later work
//! would read what the failed work did not produce: CANN documents no rule for this, and failing
//! is the safe one.

use crate::fail::{fail, Fail, Result};
use crate::stream::{Kind, StreamCore};
use ascend_sys::*;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The latest record of an event.
#[derive(Clone)]
pub struct Record {
    /// The stream it was recorded on.
    pub core: Arc<StreamCore>,
    /// The record task's sequence number on that stream.
    pub seq: u64,
    /// When the stream reached the record.
    pub stamp: Arc<OnceLock<Instant>>,
    /// The stream's sticky error when it reached the record: the captured work did not all run.
    pub failure: Arc<OnceLock<Fail>>,
}

impl Record {
    /// True once the stream has reached the record.
    pub fn complete(&self) -> bool {
        self.core.completed() >= self.seq
    }
}

/// An event as the C ABI sees it.
pub struct Event {
    /// Creation flags (`ACL_EVENT_*`).
    pub flags: u32,
    /// Created by `aclrtCreateEventExWithFlag` (an un-recorded Ex event reads complete).
    pub ex: bool,
    /// Created with a flag (`aclrtCreateEventWithFlag` / `ExWithFlag`) rather than `aclrtCreateEvent`.
    pub with_flag: bool,
    record: Mutex<Option<Record>>,
}

impl Event {
    /// A new, un-recorded event.
    pub fn new(flags: u32, ex: bool, with_flag: bool) -> Event {
        Event { flags, ex, with_flag, record: Mutex::new(None) }
    }

    /// `aclrtRecordEvent`: captures the work submitted to `core` so far (a re-record overwrites).
    pub fn record(&self, core: &Arc<StreamCore>) -> Result<()> {
        let (stamp, failure) = (Arc::new(OnceLock::new()), Arc::new(OnceLock::new()));
        let (s, f, stream) = (stamp.clone(), failure.clone(), Arc::downgrade(core));
        let seq = core.enqueue(Kind::Order, move || {
            if let Some(e) = stream.upgrade().and_then(|c| c.error()) {
                let _ = f.set(e);
            }
            let _ = s.set(Instant::now());
            Ok(())
        })?;
        *self.record.lock().unwrap() = Some(Record { core: core.clone(), seq, stamp, failure });
        Ok(())
    }

    /// Fails for an event made by `aclrtCreateEventWithFlag` without `ACL_EVENT_SYNC`, which CANN
    /// does not let streams wait on (`aclrtStreamWaitEvent`; the host may synchronize with it).
    pub fn check_waitable(&self) -> Result<()> {
        if self.with_flag && self.flags & ACL_EVENT_SYNC as u32 == 0 {
            return fail(ACL_ERROR_RT_PARAM_INVALID, "an event created without ACL_EVENT_SYNC cannot be waited on");
        }
        Ok(())
    }

    /// The latest record, if any.
    pub fn latest(&self) -> Option<Record> {
        self.record.lock().unwrap().clone()
    }

    /// `aclrtResetEvent`: back to un-recorded when `core` reaches the reset, as CANN queues it (after
    /// the waits queued before it). A record made meanwhile stays.
    pub fn reset_on(self: &Arc<Self>, core: &StreamCore) -> Result<()> {
        let recorded = self.latest().map(|r| r.stamp);
        let event = self.clone();
        core.enqueue(Kind::Order, move || {
            let mut record = event.record.lock().unwrap();
            let same = match (&*record, &recorded) {
                (Some(r), Some(then)) => Arc::ptr_eq(&r.stamp, then),
                _ => false,
            };
            if same {
                *record = None;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// `aclrtQueryEventStatus`: `ACL_EVENT_RECORDED_STATUS_COMPLETE` once the captured work is done.
    pub fn status(&self) -> i32 {
        match self.latest() {
            Some(r) if r.complete() => ACL_EVENT_RECORDED_STATUS_COMPLETE,
            Some(_) => ACL_EVENT_RECORDED_STATUS_NOT_READY,
            None if self.ex => ACL_EVENT_RECORDED_STATUS_COMPLETE,
            None => ACL_EVENT_RECORDED_STATUS_NOT_READY,
        }
    }

    /// `aclrtSynchronizeEvent(WithTimeout)`: waits for the captured work (an un-recorded event returns
    /// at once). `ACL_ERROR_RT_EVENT_SYNC_TIMEOUT` on expiry; the stream's error if a task of that
    /// work failed (the tasks after it were skipped).
    pub fn synchronize(&self, timeout: Option<Duration>) -> Result<()> {
        let Some(r) = self.latest() else { return Ok(()) };
        r.core.check_not_waiting_on_itself(r.seq)?;
        if !r.core.wait_for(r.seq, timeout) {
            return fail(
                ACL_ERROR_RT_EVENT_SYNC_TIMEOUT,
                format!("event synchronize timed out after {} ms", timeout.unwrap_or_default().as_millis()),
            );
        }
        match r.failure.get() {
            Some(f) => Err(Fail::new(f.code, format!("the work this event captured failed: {}", f.message))),
            None => Ok(()),
        }
    }
}

/// `aclrtEventElapsedTime`: milliseconds from `start`'s record to `end`'s.
pub fn elapsed_ms(start: &Event, end: &Event) -> Result<f32> {
    if [start, end].iter().any(|e| e.flags & ACL_EVENT_TIME_LINE as u32 == 0) {
        return fail(ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID, "both events must be created with ACL_EVENT_TIME_LINE");
    }
    let (Some(a), Some(b)) = (start.latest(), end.latest()) else {
        return fail(ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID, "both events must be recorded");
    };
    let (Some(ta), Some(tb)) = (a.stamp.get(), b.stamp.get()) else {
        return fail(ACL_ERROR_RT_EVENT_NOT_COMPLETE, "both events must be complete (synchronize them first)");
    };
    if tb < ta {
        return fail(ACL_ERROR_RT_EVENT_TIMESTAMP_REVERSAL, "the end event completed before the start event");
    }
    Ok((*tb - *ta).as_secs_f64() as f32 * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_after_a_failed_task_reports_the_failure_at_synchronize() {
        let s = StreamCore::start("t".into()).unwrap();
        let before = Event::new(ACL_EVENT_SYNC as u32, false, true);
        before.record(&s).unwrap();
        s.enqueue(Kind::Device, || Err(crate::fail::Fail::new(507053, "boom"))).unwrap();
        let after = Event::new(ACL_EVENT_SYNC as u32, false, true);
        after.record(&s).unwrap();
        before.synchronize(None).expect("the work before the failure ran");
        let e = after.synchronize(None).unwrap_err();
        assert_eq!(e.code, 507053);
        assert!(e.message.contains("boom"), "{}", e.message);
        assert_eq!(after.status(), ACL_EVENT_RECORDED_STATUS_COMPLETE, "the work is over");
        s.shutdown();
    }
}
