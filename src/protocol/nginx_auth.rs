//! nginx's mail `auth_http` protocol, without I/O: the request headers in, the answer headers
//! out.
//!
//! nginx's mail proxy asks its auth server about every login with a plain `GET` whose headers
//! carry it (`Auth-Method`, `Auth-User`, `Auth-Pass` percent-escaped, `Auth-Protocol`,
//! `Auth-Login-Attempt`, `Client-IP`). The answer is `200` with `Auth-Status: OK` and the
//! backend to proxy to (`Auth-Server`, an IP address, and `Auth-Port`) plus the user and
//! password nginx logs in there with (`Auth-User`, `Auth-Pass`, taken as sent), or
//! `Auth-Status: <message>` for a refusal: nginx shows the message to the client (after the
//! tag and `NO` for IMAP, after `-ERR` for POP3, after `Auth-Error-Code` for SMTP) and then
//! waits `Auth-Wait` seconds and lets the client try again, or closes the connection when
//! there is no `Auth-Wait`.

use std::net::{IpAddr, SocketAddr};

use crate::credentials::{Credentials, Protocol, Secret};

/// The header values nginx may send longer than this are refused (a login, a password).
const MAX_FIELD: usize = 1024;

/// One login nginx asks about.
#[derive(Debug)]
pub struct Request {
    /// `imap`, `pop3` or `smtp`.
    pub protocol: MailProtocol,
    pub credentials: Credentials,
    /// The how-many-th attempt on this client connection (1 for the first).
    pub attempt: u32,
    /// The end user's address, when nginx names it (it always does).
    pub client_ip: Option<IpAddr>,
}

/// The three protocols nginx's mail proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailProtocol {
    Imap,
    Pop3,
    Smtp,
}

impl MailProtocol {
    pub fn name(self) -> &'static str {
        match self {
            MailProtocol::Imap => "imap",
            MailProtocol::Pop3 => "pop3",
            MailProtocol::Smtp => "smtp",
        }
    }

    /// The protocol as the login gate and the metrics name it (all three are the `mail`
    /// service).
    pub fn protocol(self) -> Protocol {
        match self {
            MailProtocol::Imap => Protocol::Imap,
            MailProtocol::Pop3 => Protocol::Pop3,
            MailProtocol::Smtp => Protocol::Submission,
        }
    }
}

/// Why a request cannot be decided. Each becomes a refusal nginx passes on; none holds a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// A header nginx always sends is missing or not what it sends.
    #[error("header {0} is missing or malformed")]
    Header(&'static str),
    /// `apop`, `cram-md5`, `external` or `none`: the client's secret is not in the request
    /// (or there is none), so nothing can be checked.
    #[error(
        "authentication method {0:?} is not supported (configure nginx with plain and login only)"
    )]
    Method(String),
    /// An `Auth-Protocol` other than imap, pop3 and smtp.
    #[error("protocol \"{0}\" is not one of imap, pop3, smtp")]
    Protocol(String),
}

impl Request {
    /// Reads a request from its headers (`header(name)` gives a header's raw value).
    pub fn parse<'a>(header: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Self, BadRequest> {
        let text = |name: &'static str| -> Result<&'a str, BadRequest> {
            header(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or(BadRequest::Header(name))
        };
        let method = text("Auth-Method")?;
        // LOGIN, PLAIN and USER/PASS all reach the auth server as "plain".
        if !method.eq_ignore_ascii_case("plain") {
            return Err(BadRequest::Method(crate::protocol::printable(method)));
        }
        let protocol = match text("Auth-Protocol")? {
            p if p.eq_ignore_ascii_case("imap") => MailProtocol::Imap,
            p if p.eq_ignore_ascii_case("pop3") => MailProtocol::Pop3,
            p if p.eq_ignore_ascii_case("smtp") => MailProtocol::Smtp,
            other => return Err(BadRequest::Protocol(crate::protocol::printable(other))),
        };
        let login = header("Auth-User")
            .and_then(unescape)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|login| !login.is_empty())
            .ok_or(BadRequest::Header("Auth-User"))?;
        let secret = header("Auth-Pass")
            .and_then(unescape)
            .map(Secret::new)
            .ok_or(BadRequest::Header("Auth-Pass"))?;
        let attempt = match header("Auth-Login-Attempt") {
            None => 1,
            Some(value) => std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .ok_or(BadRequest::Header("Auth-Login-Attempt"))?,
        };
        let client_ip = match header("Client-IP") {
            None => None,
            Some(value) => Some(
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<IpAddr>().ok())
                    .ok_or(BadRequest::Header("Client-IP"))?,
            ),
        };
        Ok(Self {
            protocol,
            credentials: Credentials {
                login,
                authzid: None,
                secret,
            },
            attempt,
            client_ip,
        })
    }
}

