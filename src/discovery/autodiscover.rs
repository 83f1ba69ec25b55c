//! Outlook's Autodiscover, plain-old-XML flavour ([MS-OXDSCLI]): Outlook POSTs
//! `<Autodiscover><Request><EMailAddress>…<AcceptableResponseSchema>…` to
//! `/autodiscover/autodiscover.xml` and reads back an `Account` of type `email` with one
//! `Protocol` per server (`IMAP`, `POP3`, `SMTP`).
//!
//! Only the address's domain is looked at: the answer is the same for every mailbox of a served
//! domain, so it tells nothing about which mailboxes exist.

use rxml::{Event, Parse, Parser};

use super::{Directory, Endpoint, Kind, Security};
use crate::protocol::xml_escape as escape;

/// The request schema Outlook speaks.
pub const REQUEST_SCHEMA: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006";
/// The response schema of mail accounts (Outlook's "2006a").
pub const OUTLOOK_SCHEMA: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";
/// The outer response schema.
pub const RESPONSE_SCHEMA: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006";

/// The largest request read; Outlook's are a few hundred bytes.
pub const MAX_REQUEST: usize = 16 * 1024;

/// What Outlook asked.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub email: String,
    /// Absent in some clients' requests; then the Outlook schema is assumed.
    pub schema: Option<String>,
}

/// Why a request is not answered with settings.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is not well-formed XML or not an Autodiscover request")]
    Malformed,
    #[error("the request names no EMailAddress")]
    NoAddress,
}

/// Reads an Autodiscover request body. rxml refuses DTDs and processing instructions, so no
/// entity can expand or reach outside the document.
pub fn parse_request(body: &[u8]) -> Result<Request, RequestError> {
    if body.len() > MAX_REQUEST {
        return Err(RequestError::Malformed);
    }
    let mut parser = Parser::default();
    let mut input = body;
    let mut path: Vec<String> = Vec::new();
    let mut email = None;
    let mut schema = None;
    let mut text = String::new();
    loop {
        let event = match parser.parse(&mut input, true) {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(_) => return Err(RequestError::Malformed),
        };
        match event {
            Event::XmlDeclaration(..) => {}
            Event::StartElement(_, (namespace, name), _) => {
                if path.is_empty()
                    && (name.as_str() != "Autodiscover" || namespace.as_str() != REQUEST_SCHEMA)
                {
                    return Err(RequestError::Malformed);
                }
                path.push(name.to_string());
                text.clear();
                if path.len() > 8 {
                    return Err(RequestError::Malformed);
                }
            }
            Event::Text(_, chunk) => text.push_str(&chunk),
            Event::EndElement(_) => {
                let in_request = path.len() == 3 && path[1] == "Request";
                match path.last().map(String::as_str) {
                    Some("EMailAddress") if in_request => email = Some(text.trim().to_owned()),
                    Some("AcceptableResponseSchema") if in_request => {
                        schema = Some(text.trim().to_owned());
                    }
                    _ => {}
                }
                path.pop();
                text.clear();
            }
        }
    }
    let email = email
        .filter(|e| !e.is_empty())
        .ok_or(RequestError::NoAddress)?;
    Ok(Request { email, schema })
}

/// The settings for `email` (its domain already checked to be served).
pub fn response(directory: &Directory, email: &str) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"{RESPONSE_SCHEMA}\">\n  <Response xmlns=\"{OUTLOOK_SCHEMA}\">\n    <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n"
    );
    for (kind, name) in [
        (Kind::Imap, "IMAP"),
        (Kind::Pop3, "POP3"),
        (Kind::Submission, "SMTP"),
    ] {
        // Outlook takes one Protocol of each type: the preferred one.
        if let Some(endpoint) = directory.best(kind) {
            xml.push_str(&protocol(name, endpoint, email));
        }
    }
    xml.push_str("    </Account>\n  </Response>\n</Autodiscover>\n");
    xml
}

fn protocol(name: &str, endpoint: &Endpoint, email: &str) -> String {
    // `SSL` alone cannot say STARTTLS; `Encryption` (which wins over it) can.
    let encryption = match endpoint.security {
        Security::Implicit => "SSL",
        Security::StartTls => "TLS",
    };
    format!(
        "      <Protocol>\n        <Type>{name}</Type>\n        <Server>{host}</Server>\n        <Port>{port}</Port>\n        <DomainRequired>off</DomainRequired>\n        <LoginName>{login}</LoginName>\n        <SPA>off</SPA>\n        <SSL>on</SSL>\n        <Encryption>{encryption}</Encryption>\n        <AuthRequired>on</AuthRequired>\n      </Protocol>\n",
        host = escape(&endpoint.host),
        port = endpoint.port,
        login = escape(email),
    )
}

/// The error answer ([MS-OXDSCLI] 2.2.4.2.1): 600 for a request that cannot be answered,
/// 601 when the asked response schema is not one this server gives.
pub fn error(code: u16, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"{RESPONSE_SCHEMA}\">\n  <Response>\n    <Error Time=\"{time}\" Id=\"1\">\n      <ErrorCode>{code}</ErrorCode>\n      <Message>{message}</Message>\n      <DebugData />\n    </Error>\n  </Response>\n</Autodiscover>\n",
        time = &crate::clock::timestamp(crate::credentials::model::now_ms())[11..],
        message = escape(message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(email: &str, schema: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"{REQUEST_SCHEMA}\"><Request><EMailAddress>{email}</EMailAddress><AcceptableResponseSchema>{schema}</AcceptableResponseSchema></Request></Autodiscover>"
        )
    }

    #[test]
    fn reads_what_outlook_sends() {
        assert_eq!(
            parse_request(request("alice@example.org", OUTLOOK_SCHEMA).as_bytes()),
            Ok(Request {
                email: "alice@example.org".into(),
                schema: Some(OUTLOOK_SCHEMA.into())
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_request() {
        for body in [
            "not xml".to_owned(),
            "<Autodiscover xmlns=\"urn:other\"><Request><EMailAddress>a@b.c</EMailAddress></Request></Autodiscover>".to_owned(),
            "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><Autodiscover/>".to_owned(),
            format!(
                "<Autodiscover xmlns=\"{REQUEST_SCHEMA}\"><Request><EMailAddress>a@b.c</EMailAddress></Request>"
            ),
            "x".repeat(MAX_REQUEST + 1),
        ] {
            assert_eq!(
                parse_request(body.as_bytes()),
                Err(RequestError::Malformed),
                "{body:.80}"
            );
        }
        assert_eq!(
            parse_request(request("", OUTLOOK_SCHEMA).as_bytes()),
            Err(RequestError::NoAddress)
        );
    }

    #[test]
    fn answers_one_protocol_per_type_with_the_address_as_login() {
        let xml = response(&super::super::tests::directory(), "alice@shop.example");
        assert_eq!(xml.matches("<Type>IMAP</Type>").count(), 1);
        assert!(
            xml.contains("<Server>mail.example.org</Server>\n        <Port>993</Port>"),
            "{xml}"
        );
        assert!(xml.contains("<Type>SMTP</Type>\n        <Server>smtp.example.org</Server>"));
        assert!(xml.contains("<LoginName>alice@shop.example</LoginName>"));
        assert!(error(600, "Invalid <Request>").contains("Invalid &lt;Request&gt;"));
    }
}
