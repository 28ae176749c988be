//! A bounded call loop for tests of a change under load (root rotation):
//! calls run on their own thread while the test takes its steps, and every
//! failure is kept with its call number.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Calls that went through, and the failures (`call N: why`).
#[derive(Default)]
pub struct Tally {
    pub ok: usize,
    pub failed: Vec<String>,
}

/// A loop of `call(i)`, one every `every`, stopped by [`CallLoop::stop`]
/// (or when dropped, so a failed wait ends it too), or after `max_calls`
/// or `max_time`, whichever comes first.
pub struct CallLoop<'s> {
    stop: &'s AtomicBool,
    tally: &'s Mutex<Tally>,
}

/// The shared state a [`CallLoop`] runs on (kept by the caller for the scope).
#[derive(Default)]
pub struct LoopState {
    stop: AtomicBool,
    tally: Mutex<Tally>,
}

impl LoopState {
    /// The tally, once the loop has ended.
    pub fn into_tally(self) -> Tally {
        self.tally.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl<'s> CallLoop<'s> {
    pub fn start<'e>(
        scope: &'s std::thread::Scope<'s, 'e>,
        state: &'s LoopState,
        every: Duration,
        max_calls: usize,
        max_time: Duration,
        call: impl Fn(usize) -> Result<(), String> + Send + 's,
    ) -> CallLoop<'s> {
        let (stop, tally) = (&state.stop, &state.tally);
        scope.spawn(move || {
            let deadline = Instant::now() + max_time;
            for i in 0..max_calls {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let r = call(i);
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(()) => t.ok += 1,
                    Err(e) => t.failed.push(format!("call {i}: {e}")),
                }
                drop(t);
                std::thread::sleep(every);
            }
        });
        CallLoop { stop, tally }
    }

    /// Calls that went through so far.
    pub fn ok(&self) -> usize {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).ok
    }

    /// Waits until `n` more calls have gone through than `from`, up to `timeout`.
    pub fn wait_ok(&self, from: usize, n: usize, what: &str, timeout: Duration) {
        crate::wait_until(what, timeout, || {
            let now = self.ok();
            if now >= from + n {
                Ok(())
            } else {
                Err(format!("{} calls since", now - from))
            }
        });
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for CallLoop<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}
