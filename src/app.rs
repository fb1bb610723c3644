//! What `scbridge run` does: start the SocketCluster link from the config,
//! subscribe the configured channels and log what arrives, until a signal.

use crate::config::Config;
use crate::sc::{Incoming, ScClient};

/// Runs until `shutdown` resolves; then closes the link cleanly.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) {
    let (client, mut incoming) = ScClient::start(config.socketcluster.clone());
    for sub in &config.subscribe {
        client.subscribe(&sub.channel, sub.wait_for_auth).await;
    }
    let mut states = client.link_state();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            message = incoming.recv() => match message {
                Some(Incoming::Publish { channel, data }) => tracing::info!(%channel, %data, "publish"),
                Some(Incoming::Event { event, data }) => tracing::info!(%event, %data, "event"),
                None => break,
            },
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                tracing::debug!(state = ?*states.borrow(), "link state");
            }
        }
    }
    tracing::info!("shutting down");
    client.shutdown().await;
}
