//! The daemon around the bridge: signals, the systemd notify protocol and
//! watchdog, reload on SIGHUP, and a bounded clean shutdown.
//!
//! READY=1 is sent once the config is loaded and the local sockets are
//! bound, never waiting for remote peers (they may be down for hours; the
//! links retry on their own). STATUS= tells the link states. WATCHDOG=1
//! comes from this loop, so a stuck runtime stops the pings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

use crate::bridge::{self, BridgeError, Running};
use crate::config::Config;
use crate::mqtt::MqttLinkState;
use crate::sc::LinkState;

/// How long a shutdown may take to send what is queued before it gives up.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(8);

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("cannot install a signal handler: {0}")]
    Signal(std::io::Error),
    #[error(
        "the router stopped unexpectedly (see the log); exiting so that the service is restarted"
    )]
    RouterEnded,
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!(error = %err, "systemd notify failed");
    }
}

/// One line for `systemctl status`.
fn status_line(running: &Running) -> String {
    let view = running.view();
    let sc = match &*view.sc.link_state().borrow() {
        LinkState::Connected { socket_id, .. } => format!("connected ({socket_id})"),
        LinkState::Connecting { .. } => "connecting".to_owned(),
        LinkState::Disconnected { reason, .. } => format!("down ({reason})"),
        LinkState::Inactive => "inactive".to_owned(),
    };
    let mut line = format!("socketcluster: {sc}");
    if let Some(mqtt) = &view.mqtt {
        let state = match &*mqtt.link_state().borrow() {
            MqttLinkState::Connected => "connected".to_owned(),
            MqttLinkState::Connecting => "connecting".to_owned(),
            MqttLinkState::Disconnected { reason, .. } => format!("down ({reason})"),
        };
        line.push_str(&format!("; mqtt: {state}"));
    }
    if let Some(osc) = &view.osc {
        let addrs: Vec<String> = osc.listen_addrs().iter().map(ToString::to_string).collect();
        if !addrs.is_empty() {
            line.push_str(&format!("; osc: {}", addrs.join(", ")));
        }
    }
    status_text(&line)
}

/// The most characters of a `STATUS=` line `systemctl status` is given.
const MAX_STATUS_CHARS: usize = 400;

/// A `STATUS=` value made safe: it holds text a server chose (its socket
/// id, a close reason), and systemd reads every line of a notification as
/// a command of its own (`WATCHDOG=trigger`). Control characters become
/// spaces, and the length is bounded.
fn status_text(line: &str) -> String {
    let mut text: String =
        line.chars().take(MAX_STATUS_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if line.chars().nth(MAX_STATUS_CHARS).is_some() {
        text.push('…');
    }
    text
}

/// How long a reload may take while the watchdog is still fed.
const RELOAD_WATCHDOG_GRACE: Duration = Duration::from_secs(60);

/// Runs the bridge until SIGTERM or SIGINT; SIGHUP reloads `config_path`.
pub async fn run(config_path: PathBuf, config: Config) -> Result<(), ServiceError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(ServiceError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServiceError::Signal)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(ServiceError::Signal)?;
    let http = config.http.clone();
    let running = bridge::start(config).await?;
    let http_stop = tokio_util::sync::CancellationToken::new();
    if let Some(http) = &http {
        crate::observe::serve(http, &running, http_stop.clone()).await?;
    }
    let mut status = status_line(&running);
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    tracing::info!(routes = running.table().routes().len(), %status, "scbridge running");

    // Half the watchdog period, as systemd recommends.
    let watchdog =
        sd_notify::watchdog_enabled().map(|period| period / 2).filter(|half| !half.is_zero());
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    let mut router_ended = false;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                // A reload may wait for a link stuck in a write or for host
                // name lookups: the watchdog is fed meanwhile, though not
                // for ever, so that a reload that hangs still ends in a
                // restart.
                let reloading = reload(&config_path, &running, http.as_ref());
                tokio::pin!(reloading);
                let grace = tokio::time::sleep(RELOAD_WATCHDOG_GRACE);
                tokio::pin!(grace);
                let mut fed = true;
                loop {
                    tokio::select! {
                        () = &mut reloading => break,
                        () = &mut grace, if fed => {
                            fed = false;
                            tracing::error!(
                                secs = RELOAD_WATCHDOG_GRACE.as_secs(),
                                "the reload is still not done: the watchdog is no longer fed"
                            );
                        }
                        _ = watchdog_tick.tick(), if watchdog.is_some() && fed => {
                            notify(&[NotifyState::Watchdog]);
                        }
                    }
                }
                // The reload's own STATUS= replaced the link line: the
                // next tick sends it again.
                status.clear();
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            _ = status_tick.tick() => {
                // A bridge whose router is gone forwards nothing: no more
                // watchdog pings for it, and an exit that systemd restarts.
                if running.is_finished() {
                    router_ended = true;
                    break;
                }
                let now = status_line(&running);
                if now != status {
                    status = now;
                    notify(&[NotifyState::Status(&status)]);
                }
            }
        }
    }
    if router_ended {
        tracing::error!("the router task ended without a stop; shutting down to be restarted");
    } else {
        tracing::info!("shutting down");
    }
    notify(&[NotifyState::Stopping]);
    http_stop.cancel();
    let sc = running.sc();
    if tokio::time::timeout(SHUTDOWN_BOUND, running.stop()).await.is_err() {
        tracing::warn!(
            bound = ?SHUTDOWN_BOUND,
            socketcluster_queued = sc.queued(),
            "shutdown took too long: exiting; what was still queued is lost"
        );
    }
    if router_ended {
        return Err(ServiceError::RouterEnded);
    }
    Ok(())
}

/// Re-reads the config; an invalid one leaves the running one in place.
async fn reload(path: &Path, running: &Running, http: Option<&crate::config::HttpConfig>) {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
    // Off the runtime thread: validation looks up OSC host names, and a slow
    // resolver must not hold up the messages flowing meanwhile.
    let owned = path.to_owned();
    let loaded = match tokio::task::spawn_blocking(move || Config::load(&owned)).await {
        Ok(loaded) => loaded,
        Err(err) => {
            tracing::error!(error = %err, "reload: reading the config failed; keeping the running config");
            notify(&[NotifyState::Ready, NotifyState::Status("reload failed")]);
            return;
        }
    };
    match loaded {
        Ok(config) => {
            if config.http.as_ref() != http {
                tracing::warn!(
                    "reload: [http] changes take effect at the next restart; the listener keeps its settings"
                );
            }
            let report = running.reload(config).await;
            tracing::info!(
                routes = report.routes,
                socketcluster_reconnected = report.socketcluster_reconnected,
                mqtt_restarted = report.mqtt_restarted,
                osc_restarted = report.osc_restarted,
                failed = ?report.failed,
                "reloaded {}",
                path.display()
            );
            let status = if report.failed.is_empty() {
                "reloaded"
            } else {
                "reloaded, but a link kept its old settings (see the log)"
            };
            notify(&[NotifyState::Ready, NotifyState::Status(status)]);
        }
        Err(err) => {
            tracing::error!(error = %err, "reload refused: keeping the running config");
            notify(&[NotifyState::Ready, NotifyState::Status("reload refused: config invalid")]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_cannot_carry_a_second_notification() {
        let text = status_text("socketcluster: connected (x\nWATCHDOG=trigger\r)");
        assert_eq!(text, "socketcluster: connected (x WATCHDOG=trigger )");
        let long = status_text(&"a".repeat(5000));
        assert_eq!(long.chars().count(), MAX_STATUS_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
