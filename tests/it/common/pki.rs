//! A test PKI: a CA, and leaf certificates for localhost that it signs, for jobd's own
//! TLS listener and for the webhook receiver's.

use std::path::Path;

/// A CA and a leaf certificate for localhost signed by it, written as PEM.
pub struct TestPki {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "jobd test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = params.self_signed(&ca_key).expect("self-sign CA");
        TestPki { ca_pem: ca.pem(), issuer: rcgen::Issuer::new(params, ca_key) }
    }

    /// Writes a fresh leaf certificate and key; returns the leaf's DER.
    pub fn write_leaf(&self, cert_path: &Path, key_path: &Path) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&key, &self.issuer).expect("sign leaf");
        std::fs::write(cert_path, leaf.pem() + &self.ca_pem).expect("write cert");
        std::fs::write(key_path, key.serialize_pem()).expect("write key");
        leaf.der().to_vec()
    }

    /// A client that trusts only this CA and reports the peer certificate.
    pub fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA");
        reqwest::Client::builder().tls_certs_only([ca]).tls_info(true).build().expect("TLS client")
    }
}
