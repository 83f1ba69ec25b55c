//! The DNS records that let clients find the deployment for a domain, in zone-file syntax for
//! the operator to publish (`portcullis dns-records DOMAIN`):
//!
//! - mail, RFC 6186 with RFC 8314's implicit-TLS names (`_imaps`, `_pop3s`, `_submissions`);
//!   a service the deployment does not offer gets RFC 6186's "not available" record
//!   (`0 0 0 .`), so clients stop looking;
//! - calendars and contacts, RFC 6764 (`_caldavs`, `_carddavs`, with a TXT `path=`);
//! - XMPP, RFC 6120 (`_xmpp-client`) and XEP-0368 (`_xmpps-client`);
//! - autoconfig and Autodiscover, pointing at the portal's listener.

use super::{Directory, Kind, Security};

/// The records for `domain` (lower case, no trailing dot).
pub fn zone(directory: &Directory, domain: &str) -> String {
    let mut out = format!(
        "; DNS records for {domain}, to publish in its zone: clients find the servers of\n; {name} from these. TTL 3600; adjust to taste.\n",
        name = directory.display_name
    );
    out.push_str("\n; Mail (RFC 6186, RFC 8314): implicit TLS first.\n");
    for (label, kind, security) in [
        ("_submissions", Kind::Submission, Security::Implicit),
        ("_submission", Kind::Submission, Security::StartTls),
        ("_imaps", Kind::Imap, Security::Implicit),
        ("_imap", Kind::Imap, Security::StartTls),
        ("_pop3s", Kind::Pop3, Security::Implicit),
        ("_pop3", Kind::Pop3, Security::StartTls),
    ] {
        out.push_str(&srv(directory, domain, label, kind, security));
    }
    out.push_str("\n; Calendars and contacts (RFC 6764).\n");
    for (label, kind) in [("_caldavs", Kind::CalDav), ("_carddavs", Kind::CardDav)] {
        // One target only: the TXT record's path holds for every target of the name, and two
        // routes of one service may have different paths.
        match directory.best(kind) {
            Some(endpoint) => out.push_str(&format!(
                "{label}._tcp.{domain}. 3600 IN SRV 0 1 {port} {host}.\n{label}._tcp.{domain}. 3600 IN TXT \"path={path}\"\n",
                port = endpoint.port,
                host = endpoint.host,
                path = endpoint.path,
            )),
            None => out.push_str(&format!("{label}._tcp.{domain}. 3600 IN SRV 0 0 0 .\n")),
        }
    }
    if directory.best(Kind::Xmpp).is_some() {
        out.push_str("\n; XMPP clients (RFC 6120; XEP-0368 for TLS from the first byte).\n");
        out.push_str(&srv(
            directory,
            domain,
            "_xmpp-client",
            Kind::Xmpp,
            Security::StartTls,
        ));
        out.push_str(&srv(
            directory,
            domain,
            "_xmpps-client",
            Kind::Xmpp,
            Security::Implicit,
        ));
    }
    match directory.best(Kind::Portal) {
        Some(portal) => {
            out.push_str(
                "\n; Thunderbird's autoconfig and Outlook's Autodiscover, served by the portal. Its\n; certificate must name autoconfig.DOMAIN and autodiscover.DOMAIN too.\n",
            );
            out.push_str(&format!(
                "autoconfig.{domain}. 3600 IN CNAME {host}.\nautodiscover.{domain}. 3600 IN CNAME {host}.\n_autodiscover._tcp.{domain}. 3600 IN SRV 0 1 {port} {host}.\n",
                host = portal.host,
                port = portal.port,
            ));
            if portal.port != 443 {
                out.push_str(&format!(
                    "; autoconfig.{domain} and autodiscover.{domain} are asked on port 443: forward it to\n; the portal's port {}.\n",
                    portal.port
                ));
            }
        }
        None => out.push_str(
            "\n; No portal listener: autoconfig and Autodiscover are not served, so no records for them.\n",
        ),
    }
    out
}

/// SRV records for `label`: one per endpoint of `kind` with `security`, their
/// priorities in preference order; RFC 6186's "not available" record when there is none.
fn srv(directory: &Directory, domain: &str, label: &str, kind: Kind, security: Security) -> String {
    let endpoints: Vec<_> = directory
        .of(kind)
        .filter(|e| e.security == security)
        .collect();
    if endpoints.is_empty() {
        return format!("{label}._tcp.{domain}. 3600 IN SRV 0 0 0 .\n");
    }
    endpoints
        .iter()
        .enumerate()
        .map(|(priority, e)| {
            format!(
                "{label}._tcp.{domain}. 3600 IN SRV {priority} 1 {} {}.\n",
                e.port, e.host
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_for_what_is_served_and_refusals_for_what_is_not() {
        let zone = zone(&super::super::tests::directory(), "shop.example");
        for line in [
            "_submissions._tcp.shop.example. 3600 IN SRV 0 1 465 smtp.example.org.",
            "_submission._tcp.shop.example. 3600 IN SRV 0 0 0 .",
            "_imaps._tcp.shop.example. 3600 IN SRV 0 1 993 mail.example.org.",
            "_imap._tcp.shop.example. 3600 IN SRV 0 1 143 mail.example.org.",
            "_pop3s._tcp.shop.example. 3600 IN SRV 0 1 995 mail.example.org.",
            "_pop3._tcp.shop.example. 3600 IN SRV 0 0 0 .",
            "_caldavs._tcp.shop.example. 3600 IN SRV 0 1 443 mail.example.org.",
            "_caldavs._tcp.shop.example. 3600 IN TXT \"path=/cal/\"",
            "_carddavs._tcp.shop.example. 3600 IN SRV 0 0 0 .",
            "autoconfig.shop.example. 3600 IN CNAME mail.example.org.",
            "_autodiscover._tcp.shop.example. 3600 IN SRV 0 1 8443 mail.example.org.",
        ] {
            assert!(
                zone.lines().any(|l| l == line),
                "{line} missing from:\n{zone}"
            );
        }
        assert!(!zone.contains("_xmpp"), "{zone}");
    }
}
