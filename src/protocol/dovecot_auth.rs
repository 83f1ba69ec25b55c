//! The server side of Dovecot's authentication protocol (version 1), sans I/O.
//!
//! Postfix (`smtpd_sasl_type = dovecot`), Exim and Prosody (`mod_auth_dovecot`) speak its client
//! side: a handshake (`VERSION`, `MECH`, `SPID`, `CUID`, `COOKIE`, `DONE` from the server;
//! `VERSION`, `CPID` from the client), then `AUTH` requests, each with its own id, possibly
//! several in flight, answered with `OK`, `FAIL` or `CONT` (a SASL challenge, answered by the
//! client's `CONT`). Lines are tab-separated and end in LF.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::credentials::{Credentials, Service};
use crate::protocol::sasl;

/// Dovecot's own limit on a client line.
pub const MAX_LINE: usize = 16384;
/// Requests one connection may have in flight.
pub const MAX_PENDING: usize = 1024;

/// What the driver must do next.
#[derive(Debug)]
pub enum Event {
    /// Write these lines (each ends in LF).
    Write(String),
    /// Check these credentials; answer with [`AuthServer::verdict`].
    Verify(Request),
    /// Write, then close the connection (a protocol violation).
    Close(String),
    NeedInput,
}

/// A complete authentication request.
#[derive(Debug)]
pub struct Request {
    pub id: u32,
    pub service: Service,
    /// The `service=` value as sent (`smtp`, `xmpp`, ...).
    pub service_name: String,
    pub credentials: Credentials,
    /// The end user's address (`rip=`), for last-use records.
    pub remote_ip: Option<IpAddr>,
}

/// How a verification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Rejected,
    /// Try again later (the credential store is down).
    Temporary,
}

#[derive(Debug)]
enum Pending {
    /// PLAIN without an initial response: the next CONT is the response.
    Plain(Context),
    /// LOGIN: waiting for the user name.
    LoginUser(Context),
    /// LOGIN: waiting for the password.
    LoginPassword(Context, String),
    /// Being verified.
    Verifying,
}

#[derive(Debug, Clone)]
struct Context {
    service: Service,
    service_name: String,
    remote_ip: Option<IpAddr>,
}

/// One client connection of the authentication server.
pub struct AuthServer {
    buffer: Vec<u8>,
    version_seen: bool,
    handshaken: bool,
    pending: HashMap<u32, Pending>,
}

impl Default for AuthServer {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthServer {
    pub fn new() -> Self {
        Self {
            buffer: Vec::new(),
            version_seen: false,
            handshaken: false,
            pending: HashMap::new(),
        }
    }

    /// The server's half of the handshake, sent at once on connect.
    pub fn handshake(pid: u32, connection: u64, cookie: &str) -> String {
        format!(
            "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t{pid}\nCUID\t{connection}\nCOOKIE\t{cookie}\nDONE\n"
        )
    }

    /// Whether the client has finished its half of the handshake.
    /// Bytes held of a line not yet complete (bounded by [`MAX_LINE`]).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Requests in flight (bounded by [`MAX_PENDING`]).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn handshaken(&self) -> bool {
        self.handshaken
    }

