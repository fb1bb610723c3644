//! TLS for `mqtts://`, from the shared [`crate::tls`] builder.

use rustls::ClientConfig;

use super::MqttError;
use super::config::MqttConfig;
use crate::tls::TlsSettings;

pub(crate) fn client_config(config: &MqttConfig) -> Result<ClientConfig, MqttError> {
    if !config.verify_tls {
        tracing::warn!(host = %config.host, "mqtt: verify_tls is off: any server certificate is accepted");
    }
    let client_auth = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    crate::tls::client_config(TlsSettings {
        verify: config.verify_tls,
        ca_file: config.ca_file.as_deref(),
        client_auth,
    })
    .map_err(|e| MqttError::Tls(e.to_string()))
}
