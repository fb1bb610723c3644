//! OSC targets given by host name (`td-machine.local:7000`): looked up again
//! while the endpoint runs, off the runtime thread. A TouchDesigner machine
//! that is off when the bridge boots is found once it appears, and one that
//! gets a new address from DHCP is followed. A failed lookup never forgets
//! an address that worked: a resolver hiccup must not stop a show.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::OscTarget;

/// How often a name not found yet is tried again.
pub(super) const RETRY_UNRESOLVED: Duration = Duration::from_secs(2);
/// How often a found name is looked up again, to follow an address change.
pub(super) const REFRESH: Duration = Duration::from_secs(60);

/// A target's new address: (index into the targets, address).
pub(super) type Found = (usize, SocketAddr);

/// One looked-up target.
pub(super) struct Followed {
    index: usize,
    name: String,
    host: String,
    address: SocketAddr,
    /// A failure was logged since the last success (one line per outage).
    failing: bool,
    /// When to look it up next.
    next: tokio::time::Instant,
}

/// The targets that name a host, or `None` when every target is an IP address.
pub(super) fn followed(targets: &[OscTarget]) -> Option<Vec<Followed>> {
    let now = tokio::time::Instant::now();
    let named: Vec<_> = targets
        .iter()
        .enumerate()
        .filter_map(|(index, target)| {
            Some(Followed {
                index,
                host: target.host.clone()?,
                name: target.name.clone(),
                address: target.address,
                failing: false,
                next: now + wait_after(target.address),
            })
        })
        .collect();
    (!named.is_empty()).then_some(named)
}

/// Looks the names up until `shutdown`, and sends each changed address to
/// `found`. `lookup` blocks (the system resolver), so it runs on tokio's
/// blocking pool.
pub(super) async fn follow<L>(
    mut followed: Vec<Followed>,
    lookup: L,
    found: mpsc::Sender<Found>,
    shutdown: CancellationToken,
) where
    L: Fn(&str) -> Result<SocketAddr, String> + Clone + Send + 'static,
{
    loop {
        let Some(next) = followed.iter().map(|f| f.next).min() else { return };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let now = tokio::time::Instant::now();
        for target in followed.iter_mut().filter(|f| f.next <= now) {
            let host = target.host.clone();
            let lookup = lookup.clone();
            // A lookup can take the resolver's whole timeout; the stop does
            // not wait for it.
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                joined = tokio::task::spawn_blocking(move || lookup(&host)) => match joined {
                    Ok(result) => result,
                    Err(err) => Err(format!("the lookup task failed: {err}")),
                },
            };
            let changed = target.update(result);
            target.next = tokio::time::Instant::now() + wait_after(target.address);
            if changed && found.send((target.index, target.address)).await.is_err() {
                return;
            }
        }
    }
}

/// How long until an address is looked up again.
fn wait_after(address: SocketAddr) -> Duration {
    if address.ip().is_unspecified() { RETRY_UNRESOLVED } else { REFRESH }
}

impl Followed {
    /// Takes a lookup's outcome; true when the address changed.
    fn update(&mut self, result: Result<SocketAddr, String>) -> bool {
        match result {
            Ok(address) if address == self.address => {
                self.failing = false;
                false
            }
            Ok(address) => {
                tracing::info!(osc_target = %self.name, host = %self.host, %address, previous = %self.address, "OSC target found at a new address");
                self.address = address;
                self.failing = false;
                true
            }
            Err(why) => {
                if !std::mem::replace(&mut self.failing, true) {
                    if self.address.ip().is_unspecified() {
                        tracing::warn!(osc_target = %self.name, %why, "OSC target still not found; messages to it are dropped (counted)");
                    } else {
                        tracing::warn!(osc_target = %self.name, %why, address = %self.address, "OSC target lookup failed; sending to its last address");
                    }
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn named(host: &str, address: &str) -> OscTarget {
        OscTarget {
            host: Some(host.into()),
            ..OscTarget::new("td", address.parse().expect("an address"))
        }
    }

    #[test]
    fn only_targets_that_name_a_host_are_followed() {
        let fixed = OscTarget::new("fixed", "127.0.0.1:7000".parse().expect("an address"));
        assert!(followed(std::slice::from_ref(&fixed)).is_none());
        let both = [fixed, named("td.local:7000", "0.0.0.0:7000")];
        let picked = followed(&both).expect("one is followed");
        assert_eq!(picked.iter().map(|f| f.index).collect::<Vec<_>>(), [1]);
    }

    /// Not found twice, then found: the address is reported once; a later
    /// failure keeps it, and a move is reported again.
    #[tokio::test(start_paused = true)]
    async fn a_name_found_late_is_reported_and_a_failure_keeps_the_last_address() {
        let answers: Arc<Vec<Result<SocketAddr, String>>> = Arc::new(vec![
            Err("not yet".into()),
            Err("not yet".into()),
            Ok("10.0.0.5:7000".parse().expect("an address")),
            Err("resolver hiccup".into()),
            Ok("10.0.0.6:7000".parse().expect("an address")),
        ]);
        let calls = Arc::new(AtomicUsize::new(0));
        let lookup = {
            let (answers, calls) = (answers.clone(), calls.clone());
            move |_: &str| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                answers.get(n).cloned().unwrap_or_else(|| Err("done".into()))
            }
        };
        let (found_tx, mut found) = mpsc::channel(4);
        let stop = CancellationToken::new();
        let fixed = OscTarget::new("fixed", "127.0.0.1:7000".parse().expect("an address"));
        let targets = [fixed, named("td.local:7000", "0.0.0.0:7000")];
        let task = tokio::spawn(follow(
            followed(&targets).expect("one is followed"),
            lookup,
            found_tx,
            stop.clone(),
        ));
        assert_eq!(found.recv().await, Some((1, "10.0.0.5:7000".parse().expect("an address"))));
        assert_eq!(calls.load(Ordering::SeqCst), 3, "tried every RETRY_UNRESOLVED until found");
        assert_eq!(found.recv().await, Some((1, "10.0.0.6:7000".parse().expect("an address"))));
        assert_eq!(calls.load(Ordering::SeqCst), 5, "the failure in between changed nothing");
        stop.cancel();
        task.await.expect("the task ends");
    }
}
