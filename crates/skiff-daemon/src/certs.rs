//! TLS certificates: from PEM files, or self-signed for a VM's domains.
//! A leaf: the proxy serves them, the manager checks a spec's files with
//! them before applying it.

use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};

/// Why a certificate cannot be had; each says which file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a PEM certificate", path.display())]
    BadCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no certificate", .0.display())]
    NoCert(PathBuf),
    #[error("{} is not a PEM private key", path.display())]
    BadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no private key", .0.display())]
    NoKey(PathBuf),
    #[error("{}: unsupported key", path.display())]
    Unsupported {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{} is not the key of the certificate in {}", key.display(), cert.display())]
    Mismatch { key: PathBuf, cert: PathBuf },
    #[error("cannot make a self-signed certificate")]
    SelfSigned(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A certified key from PEM files.
pub fn load_pem(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CertError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| CertError::BadCert {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCert(cert.to_owned()));
    }
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| CertError::BadKey {
            path: key.to_owned(),
            source,
        })?
        .ok_or_else(|| CertError::NoKey(key.to_owned()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|source| {
        CertError::Unsupported {
            path: key.to_owned(),
            source,
        }
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| CertError::Mismatch {
        key: key.to_owned(),
        cert: cert.to_owned(),
    })?;
    Ok(ck)
}

/// A self-signed certificate for `domains`.
pub fn self_signed(domains: &[String]) -> Result<CertifiedKey, CertError> {
    let made = rcgen::generate_simple_self_signed(domains.to_vec())
        .map_err(|e| CertError::SelfSigned(e.into()))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::SelfSigned(e.into()))?;
    Ok(CertifiedKey::new(vec![made.cert.der().clone()], signing))
}
