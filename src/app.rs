//! What `scbridge run` does: start the bridge from the config and run it
//! until a shutdown signal, then close every link cleanly.

use crate::bridge::{self, BridgeError};
use crate::config::Config;

/// Runs until `shutdown` resolves; fails only when a local resource (an OSC
/// port, a TLS file) cannot be set up. Remote peers being down is not an
/// error: the links retry.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BridgeError> {
    let running = bridge::start(config).await?;
    tracing::info!(routes = running.table.routes().len(), "scbridge running");
    shutdown.await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