    pub fn enqueue(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next thing to do; call until [`Event::NeedInput`].
    pub fn next_event(&mut self) -> Event {
        loop {
            let Some(end) = self.buffer.iter().position(|&b| b == b'\n') else {
                if self.buffer.len() > MAX_LINE {
                    return Event::Close(String::new());
                }
                return Event::NeedInput;
            };
            if end > MAX_LINE {
                return Event::Close(String::new());
            }
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
            let line = line.strip_suffix('\r').unwrap_or(&line).to_owned();
            if line.is_empty() {
                continue;
            }
            if let Some(event) = self.line(&line) {
                return event;
            }
        }
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        let mut fields = line.split('\t');
        let command = fields.next().unwrap_or("");
        match command {
            "VERSION" => {
                if fields.next() != Some("1") {
                    return Some(Event::Close(String::new()));
                }
                self.version_seen = true;
                None
            }
            "CPID" if self.version_seen => {
                self.handshaken = true;
                None
            }
            "AUTH" if self.handshaken => Some(self.auth(fields.collect())),
            "CONT" if self.handshaken => Some(self.cont(fields.collect())),
            // Dovecot disconnects a client that speaks out of turn or sends what it does not
            // know; so do we.
            _ => Some(Event::Close(String::new())),
        }
    }

    fn auth(&mut self, fields: Vec<&str>) -> Event {
        let Some(id) = fields.first().and_then(|id| id.parse::<u32>().ok()) else {
            return Event::Close(String::new());
        };
        if self.pending.contains_key(&id) || self.pending.len() >= MAX_PENDING {
            return Event::Close(String::new());
        }
        let mechanism = fields.get(1).copied().unwrap_or("").to_ascii_uppercase();
        let mut service_name = None;
        let mut remote_ip = None;
        let mut response: Option<&str> = None;
        for field in fields.iter().skip(2) {
            let (key, value) = field.split_once('=').unwrap_or((field, ""));
            match key {
                "service" => service_name = Some(value.to_owned()),
                "rip" => remote_ip = value.parse().ok(),
                "resp" => response = Some(value),
                _ => {}
            }
        }
        let Some(service_name) = service_name else {
            return fail(id, "reason=Missing service");
        };
        let Some(service) = map_service(&service_name) else {
            return fail(id, "reason=Unknown service");
        };
        let context = Context {
            service,
            service_name,
            remote_ip,
        };
        match (mechanism.as_str(), response) {
            ("PLAIN", Some(response)) => self.plain(id, context, response),
            ("PLAIN", None) => {
                self.pending.insert(id, Pending::Plain(context));
                Event::Write(format!("CONT\t{id}\t\n"))
            }
            ("LOGIN", None) => {
                self.pending.insert(id, Pending::LoginUser(context));
                Event::Write(format!("CONT\t{id}\tVXNlcm5hbWU6\n"))
            }
            ("LOGIN", Some(response)) => self.login_user(id, context, response),
            _ => fail(id, "reason=Unsupported authentication mechanism"),
        }
    }

    fn cont(&mut self, fields: Vec<&str>) -> Event {
        let Some(id) = fields.first().and_then(|id| id.parse::<u32>().ok()) else {
            return Event::Close(String::new());
        };
        let data = fields.get(1).copied().unwrap_or("");
        match self.pending.remove(&id) {
            Some(Pending::Plain(context)) => self.plain(id, context, data),
            Some(Pending::LoginUser(context)) => self.login_user(id, context, data),
            Some(Pending::LoginPassword(context, login)) => {
                match decode(data).and_then(|b| sasl::parse_password_field(&b)) {
                    Ok(secret) => self.verify(id, context, Credentials::new(login, secret)),
                    Err(e) => fail(id, &format!("reason={e}")),
                }
            }
            Some(Pending::Verifying) => Event::Close(String::new()),
            None => Event::Close(String::new()),
        }
    }

    fn plain(&mut self, id: u32, context: Context, response: &str) -> Event {
        match decode(response).and_then(|b| sasl::parse_plain(&b)) {
            Ok(credentials) => self.verify(id, context, credentials),
            Err(e) => fail(id, &format!("reason={e}")),
        }
    }

    fn login_user(&mut self, id: u32, context: Context, response: &str) -> Event {
        match decode(response).and_then(|b| sasl::parse_login_field(&b)) {
            Ok(login) => {
                self.pending
                    .insert(id, Pending::LoginPassword(context, login));
                Event::Write(format!("CONT\t{id}\tUGFzc3dvcmQ6\n"))
            }
            Err(e) => fail(id, &format!("reason={e}")),
        }
    }

    fn verify(&mut self, id: u32, context: Context, credentials: Credentials) -> Event {
        self.pending.insert(id, Pending::Verifying);
        Event::Verify(Request {
            id,
            service: context.service,
            service_name: context.service_name,
            credentials,
            remote_ip: context.remote_ip,
        })
    }

    /// The answer to a verification: the line to write. `login` is the account's canonical
    /// login, which the client takes as the user name from then on.
    pub fn verdict(&mut self, id: u32, verdict: Verdict, login: &str) -> String {
        self.pending.remove(&id);
        match verdict {
            Verdict::Accepted => format!("OK\t{id}\tuser={}\n", escape(login)),
            Verdict::Rejected => format!("FAIL\t{id}\n"),
            Verdict::Temporary => format!("FAIL\t{id}\ttemp\n"),
        }
    }
}

fn fail(id: u32, reason: &str) -> Event {
    Event::Write(format!("FAIL\t{id}\t{}\n", escape(reason)))
}

fn decode(text: &str) -> Result<Vec<u8>, sasl::SaslError> {
    sasl::decode_base64(text.as_bytes())
}

/// The portcullis service for a `service=` value.
pub fn map_service(name: &str) -> Option<Service> {
    match name {
        "imap" | "pop3" | "smtp" | "submission" => Some(Service::Mail),
        "xmpp" => Some(Service::Xmpp),
        _ => None,
    }
}

/// Dovecot's tab escaping: `\x01` introduces an escape, so TAB, LF and `\x01` never appear raw.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            '\0' => out.push_str("\x010"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(server: &mut AuthServer, input: &str) -> Vec<Event> {
        server.enqueue(input.as_bytes());
        let mut out = Vec::new();
        loop {
            match server.next_event() {
                Event::NeedInput => return out,
                e => {
                    let stop = matches!(e, Event::Close(_));
                    out.push(e);
                    if stop {
                        return out;
                    }
                }
            }
        }
    }

    fn handshaken() -> AuthServer {
        let mut s = AuthServer::new();
        assert!(run(&mut s, "VERSION\t1\t0\nCPID\t1234\n").is_empty());
        s
    }

    #[test]
    fn the_handshake_names_both_mechanisms() {
        let h = AuthServer::handshake(7, 3, "00ff");
        assert!(h.starts_with("VERSION\t1\t2\n"));
        assert!(h.contains("MECH\tPLAIN\tplaintext\n") && h.contains("MECH\tLOGIN\tplaintext\n"));
        assert!(h.ends_with("COOKIE\t00ff\nDONE\n"));
    }

    #[test]
    fn plain_with_an_initial_response_as_postfix_sends_it() {
        let mut s = handshaken();
        // base64("\0alice\0pw")
        let events = run(
            &mut s,
            "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.7\tsecured\tresp=AGFsaWNlAHB3\n",
        );
        let Some(Event::Verify(r)) = events.first() else {
            panic!("{events:?}")
        };
        assert_eq!(
            (
                r.id,
                r.service,
                r.credentials.login.as_str(),
                r.credentials.secret.expose()
            ),
            (1, Service::Mail, "alice", &b"pw"[..])
        );
        assert_eq!(r.remote_ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            s.verdict(1, Verdict::Accepted, "alice@example.org"),
            "OK\t1\tuser=alice@example.org\n"
        );
        assert_eq!(s.verdict(2, Verdict::Rejected, "x"), "FAIL\t2\n");
    }

    #[test]
    fn plain_and_login_with_continuations_and_pipelined_requests() {
        let mut s = handshaken();
        let events = run(
            &mut s,
            "AUTH\t1\tPLAIN\tservice=xmpp\nAUTH\t2\tLOGIN\tservice=imap\n",
        );
        assert!(
            matches!(&events[..], [Event::Write(a), Event::Write(b)] if a == "CONT\t1\t\n" && b == "CONT\t2\tVXNlcm5hbWU6\n"),
            "{events:?}"
        );
        let events = run(&mut s, "CONT\t2\tYm9i\nCONT\t1\tAGFsaWNlAHB3\n");
        assert!(
            matches!(&events[0], Event::Write(l) if l == "CONT\t2\tUGFzc3dvcmQ6\n"),
            "{events:?}"
        );
        assert!(
            matches!(&events[1], Event::Verify(r) if r.id == 1 && r.service == Service::Xmpp && r.credentials.login == "alice")
        );
        let events = run(&mut s, "CONT\t2\tc2VjcmV0\n");
        assert!(
            matches!(&events[0], Event::Verify(r) if r.id == 2 && r.credentials.login == "bob" && r.credentials.secret.expose() == b"secret")
        );
    }

    #[test]
    fn bad_requests_fail_and_protocol_abuse_closes() {
        let mut s = handshaken();
        let events = run(&mut s, "AUTH\t1\tPLAIN\tservice=smtp\tresp=!!!\n");
        assert!(matches!(&events[0], Event::Write(l) if l.starts_with("FAIL\t1\treason=")));
        let events = run(&mut s, "AUTH\t2\tPLAIN\tservice=ftp\tresp=AGFsaWNlAHB3\n");
        assert!(matches!(&events[0], Event::Write(l) if l == "FAIL\t2\treason=Unknown service\n"));
        let events = run(&mut s, "AUTH\t3\tCRAM-MD5\tservice=smtp\n");
        assert!(matches!(&events[0], Event::Write(l) if l.starts_with("FAIL\t3\t")));
        let events = run(&mut s, "AUTH\t4\tPLAIN\tservice=smtp\tresp=AGEAYgBj\n");
        assert!(
            matches!(&events[0], Event::Write(l) if l.starts_with("FAIL\t4\t")),
            "NUL inside a field"
        );
        assert!(matches!(
            run(&mut s, "BOGUS\t1\n").last(),
            Some(Event::Close(_))
        ));
        // Before the handshake, and a duplicate id, and an endless line.
        let mut s = AuthServer::new();
        assert!(matches!(
            run(&mut s, "AUTH\t1\tPLAIN\tservice=smtp\n").last(),
            Some(Event::Close(_))
        ));
        let mut s = handshaken();
        run(&mut s, "AUTH\t1\tPLAIN\tservice=smtp\n");
        assert!(matches!(
            run(&mut s, "AUTH\t1\tPLAIN\tservice=smtp\n").last(),
            Some(Event::Close(_))
        ));
        let mut s = handshaken();
        assert!(matches!(
            run(&mut s, &"x".repeat(MAX_LINE + 10)).last(),
            Some(Event::Close(_))
        ));
        let mut s = AuthServer::new();
        assert!(matches!(
            run(&mut s, "VERSION\t2\t0\n").last(),
            Some(Event::Close(_))
        ));
    }

    #[test]
    fn services_map_to_portcullis_services() {
        assert_eq!(map_service("submission"), Some(Service::Mail));
        assert_eq!(map_service("pop3"), Some(Service::Mail));
        assert_eq!(map_service("xmpp"), Some(Service::Xmpp));
        assert_eq!(map_service("webdav"), None);
        assert_eq!(escape("a\tb\x01"), "a\x01tb\x011");
    }
}
