//! What clients are told about where to connect: one list of public endpoints, derived once
//! from the configured listeners, and everything rendered from it.
//!
//! - [`autoconfig`]: Thunderbird's `config-v1.1.xml`;
//! - [`autodiscover`]: Outlook's POX Autodiscover (request and response);
//! - [`records`]: the SRV records of RFC 6186, 8314, 6764 and XMPP's for `portcullis
//!   dns-records`;
//! - [`profile`]: the Apple configuration profile offered with a new app password;
//! - [`Directory::settings`]: the same settings as text, shown with a new app password.
//!
//! Every one of them reads [`Directory`], so a listener added, moved or renamed (`[public]`,
//! `public_host`, `public_port`) changes them all alike.

pub mod autoconfig;
pub mod autodiscover;
pub mod profile;
pub mod records;

use crate::config::{Config, ListenerProtocol, ListenerTls};
use crate::credentials::Service;

/// What a client does at an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Imap,
    Pop3,
    Submission,
    Xmpp,
    CalDav,
    CardDav,
    WebDav,
    /// The account portal (HTTPS), where app passwords are made.
    Portal,
}

/// How TLS starts at an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (RFC 8314's preference for mail).
    Implicit,
    StartTls,
}

/// One place a client connects to, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub kind: Kind,
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// The path of an HTTP service (`/` or `/dav/`); `/` for the others.
    pub path: String,
}

