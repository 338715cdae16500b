//! The shutdown signal: SIGTERM or SIGINT (or the process itself, on a fatal error) turns one
//! `watch` channel true, and every task holding a [`Shutdown`] sees it.
//!
//! Replaces `wait_for_signal` and the channel set-up in agent/src/cli.rs and
//! aggregator/src/cli.rs, and the shutdown-aware sleeps `sleep_or_stop`
//! (aggregator/src/consume/mod.rs) and `sleep_or_shutdown` (agent/src/pods.rs).
//!
//! Decisions:
//! - **Handlers are installed up front and a failure is an error** ([`ShutdownTrigger::on_signals`]
//!   returns it), where the copies logged and carried on: once tokio has registered one of the
//!   two signals the kernel no longer kills the process on it, so a half-installed pair could
//!   leave SIGTERM caught and ignored.
//! - **A second signal exits at once** with the conventional status (130 for SIGINT, 143 for
//!   SIGTERM), logged as `ShutdownForced`. The first asks for a graceful drain bounded by the
//!   service's own grace period; a second is an operator saying "now" (Ctrl-C twice), and
//!   Kubernetes never sends one (it escalates to SIGKILL). What a forced exit skips is what a
//!   SIGKILL would skip, and the spool, checkpoints and lake writes are built to survive that.
//! - **A dropped trigger counts as a shutdown**, so a task never waits forever on a channel
//!   nobody can fire.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The receiving side: cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side: fires the shutdown for every [`Shutdown`] at once. Clones fire the same
/// channel.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: Arc<watch::Sender<bool>>,
}

/// A new, not yet fired, shutdown channel.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx: Arc::new(tx) }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Asks every holder of a [`Shutdown`] to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Another receiver of this channel.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }

    /// Installs SIGTERM and SIGINT handlers and spawns the task that fires this trigger on the
    /// first signal and exits the process on the second (see the module docs). Fails when a
    /// handler cannot be installed; panics outside a tokio runtime, as tokio's `signal` does.
    pub fn on_signals(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        self.on_signals_with(|_| {})
    }

    /// [`ShutdownTrigger::on_signals`], calling `before_exit` when a second signal forces the
    /// exit: for what a clean stop would have undone and a forced one must not leave behind
    /// (`selfheal up` removes its `instance.json`, so nothing points at a stopped instance).
    pub fn on_signals_with(
        &self,
        before_exit: impl FnOnce(Signal) + Send + 'static,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())?;
        let int = signal(SignalKind::interrupt())?;
        let trigger = self.clone();
        Ok(tokio::spawn(async move {
            let signals = OsSignals { term, int };
            drive(signals, &trigger, |s| {
                before_exit(s);
                std::process::exit(s.exit_status())
            })
            .await;
        }))
    }
}

/// Where the signal task reads signals from: the OS, or a channel in tests.
trait Signals {
    /// The next signal; `None` once no more can come.
    fn next(&mut self) -> impl Future<Output = Option<Signal>> + Send;
}

struct OsSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals for OsSignals {
    async fn next(&mut self) -> Option<Signal> {
        tokio::select! {
            s = self.term.recv() => s.map(|()| Signal::Term),
            s = self.int.recv() => s.map(|()| Signal::Int),
        }
    }
}

/// The signals that ask for a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: what Kubernetes and systemd send.
    Term,
    /// SIGINT: Ctrl-C.
    Int,
}

impl Signal {
    /// `128 + signal number`, the status a shell reports for a process killed by it.
    pub fn exit_status(self) -> i32 {
        match self {
            Signal::Term => 128 + 15,
            Signal::Int => 128 + 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        }
    }
}

/// The signal task's logic, apart from the OS: fire on the first signal, call `force` on the
/// second. Returns if the signal streams end (the runtime is shutting down).
async fn drive(mut signals: impl Signals, trigger: &ShutdownTrigger, force: impl FnOnce(Signal)) {
    let Some(first) = signals.next().await else {
        return;
    };
    tracing::info!(signal = first.name(), "ShutdownRequested");
    trigger.trigger();
    let Some(second) = signals.next().await else {
        return;
    };
    tracing::warn!(signal = second.name(), "ShutdownForced");
    force(second);
}

