//! The certificates the gateway shows: several, chosen per handshake by the name the client
//! asked for (SNI) and the signature algorithms it can check, and reloaded when their files
//! change or on SIGHUP.
//!
//! A hosting provider serves `mail.shop.example` and `mail.example.org` from one address, each
//! with its own certificate, and may hold an ECDSA and an RSA certificate for one name (ECDSA
//! is cheaper to sign with; RSA is for the clients that cannot check anything else). The
//! choice is a pure function, [`choose`], so its rules are tested without a handshake.
//!
//! Reloading replaces one certificate at a time: a file that does not load (half-written, a key
//! that does not match its certificate) keeps that certificate's previous version and is
//! logged, and open sessions never notice, because a handshake copies what it chose.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, SignatureAlgorithm, SignatureScheme};

use super::TlsError;

/// One certificate as configured: `[[tls.certificate]]`, or the single `[tls] certificate`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    /// PEM certificate chain, the server's certificate first.
    pub chain: PathBuf,
    /// PEM private key.
    pub private_key: PathBuf,
    /// Host names it is shown for (`*.example.org` matches one label); empty: the DNS names
    /// the certificate itself carries.
    #[serde(default)]
    pub names: Vec<String>,
    /// Shown to clients that name no host or one no certificate has. Without any entry marked,
    /// the first entry is the default.
    #[serde(default)]
    pub default: bool,
}

/// A loaded certificate with what the choice needs.
#[derive(Debug)]
pub struct Slot {
    pub key: Arc<CertifiedKey>,
    /// Lower-case host names, wildcards as `*.rest`.
    pub names: Vec<String>,
    pub default: bool,
}

impl Slot {
    fn matches_exactly(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    fn matches_wildcard(&self, name: &str) -> bool {
        let Some((label, rest)) = name.split_once('.') else {
            return false;
        };
        !label.is_empty()
            && self
                .names
                .iter()
                .any(|n| n.strip_prefix("*.").is_some_and(|n| n == rest))
    }

    /// Whether a client offering these signature schemes and cipher suites can use it. A
    /// TLS 1.2-only client also needs a suite of the key's kind (ECDHE-ECDSA or ECDHE-RSA).
    fn usable(&self, schemes: &[SignatureScheme], suites: &[CipherSuite]) -> bool {
        let algorithm = self.key.key.algorithm();
        let scheme_fits = schemes
            .iter()
            .any(|s| scheme_algorithm(*s) == Some(algorithm));
        let tls13 = suites.iter().any(|s| TLS13_SUITES.contains(s));
        let suite_fits = tls13
            || match algorithm {
                SignatureAlgorithm::ECDSA => suites.iter().any(|s| ECDSA_SUITES.contains(s)),
                SignatureAlgorithm::RSA => suites.iter().any(|s| RSA_SUITES.contains(s)),
                _ => false,
            };
        scheme_fits && suite_fits
    }
}

const TLS13_SUITES: &[CipherSuite] = &[
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];
const ECDSA_SUITES: &[CipherSuite] = &[
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];
const RSA_SUITES: &[CipherSuite] = &[
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

fn scheme_algorithm(scheme: SignatureScheme) -> Option<SignatureAlgorithm> {
    use SignatureScheme as S;
    match scheme {
        S::ECDSA_NISTP256_SHA256 | S::ECDSA_NISTP384_SHA384 | S::ECDSA_NISTP521_SHA512 => {
            Some(SignatureAlgorithm::ECDSA)
        }
        S::RSA_PSS_SHA256
        | S::RSA_PSS_SHA384
        | S::RSA_PSS_SHA512
        | S::RSA_PKCS1_SHA256
        | S::RSA_PKCS1_SHA384
        | S::RSA_PKCS1_SHA512 => Some(SignatureAlgorithm::RSA),
        S::ED25519 => Some(SignatureAlgorithm::ED25519),
        _ => None,
    }
}

/// The certificate for a client that asked for `server_name` and offers `schemes` and
/// `suites`: the certificates for that name (exact names before wildcards), else the defaults;
/// among them the first the client can use, ECDSA before RSA (cheaper to sign). If it can use
/// none, the first anyway, and the handshake fails as it would with one certificate.
pub fn choose<'a>(
    slots: &'a [Slot],
    server_name: Option<&str>,
    schemes: &[SignatureScheme],
    suites: &[CipherSuite],
) -> Option<&'a Arc<CertifiedKey>> {
    let name = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let pick = |filter: &dyn Fn(&Slot) -> bool| -> Vec<&'a Slot> {
        slots.iter().filter(|s| filter(s)).collect()
    };
    let mut group = Vec::new();
    if let Some(name) = &name {
        group = pick(&|s| s.matches_exactly(name));
        if group.is_empty() {
            group = pick(&|s| s.matches_wildcard(name));
        }
    }
    if group.is_empty() {
        group = pick(&|s| s.default);
    }
    if group.is_empty() {
        group = slots.iter().take(1).collect();
    }
    // Stable: configuration order within one algorithm.
    group.sort_by_key(|s| s.key.key.algorithm() != SignatureAlgorithm::ECDSA);
    group
        .iter()
        .find(|s| s.usable(schemes, suites))
        .or(group.first())
        .map(|s| &s.key)
}

