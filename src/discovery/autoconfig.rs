//! Thunderbird's autoconfig file (`config-v1.1.xml`), as Thunderbird and the ISPDB's own
//! validator read it: `clientConfig version="1.1"`, one `emailProvider` with its domain, names,
//! an `incomingServer` per IMAP and POP3 endpoint and an `outgoingServer` per submission one,
//! each with `hostname`, `port`, `socketType` (`SSL`, `STARTTLS`), `authentication`
//! (`password-cleartext`: the password goes inside TLS) and `username` (`%EMAILADDRESS%`,
//! which the client fills in).

use super::{Directory, Endpoint, Kind, Security};
use crate::protocol::xml_escape as escape;

/// The file for `domain` (already checked to be one the deployment serves).
pub fn config(directory: &Directory, domain: &str) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str("<clientConfig version=\"1.1\">\n");
    xml.push_str(&format!(
        "  <emailProvider id=\"{domain}\">\n    <domain>{domain}</domain>\n    <displayName>{name}</displayName>\n    <displayShortName>{name}</displayShortName>\n",
        domain = escape(domain),
        name = escape(&directory.display_name),
    ));
    for (kind, element, kind_name) in [
        (Kind::Imap, "incomingServer", "imap"),
        (Kind::Pop3, "incomingServer", "pop3"),
        (Kind::Submission, "outgoingServer", "smtp"),
    ] {
        for endpoint in directory.of(kind) {
            xml.push_str(&server(element, kind_name, endpoint));
        }
    }
    xml.push_str("  </emailProvider>\n</clientConfig>\n");
    xml
}

fn server(element: &str, kind: &str, endpoint: &Endpoint) -> String {
    let socket = match endpoint.security {
        Security::Implicit => "SSL",
        Security::StartTls => "STARTTLS",
    };
    format!(
        "    <{element} type=\"{kind}\">\n      <hostname>{host}</hostname>\n      <port>{port}</port>\n      <socketType>{socket}</socketType>\n      <authentication>password-cleartext</authentication>\n      <username>%EMAILADDRESS%</username>\n    </{element}>\n",
        host = escape(&endpoint.host),
        port = endpoint.port,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_mail_endpoint_implicit_tls_first() {
        let xml = config(&super::super::tests::directory(), "shop.example");
        assert!(xml.contains("<emailProvider id=\"shop.example\">"), "{xml}");
        assert!(xml.contains("<domain>shop.example</domain>"));
        assert!(xml.contains("<displayName>Example Mail</displayName>"));
        let imap_ssl = xml.find("<port>993</port>").unwrap();
        let imap_starttls = xml.find("<port>143</port>").unwrap();
        assert!(imap_ssl < imap_starttls, "{xml}");
        assert!(xml.contains(
            "<outgoingServer type=\"smtp\">\n      <hostname>smtp.example.org</hostname>\n      <port>465</port>\n      <socketType>SSL</socketType>"
        ));
        assert!(xml.contains("<incomingServer type=\"pop3\">"));
        assert_eq!(
            xml.matches("<username>%EMAILADDRESS%</username>").count(),
            4
        );
    }
}
