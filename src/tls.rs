//! HTTPS for the API listener: the rustls configuration and the certificate it serves,
//! which SIGHUP replaces without closing the listener.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate or key cannot be used. The key's content never appears.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("cannot read the private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("the private key {key} does not fit the certificate {cert}: {message}")]
    Mismatch { cert: PathBuf, key: PathBuf, message: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// The certificate in force, and where it was read from. Every new connection asks it
/// for the certificate, so a reload reaches every connection made after it, while
/// connections already open keep the session they negotiated.
#[derive(Debug)]
pub struct CertificateReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

/// One provider, named: other dependencies compile in both aws-lc-rs and ring, and
/// rustls refuses to guess between them.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl CertificateReloader {
    /// Reads the certificate chain and key; fails if either is unusable or they do not
    /// belong together.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertificateReloader, TlsError> {
        let provider = provider();
        let certified = read_certified_key(cert_path, key_path, &provider)?;
        Ok(CertificateReloader {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(certified)),
        })
    }

    /// Reads both files again. On error the certificate in force stays, so a half-copied
    /// renewal never takes the listener down.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = read_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        if let Ok(mut slot) = self.current.write() {
            *slot = Arc::new(certified);
        }
        Ok(())
    }

    /// The server configuration that serves whatever certificate is in force.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Config(error.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(config)
    }
}

impl ResolvesServerCert for CertificateReloader {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| current.clone())
    }
}

fn read_certified_key(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_error = |message: String| TlsError::Certificate { path: cert_path.to_owned(), message };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|error| cert_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| cert_error(error.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in it".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|error| TlsError::Key { path: key_path.to_owned(), message: error.to_string() })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        message: error.to_string(),
    })
}