/// Identifies a file's content without reading it: a renewal that writes new files or moves a
/// symlink changes the inode, one that rewrites in place changes the time or size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, i64, i64, u64)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len())),
        )
    }
}

/// Loads one entry: the chain, the key, the check that they belong together, the names.
pub fn load(entry: &CertificateEntry) -> Result<Slot, TlsError> {
    let chain = super::load_certs(&entry.chain)?;
    let key_error = |message: String| TlsError::PrivateKey {
        path: entry.private_key.display().to_string(),
        message,
    };
    let der =
        PrivateKeyDer::from_pem_file(&entry.private_key).map_err(|e| key_error(e.to_string()))?;
    let names = if entry.names.is_empty() {
        names_in(&chain[0]).map_err(|message| TlsError::Certificate {
            path: entry.chain.display().to_string(),
            message,
        })?
    } else {
        entry.names.iter().map(|n| n.to_ascii_lowercase()).collect()
    };
    let key = CertifiedKey::from_der(chain, der, &super::provider()).map_err(|e| {
        key_error(format!(
            "does not fit the certificate {}: {e}",
            entry.chain.display()
        ))
    })?;
    Ok(Slot {
        key: Arc::new(key),
        names,
        default: entry.default,
    })
}

/// The DNS names a certificate is valid for.
fn names_in(cert: &rustls::pki_types::CertificateDer<'_>) -> Result<Vec<String>, String> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
    let names: Vec<String> = parsed
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    if names.is_empty() {
        return Err(
            "the certificate names no DNS host; give `names` in its [[tls.certificate]]".into(),
        );
    }
    Ok(names)
}

/// The certificates in use, swapped as a whole when one is reloaded.
#[derive(Debug)]
pub struct Certificates {
    entries: Vec<CertificateEntry>,
    current: RwLock<Arc<Vec<Slot>>>,
    stamps: Mutex<Vec<(Stamp, Stamp)>>,
}