impl Endpoint {
    /// `https://host[:port]path`, for the HTTP kinds.
    pub fn url(&self) -> String {
        if self.port == 443 {
            format!("https://{}{}", self.host, self.path)
        } else {
            format!("https://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// Every public endpoint of the deployment.
#[derive(Debug, Clone)]
pub struct Directory {
    endpoints: Vec<Endpoint>,
    /// What mail programs show as the provider's name.
    pub display_name: String,
    /// The deployment's public host name.
    host: String,
}

impl Directory {
    /// The endpoints the configuration's listeners make, under their public names and ports.
    pub fn new(config: &Config) -> Self {
        let mut endpoints = Vec::new();
        for listener in &config.listeners {
            let host = listener
                .public_host
                .clone()
                .unwrap_or_else(|| config.public_host().to_owned());
            let port = listener.public_port.unwrap_or(listener.address.port());
            let security = match listener.tls {
                ListenerTls::Implicit => Security::Implicit,
                ListenerTls::Starttls => Security::StartTls,
            };
            let simple = |kind| Endpoint {
                kind,
                host: host.clone(),
                port,
                security,
                path: "/".to_owned(),
            };
            match listener.protocol {
                ListenerProtocol::Imap => endpoints.push(simple(Kind::Imap)),
                ListenerProtocol::Pop3 => endpoints.push(simple(Kind::Pop3)),
                ListenerProtocol::Submission => endpoints.push(simple(Kind::Submission)),
                ListenerProtocol::Xmpp => endpoints.push(simple(Kind::Xmpp)),
                ListenerProtocol::Portal => endpoints.push(simple(Kind::Portal)),
                ListenerProtocol::Http => {
                    for route in &listener.routes {
                        let kind = match route.service {
                            Service::Calendar => Kind::CalDav,
                            Service::Contacts => Kind::CardDav,
                            Service::Disk => Kind::WebDav,
                            Service::Mail | Service::Xmpp => continue,
                        };
                        endpoints.push(Endpoint {
                            kind,
                            // A route for a host answers only requests naming it.
                            host: route.host.clone().unwrap_or_else(|| host.clone()),
                            port,
                            security: Security::Implicit,
                            // Collections end with a slash (RFC 4918 section 5.2).
                            path: if route.path_prefix.ends_with('/') {
                                route.path_prefix.clone()
                            } else {
                                format!("{}/", route.path_prefix)
                            },
                        });
                    }
                }
            }
        }
        // Implicit TLS first (RFC 8314 section 3), otherwise in the configuration's order.
        endpoints.sort_by_key(|e| e.security != Security::Implicit);
        Self {
            endpoints,
            host: config.public_host().to_owned(),
            display_name: config
                .public
                .display_name
                .clone()
                .unwrap_or_else(|| config.public_host().to_owned()),
        }
    }

    /// The deployment's public host name (`[public] host`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The endpoints of `kind`, the preferred first.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(move |e| e.kind == kind)
    }

    /// The preferred endpoint of `kind`.
    pub fn best(&self, kind: Kind) -> Option<&Endpoint> {
        self.of(kind).next()
    }

    /// What a program of `service` is told, as lines of text (shown with a new app
    /// password): each endpoint, preferred first.
    pub fn settings(&self, service: Service) -> Vec<(String, String)> {
        let kinds: &[Kind] = match service {
            Service::Mail => &[Kind::Imap, Kind::Submission, Kind::Pop3],
            Service::Calendar => &[Kind::CalDav],
            Service::Contacts => &[Kind::CardDav],
            Service::Disk => &[Kind::WebDav],
            Service::Xmpp => &[Kind::Xmpp],
        };
        kinds
            .iter()
            .flat_map(|&kind| self.of(kind))
            .map(|endpoint| match endpoint.kind {
                // HTTP services are a URL; the rest a host, a port and how TLS starts.
                Kind::CalDav | Kind::CardDav | Kind::WebDav => (
                    format!("{} server", kind_label(endpoint.kind)),
                    endpoint.url(),
                ),
                kind => (
                    format!(
                        "{} ({})",
                        kind_label(kind),
                        security_label(endpoint.security)
                    ),
                    format!("{}, port {}", endpoint.host, endpoint.port),
                ),
            })
            .collect()
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Imap => "IMAP",
        Kind::Pop3 => "POP3",
        Kind::Submission => "SMTP",
        Kind::Xmpp => "XMPP",
        Kind::CalDav => "CalDAV",
        Kind::CardDav => "CardDAV",
        Kind::WebDav => "WebDAV",
        Kind::Portal => "Portal",
    }
}

fn security_label(security: Security) -> &'static str {
    match security {
        Security::Implicit => "SSL/TLS",
        Security::StartTls => "STARTTLS",
    }
}

/// The address a client typed, split and checked: `local@domain`, the domain lower case.
/// `None` for anything else (no `@`, an empty part, spaces or control characters, too long).
pub fn email_address(typed: &str) -> Option<(String, String)> {
    let typed = typed.trim();
    if typed.len() > 254 || typed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = typed.rsplit_once('@')?;
    if local.is_empty() || local.contains(['<', '>', '"', '\'', '&']) {
        return None;
    }
    let domain = crate::credentials::accounts::normalize_domain(domain).ok()?;
    Some((local.to_owned(), domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const CONFIG: &str = r#"
        hostname = "gw.internal"
        [public]
        host = "mail.example.org"
        display_name = "Example Mail"
        [store]
        url = "sqlite::memory:"
        secret_key_file = "k"
        [tls]
        certificate = "c"
        private_key = "k"
        [[listener]]
        protocol = "imap"
        address = "0.0.0.0:1143"
        tls = "starttls"
        backend = "b"
        public_port = 143
        [[listener]]
        protocol = "imap"
        address = "0.0.0.0:1993"
        tls = "implicit"
        backend = "b"
        public_port = 993
        [[listener]]
        protocol = "submission"
        address = "0.0.0.0:465"
        tls = "implicit"
        backend = "b"
        public_host = "smtp.example.org"
        [[listener]]
        protocol = "pop3"
        address = "0.0.0.0:995"
        tls = "implicit"
        backend = "b"
        [[listener]]
        protocol = "http"
        address = "0.0.0.0:443"
        tls = "implicit"
        [[listener.route]]
        path_prefix = "/cal/"
        service = "calendar"
        backend = "cal"
        [[listener.route]]
        host = "dav.example.org"
        service = "disk"
        backend = "files"
        [[listener]]
        protocol = "portal"
        address = "0.0.0.0:8443"
        tls = "implicit"
        [backend.b]
        address = "127.0.0.1:143"
        tls = "none"
        login = "master-user"
        master_user = "m"
        master_password_file = "f"
        [backend.cal]
        url = "http://127.0.0.1:5232/"
        login = "trusted-header"
        [backend.files]
        url = "http://127.0.0.1:8080/"
        login = "trusted-header"
    "#;

    pub(crate) fn directory() -> Directory {
        Directory::new(&Config::parse(CONFIG).unwrap())
    }

    #[test]
    fn endpoints_carry_public_names_and_ports_implicit_tls_first() {
        let d = directory();
        let imap: Vec<_> = d.of(Kind::Imap).collect();
        assert_eq!(imap.len(), 2);
        assert_eq!(
            (imap[0].host.as_str(), imap[0].port, imap[0].security),
            ("mail.example.org", 993, Security::Implicit)
        );
        assert_eq!((imap[1].port, imap[1].security), (143, Security::StartTls));
        assert_eq!(d.best(Kind::Submission).unwrap().host, "smtp.example.org");
        assert_eq!(d.best(Kind::Pop3).unwrap().port, 995);
        assert_eq!(
            d.best(Kind::CalDav).unwrap().url(),
            "https://mail.example.org/cal/"
        );
        assert_eq!(
            d.best(Kind::WebDav).unwrap().url(),
            "https://dav.example.org/"
        );
        assert_eq!(
            d.best(Kind::Portal).unwrap().url(),
            "https://mail.example.org:8443/"
        );
        assert!(d.best(Kind::Xmpp).is_none());
        assert_eq!(d.display_name, "Example Mail");
    }

    #[test]
    fn settings_as_text_per_service() {
        let d = directory();
        let mail = d.settings(Service::Mail);
        assert_eq!(
            mail[0],
            (
                "IMAP (SSL/TLS)".to_owned(),
                "mail.example.org, port 993".to_owned()
            )
        );
        assert!(mail.contains(&(
            "SMTP (SSL/TLS)".to_owned(),
            "smtp.example.org, port 465".to_owned()
        )));
        assert_eq!(
            d.settings(Service::Calendar),
            [(
                "CalDAV server".to_owned(),
                "https://mail.example.org/cal/".to_owned()
            )]
        );
        assert!(d.settings(Service::Xmpp).is_empty());
    }

    #[test]
    fn email_addresses_are_checked() {
        assert_eq!(
            email_address(" Alice@Example.ORG "),
            Some(("Alice".into(), "example.org".into()))
        );
        for bad in [
            "alice",
            "@example.org",
            "alice@",
            "alice@localhost",
            "a b@example.org",
            "alice@exa mple.org",
            "<x>@example.org",
            "alice@example..org",
            "alice@ex_ample.org",
        ] {
            assert_eq!(email_address(bad), None, "{bad}");
        }
    }
}
