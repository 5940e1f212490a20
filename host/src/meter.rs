//! The CPU meter of an activation.
//!
//! A thread advances the engine's epoch every [`EPOCH_TICK`], and each activation's store
//! has an epoch deadline one tick ahead. An activation is charged one tick for each epoch
//! boundary that passes while it is on a CPU: running wasm, or host code working for it.
//! A boundary that passes while it is suspended (waiting in a host call for a timer, its
//! inbox, the disk or an HTTP response, or for its turn after yielding) costs it nothing,
//! so `limits.cpu_ms` bounds the CPU an agent burns, not how long it waits.
//!
//! Wasmtime only tells the store that its deadline has passed, at the guest's next epoch
//! check, and that check can come long after the boundary: right after a wait, say. So
//! the meter also watches the activation's future: each time it is polled the activation
//! is running, and each time it returns `Pending` it is suspended. A boundary is charged
//! only if it passed between the two.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::{Engine, Store, UpdateDeadline};

/// How often the epoch advances; CPU limits are rounded up to it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The CPU budget of an activation ran out.
#[derive(Debug)]
pub(crate) struct CpuLimit(u64);

impl std::fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cpu time limit: ran past {} ms (limits.cpu_ms)", self.0)
    }
}

impl std::error::Error for CpuLimit {}

/// Advances the engine's epoch, and a copy of it the meters can read, until dropped.
pub(crate) struct Ticker {
    stop: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
}

impl Ticker {
    pub(crate) fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (flag, copy) = (stop.clone(), epoch.clone());
        std::thread::Builder::new()
            .name("baton-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    // The copy first: wasmtime's epoch is never ahead of it, so a meter
                    // that reads it mid-tick errs towards charging, never towards missing
                    // a boundary the guest spent in wasm.
                    copy.fetch_add(1, Ordering::Relaxed);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        Ticker { stop, epoch }
    }

    /// A meter for one activation with a budget of `cpu_ms`.
    pub(crate) fn meter(&self, cpu_ms: u64) -> Meter {
        let now = self.epoch.load(Ordering::Relaxed);
        Meter(Arc::new(Shared {
            epoch: self.epoch.clone(),
            cpu_ms,
            resumed_at: AtomicU64::new(now),
            crossed: AtomicBool::new(false),
        }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The CPU meter of one activation; see the module documentation.
#[derive(Clone)]
pub(crate) struct Meter(Arc<Shared>);

/// What the future's wrapper and the store's deadline callback share. They never run at
/// once: the callback runs inside a poll.
struct Shared {
    /// The host's epoch, as the ticker counts it.
    epoch: Arc<AtomicU64>,
    cpu_ms: u64,
    /// The epoch when the activation last started running: a poll, or the last charge.
    resumed_at: AtomicU64,
    /// An epoch boundary passed while it ran, and is not charged yet.
    crossed: AtomicBool,
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }
}

impl Meter {
    /// Put `store` on this meter: from now on, each boundary the activation runs across
    /// costs a tick, and the one that uses up the budget ends it with [`CpuLimit`].
    pub(crate) fn install<T: 'static>(&self, store: &mut Store<T>) {
        let shared = self.0.clone();
        let budget = shared.cpu_ms.div_ceil(EPOCH_TICK.as_millis() as u64);
        let mut ticks = 0;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            let now = shared.now();
            let ran_across = shared.crossed.swap(false, Ordering::Relaxed)
                || now > shared.resumed_at.load(Ordering::Relaxed);
            shared.resumed_at.store(now, Ordering::Relaxed);
            if !ran_across {
                // The deadline passed while the activation was suspended; it has just
                // resumed, so there is no need to yield either.
                return Ok(UpdateDeadline::Continue(1));
            }
            ticks += 1;
            if ticks >= budget {
                Err(wasmtime::Error::new(CpuLimit(shared.cpu_ms)))
            } else {
                // Yield, so other activations and the wall-clock deadline get their turn.
                Ok(UpdateDeadline::Yield(1))
            }
        });
    }

    /// Run `activation` (everything that uses the store) under this meter.
    pub(crate) async fn run<F: Future>(&self, activation: F) -> F::Output {
        let shared = &self.0;
        let mut activation = pin!(activation);
        std::future::poll_fn(|cx| {
            shared.resumed_at.store(shared.now(), Ordering::Relaxed);
            let polled = activation.as_mut().poll(cx);
            if polled.is_pending() && shared.now() > shared.resumed_at.load(Ordering::Relaxed) {
                shared.crossed.store(true, Ordering::Relaxed);
            }
            polled
        })
        .await
    }
}
