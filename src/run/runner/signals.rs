//! Ctrl-C and SIGTERM: stop dispatching, give requests in flight a grace period, then abandon them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::shared::Shared;
use crate::base::error::ExitStatus;

/// First Ctrl-C or SIGTERM: stop dispatching, give requests in flight `grace` to finish, then
/// abandon them; the run writes what it has. Second: leave at once (the journal is consistent:
/// every commit is atomic).
pub(super) async fn watch_signals(
    shared: Arc<Shared>,
    interrupted: Arc<AtomicBool>,
    grace: Duration,
    state: PathBuf,
) {
    for n in 0.. {
        if !wait_for_signal().await {
            return;
        }
        if n > 0 {
            shared.printer.say(format_args!(
                "\nsecond interrupt: exiting now; finished rows are saved in {}, run again with \
                 --resume",
                state.display()
            ));
            crate::engine::stdio::remove_spools();
            std::process::exit(ExitStatus::Interrupted as i32);
        }
        shared.printer.say(format_args!(
            "\ninterrupted: finishing requests in flight (up to {grace:?}); press Ctrl-C again to \
             quit now"
        ));
        interrupted.store(true, Ordering::SeqCst);
        shared.stop_with("interrupted".into());
        let abort = shared.abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            abort.cancel();
        });
    }
}

/// Waits for Ctrl-C or SIGTERM; `false` if signals cannot be watched. (`batch watch` waits with
/// it too; the run in progress sees the same signal and stops by itself after its grace.)
pub(crate) async fn wait_for_signal() -> bool {
    // From now on a signal is this caller's to handle, not the stdin copy's.
    crate::engine::stdio::SIGNALS_WATCHED.store(true, std::sync::atomic::Ordering::SeqCst);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return tokio::signal::ctrl_c().await.is_ok();
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            r = term.recv() => r.is_some(),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
