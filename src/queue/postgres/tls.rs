//! TLS to PostgreSQL: the `sslmode` and `sslrootcert` of a connection URL, read as libpq
//! reads them, and the rustls connector (`tokio-postgres-rustls`) each mode needs.
//!
//! The `postgres` crate itself knows only `disable`, `prefer` and `require`, and leaves
//! verification to the connector, so jobd takes both parameters out of the URL and builds
//! the connector here:
//! - `disable`: no TLS;
//! - `prefer` (libpq's default, and jobd's): TLS when the server offers it, unverified;
//! - `require`: TLS or no connection; unverified, unless `sslrootcert` names a CA, which
//!   then verifies the chain as `verify-ca` does (libpq's rule);
//! - `verify-ca`: the server's chain must lead to `sslrootcert` (or the system's trust
//!   store with `sslrootcert=system` or none), whatever name it carries;
//! - `verify-full`: the same, and the certificate must name the host of the URL.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_platform_verifier::BuilderVerifierExt as _;

use crate::queue::StorageError;

/// How a connection protects itself, from the URL's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A URL's TLS settings, and the URL without them, which the `postgres` crate parses.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// The CA file (`sslrootcert`); `None` with `system` or when absent.
    pub root_cert: Option<std::path::PathBuf>,
}

/// Splits `url` into the URL the client parses and its TLS settings.
pub fn split_url(url: &str) -> Result<(String, TlsSettings), String> {
    let mut parsed = url::Url::parse(url).map_err(|error| error.to_string())?;
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (name, value) in parsed.query_pairs() {
        match name.as_ref() {
            "sslmode" => {
                mode = match value.as_ref() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                        ));
                    }
                }
            }
            "sslrootcert" if value != "system" => root_cert = Some(std::path::PathBuf::from(value.as_ref())),
            "sslrootcert" => root_cert = None,
            _ => kept.push((name.into_owned(), value.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), TlsSettings { mode, root_cert }))
}

impl TlsSettings {
    /// The mode the `postgres` crate enforces: whether TLS is off, tried, or required.
    pub fn client_mode(&self) -> postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => postgres::config::SslMode::Require,
        }
    }

    /// The connector for these settings; the CA file is read here, once, at start.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StorageError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| StorageError::new(format!("cannot set up TLS to PostgreSQL: {error}")))?;
        let verifies = match self.mode {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        };
        let config = if !verifies {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified { provider }))
                .with_no_client_auth()
        } else {
            let checks_name = self.mode == SslMode::VerifyFull;
            let verifier: Arc<dyn ServerCertVerifier> = match &self.root_cert {
                Some(path) => {
                    let roots = read_roots(path)?;
                    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|error| {
                            StorageError::new(format!("sslrootcert {} cannot verify: {error}", path.display()))
                        })?
                }
                None => {
                    // The system's trust store: its CAs vouch for names, so with it
                    // verify-ca checks the name too, as verify-full does.
                    let platform = builder
                        .with_platform_verifier()
                        .map_err(|error| StorageError::new(format!("cannot read the system's trust store: {error}")))?;
                    return Ok(tokio_postgres_rustls::MakeRustlsConnect::new(platform.with_no_client_auth()));
                }
            };
            let verifier: Arc<dyn ServerCertVerifier> =
                if checks_name { verifier } else { Arc::new(AnyName { inner: verifier }) };
            builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// The certificates of a PEM file, as a trust store.
fn read_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, StorageError> {
    use rustls::pki_types::pem::PemObject as _;
    let unreadable = |error: &dyn std::fmt::Display| {
        StorageError::new(format!("cannot read sslrootcert {}: {error}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|error| unreadable(&error))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|error| unreadable(&error))?;
        roots.add(certificate).map_err(|error| unreadable(&error))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"it holds no certificate"));
    }
    Ok(roots)
}

/// `verify-ca`: the chain is checked, the name is not (libpq's meaning).
#[derive(Debug)]
struct AnyName {
    inner: Arc<dyn ServerCertVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a CA: the channel is encrypted, the server is not
/// authenticated (libpq's meaning); the handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let (url, tls) =
            split_url("postgresql://u@db:5432/q?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x")
                .expect("parses");
        assert_eq!(url, "postgresql://u@db:5432/q?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        let (url, tls) = split_url("postgresql://u@db/q").expect("parses");
        assert_eq!((url.as_str(), tls.mode), ("postgresql://u@db/q", SslMode::Prefer));
        let error = split_url("postgresql://u@db/q?sslmode=sometimes").expect_err("refused");
        assert!(error.contains("sslmode=sometimes"), "{error}");
    }
}