/// Undoes nginx's escaping of `Auth-User` and `Auth-Pass` (`%XX` for the space, `%` and
/// control characters). `None` for a malformed escape or a value past [`MAX_FIELD`]. The
/// result is zeroed when dropped only once it is in a [`Secret`]; a login is no secret.
fn unescape(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() > MAX_FIELD * 3 {
        return None;
    }
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        if b == b'%' {
            let hi = hex_digit(*bytes.next()?)?;
            let lo = hex_digit(*bytes.next()?)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    (out.len() <= MAX_FIELD).then_some(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What portcullis tells nginx.
#[derive(Debug)]
pub enum Answer {
    /// Proxy to `backend`, logging in there as `user` with `password` (none for SMTP, where
    /// nginx names the user in XCLIENT).
    Proxy {
        backend: SocketAddr,
        user: String,
        password: Option<Secret>,
    },
    /// Wrong credentials (or anything the gate refuses). `retry` lets the client try again on
    /// the same connection after a second; without it nginx closes the connection.
    Refused { protocol: MailProtocol, retry: bool },
    /// The check could not be made (the store is down): try again later.
    Unavailable { protocol: MailProtocol },
    /// nginx asked something that cannot be answered (see [`BadRequest`]).
    Unsupported { protocol: Option<MailProtocol> },
}

/// One answer header; `Auth-Pass` is the only one holding a secret.
pub enum Field<'a> {
    Text(&'static str, String),
    Secret(&'static str, &'a Secret),
}

impl Answer {
    /// The answer's headers, in the order nginx reads them (it reads all of them).
    pub fn fields(&self) -> Vec<Field<'_>> {
        match self {
            Answer::Proxy {
                backend,
                user,
                password,
            } => {
                let mut fields = vec![
                    Field::Text("Auth-Status", "OK".into()),
                    Field::Text("Auth-Server", backend.ip().to_string()),
                    Field::Text("Auth-Port", backend.port().to_string()),
                    Field::Text("Auth-User", user.clone()),
                ];
                if let Some(password) = password {
                    fields.push(Field::Secret("Auth-Pass", password));
                }
                fields
            }
            Answer::Refused { protocol, retry } => {
                let (status, code) = match protocol {
                    MailProtocol::Imap => ("[AUTHENTICATIONFAILED] Authentication failed.", None),
                    MailProtocol::Pop3 => ("[AUTH] Authentication failed.", None),
                    MailProtocol::Smtp => ("Authentication credentials invalid", Some("535 5.7.8")),
                };
                let mut fields = vec![Field::Text("Auth-Status", status.into())];
                if let Some(code) = code {
                    fields.push(Field::Text("Auth-Error-Code", code.into()));
                }
                if *retry {
                    fields.push(Field::Text("Auth-Wait", "1".into()));
                }
                fields
            }
            Answer::Unavailable { protocol } => {
                let (status, code) = match protocol {
                    MailProtocol::Imap => {
                        ("[UNAVAILABLE] Temporary failure, try again later.", None)
                    }
                    MailProtocol::Pop3 => ("[SYS/TEMP] Temporary failure, try again later.", None),
                    MailProtocol::Smtp => ("Temporary failure, try again later", Some("454 4.7.0")),
                };
                let mut fields = vec![Field::Text("Auth-Status", status.into())];
                if let Some(code) = code {
                    fields.push(Field::Text("Auth-Error-Code", code.into()));
                }
                fields
            }
            Answer::Unsupported { protocol } => {
                let mut fields = vec![Field::Text(
                    "Auth-Status",
                    "Authentication method not supported".into(),
                )];
                if *protocol == Some(MailProtocol::Smtp) {
                    fields.push(Field::Text("Auth-Error-Code", "504 5.5.4".into()));
                }
                fields
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(headers: &[(&str, &str)]) -> Result<Request, BadRequest> {
        let map: HashMap<String, Vec<u8>> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        Request::parse(|name| map.get(&name.to_ascii_lowercase()).map(Vec::as_slice))
    }

    const NGINX: &[(&str, &str)] = &[
        ("Host", "localhost"),
        ("Auth-Method", "plain"),
        ("Auth-User", "alice@example.org"),
        ("Auth-Pass", "two%20words%25%0D%0Ain"),
        ("Auth-Protocol", "imap"),
        ("Auth-Login-Attempt", "2"),
        ("Client-IP", "192.0.2.7"),
    ];

    #[test]
    fn reads_what_nginx_sends_and_unescapes_user_and_password() {
        let request = parse(NGINX).unwrap();
        assert_eq!(request.protocol, MailProtocol::Imap);
        assert_eq!(request.credentials.login, "alice@example.org");
        assert_eq!(request.credentials.secret.expose(), b"two words%\r\nin");
        assert_eq!(request.attempt, 2);
        assert_eq!(request.client_ip, Some("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn refuses_what_cannot_be_checked() {
        let with = |name: &str, value: &str| {
            let mut headers: Vec<(&str, &str)> =
                NGINX.iter().copied().filter(|(k, _)| *k != name).collect();
            if !value.is_empty() {
                headers.push((name, value));
            }
            parse(&headers).map(|_| ())
        };
        for method in ["apop", "cram-md5", "external", "none"] {
            assert_eq!(
                with("Auth-Method", method),
                Err(BadRequest::Method(method.into()))
            );
        }
        assert_eq!(
            with("Auth-Protocol", "xmpp"),
            Err(BadRequest::Protocol("xmpp".into()))
        );
        assert_eq!(with("Auth-Pass", ""), Err(BadRequest::Header("Auth-Pass")));
        assert_eq!(
            with("Auth-Pass", "bad%2"),
            Err(BadRequest::Header("Auth-Pass"))
        );
        assert_eq!(
            with("Auth-Pass", "bad%zz"),
            Err(BadRequest::Header("Auth-Pass"))
        );
        assert_eq!(
            with("Auth-Pass", &"x".repeat(MAX_FIELD + 1)),
            Err(BadRequest::Header("Auth-Pass"))
        );
        assert_eq!(with("Auth-User", ""), Err(BadRequest::Header("Auth-User")));
        assert_eq!(
            with("Client-IP", "not an address"),
            Err(BadRequest::Header("Client-IP"))
        );
        assert_eq!(
            with("Auth-Login-Attempt", "x"),
            Err(BadRequest::Header("Auth-Login-Attempt"))
        );
        // Without the optional headers: attempt 1, address unknown.
        let request = parse(&NGINX[..5]).unwrap();
        assert_eq!((request.attempt, request.client_ip), (1, None));
    }

    fn rendered(answer: &Answer) -> Vec<(String, String)> {
        answer
            .fields()
            .into_iter()
            .map(|field| match field {
                Field::Text(name, value) => (name.to_owned(), value),
                Field::Secret(name, secret) => (
                    name.to_owned(),
                    String::from_utf8_lossy(secret.expose()).into_owned(),
                ),
            })
            .collect()
    }

    #[test]
    fn answers_in_nginx_terms() {
        let ok = Answer::Proxy {
            backend: "127.0.0.1:10143".parse().unwrap(),
            user: "alice@example.org*portcullis".into(),
            password: Some(Secret::from("master")),
        };
        assert_eq!(
            rendered(&ok),
            [
                ("Auth-Status", "OK"),
                ("Auth-Server", "127.0.0.1"),
                ("Auth-Port", "10143"),
                ("Auth-User", "alice@example.org*portcullis"),
                ("Auth-Pass", "master"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let smtp = rendered(&Answer::Refused {
            protocol: MailProtocol::Smtp,
            retry: true,
        });
        assert!(smtp.contains(&("Auth-Error-Code".into(), "535 5.7.8".into())));
        assert!(smtp.contains(&("Auth-Wait".into(), "1".into())));
        let last = rendered(&Answer::Refused {
            protocol: MailProtocol::Imap,
            retry: false,
        });
        assert!(last.iter().all(|(k, _)| k != "Auth-Wait"), "{last:?}");
        assert!(last[0].1.starts_with("[AUTHENTICATIONFAILED]"));
        let temporary = rendered(&Answer::Unavailable {
            protocol: MailProtocol::Pop3,
        });
        assert!(temporary[0].1.starts_with("[SYS/TEMP]"));
    }
}
