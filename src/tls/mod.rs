//! TLS: the server configuration clients see ([`certificates`] chosen by SNI and reloaded,
//! [`tickets`] shared by the nodes), the client configuration for backends, and the
//! development certificate.
//!
//! One crypto provider (aws-lc-rs) for the whole build, so no code path can pick a different one.
//! aws-lc-rs rather than ring: it signs with RSA-2048 in about half the time (583 against
//! 1 087 µs here), and many providers still serve RSA certificates.
//! rustls speaks only TLS 1.2 and 1.3, and its cipher suites are all ECDHE with AEAD ciphers
//! (AES-GCM, ChaCha20-Poly1305): there is no legacy suite to switch off.

pub mod certificates;
pub mod tickets;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("cannot read private key {path}: {message}")]
    PrivateKey { path: String, message: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server's provider: the same suites, AES-128-GCM with SHA-256 first. A TLS 1.3 handshake
/// runs some thirty HMACs in its key schedule; SHA-256 has instructions of its own on current
/// CPUs where SHA-384 does not, so the handshake costs less on both sides, and AES-128 is the
/// strength that matches the X25519 and P-256 key exchange. The server picks from this order
/// (`ignore_client_order`), as most servers do.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
            _ => 2,
        });
    Arc::new(provider)
}

pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Certificate {
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The server configuration: certificates chosen per handshake by `certificates`, and
/// resumption tickets from `tickets` (none issued without).
///
/// A TLS 1.3 handshake sends one ticket; each resumption sends a fresh one, so a client that
/// reconnects all day always holds one. TLS 1.2 clients resume with tickets too, or with a
/// session id from rustls's in-memory cache.
pub fn server_config(
    certificates: Arc<certificates::Certificates>,
    tickets: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.ignore_client_order = true;
    match tickets {
        Some(tickets) => {
            config.ticketer = tickets;
            config.send_tls13_tickets = 1;
        }
        None => config.send_tls13_tickets = 0,
    }
    Ok(Arc::new(config))
}

/// Tickets under keys that rotate and never leave this process: resumption for a gateway
/// without a deployment secret key to share keys with other nodes.
pub fn local_tickets() -> Result<Arc<dyn rustls::server::ProducesTickets>, TlsError> {
    Ok(rustls::crypto::aws_lc_rs::Ticketer::new()?)
}

/// The configuration for connecting to a backend: its CA file, or the web's roots.
pub fn backend_client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Writes a self-signed certificate for `localhost` (and its DAV host names), `127.0.0.1` and
/// `::1`, and its key (mode 0600). For development and tests only: clients must be told to trust it (`--cacert`).
pub fn write_dev_certificate(certificate: &Path, private_key: &Path) -> Result<(), TlsError> {
    write_dev_certificate_for(certificate, private_key, &[])
}

/// The development certificate, also valid for `extra` names (the domains a configuration
/// serves, such as an XMPP domain, which XMPP clients check the certificate against).
pub fn write_dev_certificate_for(
    certificate: &Path,
    private_key: &Path,
    extra: &[String],
) -> Result<(), TlsError> {
    // The three DAV host names are those of the README's example routes; OpenSSL-based
    // clients do not accept `*.localhost`, so they are named one by one.
    let names = [
        "localhost",
        "webdav.localhost",
        "caldav.localhost",
        "carddav.localhost",
        "127.0.0.1",
        "::1",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain(extra.iter().cloned())
    .collect::<std::collections::BTreeSet<_>>()
    .into_iter()
    .collect::<Vec<_>>();
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    for path in [certificate, private_key] {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| TlsError::Write {
                path: parent.display().to_string(),
                source,
            })?;
        }
    }
    write_file(certificate, generated.cert.pem().as_bytes(), 0o644)?;
    write_file(
        private_key,
        generated.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(contents).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_loads_as_server_and_as_backend_ca() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c/localhost.crt");
        let key = dir.path().join("c/localhost.key");
        write_dev_certificate(&cert, &key).unwrap();
        let entry = certificates::CertificateEntry {
            chain: cert.clone(),
            private_key: key.clone(),
            names: vec![],
            default: false,
        };
        let certs = certificates::Certificates::load(vec![entry.clone()]).unwrap();
        assert!(certs.current()[0].names.contains(&"localhost".to_owned()));
        server_config(certs.clone(), None).unwrap();
        server_config(certs, Some(local_tickets().unwrap())).unwrap();
        backend_client_config(Some(&cert)).unwrap();
        backend_client_config(None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let missing = certificates::Certificates::load(vec![certificates::CertificateEntry {
            chain: dir.path().join("nope"),
            ..entry
        }])
        .unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
