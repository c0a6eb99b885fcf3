//! TLS certificates: from PEM files, or self-signed for a VM's domains.
//! A leaf: the proxy serves them, the manager checks a spec's files with
//! them before applying it.

use rustls::sign::CertifiedKey;
use std::path::Path;

/// A certified key from PEM files; the error says which file and why.
pub fn load_pem(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{} is not a PEM private key: {e}", key.display()))?
        .ok_or_else(|| format!("{} holds no private key", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("{}: unsupported key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| {
        format!(
            "{} is not the key of the certificate in {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(ck)
}

/// A self-signed certificate for `domains`.
pub fn self_signed(domains: &[String]) -> Result<CertifiedKey, String> {
    let made = rcgen::generate_simple_self_signed(domains.to_vec()).map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![made.cert.der().clone()], signing))
}