impl Shutdown {
    /// Whether the shutdown was asked for (or its trigger is gone).
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Resolves once the shutdown is asked for, or at once if it already was.
    pub async fn requested(&mut self) {
        // An error means every trigger is gone: nobody can ask any more, so stop.
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// Sleeps `d`, or less if the shutdown is asked for meanwhile; true when it was (so the
    /// caller stops instead of retrying).
    pub async fn sleep(&mut self, d: Duration) -> bool {
        if self.is_requested() {
            return true;
        }
        let interrupted = tokio::select! {
            () = tokio::time::sleep(d) => false,
            () = self.requested() => true,
        };
        interrupted || self.is_requested()
    }

    /// The underlying receiver, for code that selects on a `watch::Receiver<bool>` directly
    /// (`axum::serve(..).with_graceful_shutdown`, or a module not yet moved to this type).
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }
}

impl From<watch::Receiver<bool>> for Shutdown {
    /// Wraps a receiver from an existing `watch::channel(false)`.
    fn from(rx: watch::Receiver<bool>) -> Self {
        Shutdown { rx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    impl Signals for mpsc::UnboundedReceiver<Signal> {
        async fn next(&mut self) -> Option<Signal> {
            self.recv().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_trigger_reaches_every_task() {
        let (trigger, stop) = channel();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let mut s = stop.clone();
                tokio::spawn(async move {
                    s.requested().await;
                    s.is_requested()
                })
            })
            .collect();
        let late = trigger.subscribe();
        assert!(!late.is_requested());
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.trigger();
        trigger.trigger();
        for t in tasks {
            assert!(t.await.expect("join"));
        }
        assert!(late.is_requested() && trigger.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_runs_its_course_without_a_shutdown() {
        let (_trigger, mut stop) = channel();
        let start = tokio::time::Instant::now();
        assert!(!stop.sleep(Duration::from_secs(30)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_requested_shutdown_returns_at_once_and_a_dropped_trigger_counts() {
        let (trigger, mut stop) = channel();
        trigger.trigger();
        let start = tokio::time::Instant::now();
        assert!(stop.sleep(Duration::from_secs(30)).await);
        assert_eq!(start.elapsed(), Duration::ZERO);

        let (trigger, mut orphan) = channel();
        drop(trigger);
        assert!(orphan.is_requested());
        assert!(orphan.sleep(Duration::from_secs(30)).await);
        orphan.requested().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_signal_fires_and_the_second_forces() {
        let (tx, rx) = mpsc::unbounded_channel::<Signal>();
        let (trigger, mut stop) = channel();
        let forced = Arc::new(std::sync::Mutex::new(None));
        let seen = Arc::clone(&forced);
        let driver = tokio::spawn(async move {
            drive(rx, &trigger, |s| *seen.lock().expect("lock") = Some(s)).await;
        });
        tx.send(Signal::Term).expect("send");
        stop.requested().await;
        assert_eq!(*forced.lock().expect("lock"), None, "one signal drains");
        tx.send(Signal::Int).expect("send");
        driver.await.expect("join");
        assert_eq!(*forced.lock().expect("lock"), Some(Signal::Int));
        assert_eq!(Signal::Int.exit_status(), 130);
        assert_eq!(Signal::Term.exit_status(), 143);
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_ends_quietly_when_the_signals_stop() {
        let (tx, rx) = mpsc::unbounded_channel::<Signal>();
        let (trigger, stop) = channel();
        drop(tx);
        drive(rx, &trigger, |_| panic!("never forced")).await;
        assert!(!stop.is_requested());
    }

    /// The real thing: a SIGTERM sent to this test process fires the trigger (and nothing else:
    /// the handler stays installed, so the test binary is not killed).
    #[tokio::test]
    async fn a_real_sigterm_fires_the_trigger() {
        let (trigger, mut stop) = channel();
        let task = trigger.on_signals().expect("install handlers");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), stop.requested())
            .await
            .expect("SIGTERM seen within 10 s");
        task.abort();
    }
}