impl Certificates {
    /// Loads every entry; any that fails stops the start.
    pub fn load(entries: Vec<CertificateEntry>) -> Result<Arc<Self>, TlsError> {
        if entries.is_empty() {
            return Err(TlsError::Certificate {
                path: "[tls]".into(),
                message: "no certificate configured".into(),
            });
        }
        let stamps = entries
            .iter()
            .map(|e| (Stamp::of(&e.chain), Stamp::of(&e.private_key)))
            .collect();
        let mut slots = entries.iter().map(load).collect::<Result<Vec<_>, _>>()?;
        if !slots.iter().any(|s| s.default) {
            slots[0].default = true;
        }
        Ok(Arc::new(Certificates {
            entries,
            current: RwLock::new(Arc::new(slots)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The certificates in use now.
    pub fn current(&self) -> Arc<Vec<Slot>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads the entries whose files changed since they were last read (all of them when
    /// `forced`, as on SIGHUP). An entry that fails keeps its previous certificate. Returns how
    /// many were replaced.
    pub fn reload(&self, forced: bool) -> usize {
        let mut stamps = match self.stamps.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut slots: Option<Vec<Slot>> = None;
        let mut replaced = 0;
        for (i, entry) in self.entries.iter().enumerate() {
            let now = (Stamp::of(&entry.chain), Stamp::of(&entry.private_key));
            if !forced && now == stamps[i] {
                continue;
            }
            stamps[i] = now;
            match load(entry) {
                Ok(mut slot) => {
                    let slots = slots.get_or_insert_with(|| {
                        self.current()
                            .iter()
                            .map(|s| Slot {
                                key: s.key.clone(),
                                names: s.names.clone(),
                                default: s.default,
                            })
                            .collect()
                    });
                    slot.default = slots[i].default;
                    if slots[i].key.cert != slot.key.cert || slots[i].names != slot.names {
                        tracing::info!(
                            certificate = %entry.chain.display(),
                            names = %slot.names.join(","),
                            "certificate reloaded"
                        );
                        replaced += 1;
                    }
                    slots[i] = slot;
                }
                Err(e) => tracing::warn!(
                    certificate = %entry.chain.display(),
                    "keeping the previous certificate: {e}"
                ),
            }
        }
        if let Some(slots) = slots {
            match self.current.write() {
                Ok(mut guard) => *guard = Arc::new(slots),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(slots),
            }
        }
        replaced
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let slots = self.current();
        choose(
            &slots,
            hello.server_name(),
            hello.signature_schemes(),
            hello.cipher_suites(),
        )
        .cloned()
    }
}

/// Reloads changed certificates every `every` (never if zero) and all of them on SIGHUP,
/// until `shutdown`.
pub async fn watch(
    certificates: Arc<Certificates>,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::warn!(
                "cannot listen for SIGHUP, certificates reload only when files change: {e}"
            );
            None
        }
    };
    let mut tick = (!every.is_zero()).then(|| {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => None } } => true,
            _ = async { match &mut tick { Some(t) => t.tick().await, None => std::future::pending().await } } => false,
        };
        if forced {
            tracing::info!("SIGHUP: reloading certificates");
        }
        let certificates = certificates.clone();
        // File reads and key parsing block; keep them off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || certificates.reload(forced)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(names: &[&str], ecdsa: bool, default: bool) -> Slot {
        let name = names
            .first()
            .copied()
            .unwrap_or("x.test")
            .trim_start_matches("*.");
        let key = if ecdsa {
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
        } else {
            // ring cannot generate RSA keys; this one was made by `openssl genrsa 2048`.
            rcgen::KeyPair::from_pem(RSA_KEY).unwrap()
        };
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let key = CertifiedKey::from_der(vec![cert.der().clone()], der, &super::super::provider())
            .unwrap();
        Slot {
            key: Arc::new(key),
            names: names.iter().map(|n| n.to_string()).collect(),
            default,
        }
    }

    const RSA_KEY: &str = include_str!("testdata/rsa2048.key");

    const BOTH_SCHEMES: &[SignatureScheme] = &[
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::RSA_PSS_SHA256,
    ];
    const RSA_ONLY: &[SignatureScheme] = &[SignatureScheme::RSA_PSS_SHA256];
    const TLS13: &[CipherSuite] = &[CipherSuite::TLS13_AES_128_GCM_SHA256];

    fn which(slots: &[Slot], chosen: Option<&Arc<CertifiedKey>>) -> usize {
        let chosen = chosen.expect("a certificate");
        slots
            .iter()
            .position(|s| Arc::ptr_eq(&s.key, chosen))
            .unwrap()
    }

    #[test]
    fn chooses_by_name_then_wildcard_then_default() {
        let slots = vec![
            slot(&["mail.shop.example"], true, false),
            slot(&["*.example.org"], true, false),
            slot(&["mail.example.org"], true, false),
            slot(&["fallback.test"], true, true),
        ];
        let pick = |name| which(&slots, choose(&slots, name, BOTH_SCHEMES, TLS13));
        assert_eq!(pick(Some("mail.shop.example")), 0);
        assert_eq!(pick(Some("MAIL.Shop.Example.")), 0, "case and a final dot");
        assert_eq!(pick(Some("mail.example.org")), 2, "exact before wildcard");
        assert_eq!(pick(Some("imap.example.org")), 1);
        assert_eq!(pick(Some("a.b.example.org")), 3, "a wildcard is one label");
        assert_eq!(pick(Some("example.org")), 3);
        assert_eq!(pick(Some("unknown.test")), 3);
        assert_eq!(pick(None), 3);
    }

    #[test]
    fn prefers_ecdsa_and_falls_back_to_rsa_for_clients_that_need_it() {
        let slots = vec![
            slot(&["mail.test"], false, true),
            slot(&["mail.test"], true, true),
        ];
        let pick =
            |schemes, suites| which(&slots, choose(&slots, Some("mail.test"), schemes, suites));
        assert_eq!(
            pick(BOTH_SCHEMES, TLS13),
            1,
            "ECDSA when the client can check it"
        );
        assert_eq!(pick(RSA_ONLY, TLS13), 0);
        // A TLS 1.2 client that offers ECDSA signatures but only ECDHE-RSA suites.
        let rsa_suites = &[CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256];
        assert_eq!(pick(BOTH_SCHEMES, rsa_suites), 0);
        let ecdsa_suites = &[CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256];
        assert_eq!(pick(BOTH_SCHEMES, ecdsa_suites), 1);
        // Nothing fits: the first of the group, and the handshake fails as with one certificate.
        assert_eq!(pick(&[SignatureScheme::ED25519], TLS13), 1);
    }

    #[test]
    fn reload_replaces_a_changed_certificate_and_keeps_the_old_one_when_the_new_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let write = |name: &str| {
            let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
            (made.cert.pem(), made.signing_key.serialize_pem())
        };
        let (c1, k1) = write("one.test");
        std::fs::write(&chain, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let certs = Certificates::load(vec![CertificateEntry {
            chain: chain.clone(),
            private_key: key.clone(),
            names: vec![],
            default: false,
        }])
        .unwrap();
        assert_eq!(
            certs.current()[0].names,
            vec!["one.test"],
            "names from the certificate"
        );
        assert!(certs.current()[0].default, "the only entry is the default");
        assert_eq!(certs.reload(false), 0, "nothing changed");

        // A new certificate whose key is not written yet: it does not fit the old key.
        let (c2, k2) = write("two.test");
        std::fs::write(&chain, &c2).unwrap();
        assert_eq!(certs.reload(false), 0);
        assert_eq!(certs.current()[0].names, vec!["one.test"]);
        std::fs::write(&key, &k2).unwrap();
        assert_eq!(certs.reload(false), 1);
        assert_eq!(certs.current()[0].names, vec!["two.test"]);

        std::fs::write(&chain, "not a certificate").unwrap();
        assert_eq!(certs.reload(true), 0);
        assert_eq!(certs.current()[0].names, vec!["two.test"]);
    }
}
