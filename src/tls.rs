//! TLS client settings shared by every link (`wss://` and `mqtts://`):
//! rustls with the ring provider passed explicitly (so nothing depends on a
//! process-wide default), Mozilla's roots plus an optional CA file, an
//! optional client certificate, and an explicit switch to skip verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What one link asks of TLS.
#[derive(Debug, Clone, Copy)]
pub struct TlsSettings<'a> {
    /// Verify the server's certificate chain and name.
    pub verify: bool,
    /// Extra trust anchors (PEM), e.g. for a self-signed server.
    pub ca_file: Option<&'a Path>,
    /// A client certificate and its key (PEM), for brokers that ask for one.
    pub client_auth: Option<(&'a Path, &'a Path)>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Builds a client configuration; `verify = false` is the caller's to log.
pub fn client_config(settings: TlsSettings<'_>) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = if settings.verify {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = settings.ca_file {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| file_error(path, e))?;
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }))
    };
    match settings.client_auth {
        Some((cert_path, key_path)) => {
            let certs = read_certs(cert_path)?;
            let key = read_key(key_path)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| file_error(cert_path, e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), message: message.to_string() }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| file_error(path, e))?
        .ok_or_else(|| file_error(path, "no PEM private key found"))
}

/// Verification switched off: any certificate is accepted; signatures are
/// still checked so the session itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_FILES: TlsSettings<'static> =
        TlsSettings { verify: true, ca_file: None, client_auth: None };

    #[test]
    fn the_default_roots_build_without_a_process_provider() {
        assert!(client_config(NO_FILES).is_ok());
    }

    #[test]
    fn skipping_verification_builds_too() {
        assert!(client_config(TlsSettings { verify: false, ..NO_FILES }).is_ok());
    }

    #[test]
    fn a_missing_ca_file_names_the_file() {
        let path = Path::new("/nonexistent/ca.pem");
        let error =
            client_config(TlsSettings { ca_file: Some(path), ..NO_FILES }).expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("scbridge-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").expect("write temp file");
        let error =
            client_config(TlsSettings { ca_file: Some(&path), ..NO_FILES }).expect_err("no cert");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(error, TlsError::File { .. }), "{error}");
    }
}
