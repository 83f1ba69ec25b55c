//! SMTP submission before AUTH (RFC 6409, RFC 4954, RFC 3207), sans I/O.
//!
//! [`PreAuth`] reads command lines and yields [`Action`]s, like the IMAP machine. Mail
//! transactions need a login first, so before AUTH only the session commands are served; the
//! extensions offered are the backend's own (learned by the driver), so a client sees what it
//! will get once relayed, minus what the gateway itself handles (AUTH, STARTTLS) and what only
//! the gateway may use on the backend (XCLIENT, XFORWARD).

use crate::protocol::sasl::{self, ExchangeError};
use crate::protocol::{Action, LoginRequest};

/// RFC 4954 section 4: servers take AUTH lines of at least 12288 octets.
const MIN_AUTH_LINE: usize = 12288;

/// How the machine is set up for one connection.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Longest command line, in bytes (AUTH lines may always reach 12288).
    pub max_line: usize,
    pub max_failures: u32,
    pub max_bad_commands: u32,
    pub tls: bool,
    pub starttls: bool,
    pub plaintext_auth: bool,
    /// EHLO keywords of the backend, as it sent them (`SIZE 10240000`, `PIPELINING`, ...).
    pub backend_extensions: Vec<String>,
}

#[derive(Debug)]
enum State {
    Command,
    /// A SASL exchange waits for the client's response.
    Auth(sasl::Exchange),
    Deciding,
    Closed,
}

/// The pre-AUTH part of one submission connection.
pub struct PreAuth {
    settings: Settings,
    buffer: Vec<u8>,
    state: State,
    /// The client's EHLO/HELO name; AUTH needs EHLO first (RFC 4954 section 4).
    helo: Option<(String, bool)>,
    failures: u32,
    bad_commands: u32,
}

/// Keywords a client must not learn from the backend's list.
const HIDDEN: [&str; 4] = ["AUTH", "STARTTLS", "XCLIENT", "XFORWARD"];

impl PreAuth {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            buffer: Vec::new(),
            state: State::Command,
            helo: None,
            failures: 0,
            bad_commands: 0,
        }
    }

    /// The name the client gave in EHLO/HELO, to pass on to the backend.
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_ref().map(|(name, _)| name.as_str())
    }

    fn auth_allowed(&self) -> bool {
        self.settings.tls || self.settings.plaintext_auth
    }

    fn max_line(&self) -> usize {
        self.settings.max_line.max(MIN_AUTH_LINE)
    }

    fn command(&mut self, line: &[u8]) -> Action {
        let Ok(text) = std::str::from_utf8(line) else {
            return self.bad("500 5.5.2 Syntax error: not UTF-8");
        };
        if text.bytes().any(|b| b == 0 || (b < 0x20 && b != b'\t')) {
            return self.bad("500 5.5.2 Syntax error: control characters");
        }
        let (verb, args) = match text.split_once(' ') {
            Some((verb, args)) => (verb, args.trim()),
            None => (text, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if args.is_empty() || args.contains(' ') => {
                self.bad("501 5.5.4 Syntax: EHLO domain")
            }
            "EHLO" => {
                self.helo = Some((args.to_owned(), true));
                Action::Write(self.ehlo_reply().into_bytes())
            }
            "HELO" => {
                self.helo = Some((args.to_owned(), false));
                Action::Write(format!("250 {}\r\n", self.settings.hostname).into_bytes())
            }
            "STARTTLS" => {
                if !args.is_empty() {
                    self.bad("501 5.5.4 Syntax: STARTTLS takes no argument")
                } else if self.settings.tls || !self.settings.starttls {
                    self.bad("502 5.5.1 STARTTLS not available")
                } else {
                    Action::StartTls(b"220 2.0.0 Ready to start TLS\r\n".to_vec())
                }
            }
            "AUTH" => self.auth(args),
            "MAIL" | "RCPT" | "DATA" | "BDAT" | "VRFY" | "EXPN" | "ETRN" | "BURL" => {
                self.bad("530 5.7.0 Authentication required")
            }
            "RSET" => Action::Write(b"250 2.0.0 OK\r\n".to_vec()),
            "NOOP" => Action::Write(b"250 2.0.0 OK\r\n".to_vec()),
            "HELP" => Action::Write(b"214 2.0.0 See RFC 6409\r\n".to_vec()),
            "QUIT" => self.close("221 2.0.0 Bye\r\n"),
            _ => self.bad("500 5.5.2 Command not recognized"),
        }
    }

    fn ehlo_reply(&self) -> String {
        let mut lines = vec![self.settings.hostname.clone()];
        for ext in &self.settings.backend_extensions {
            let keyword = ext.split(' ').next().unwrap_or("").to_ascii_uppercase();
            if !HIDDEN.contains(&keyword.as_str())
                && !keyword.starts_with("AUTH=")
                && !keyword.is_empty()
            {
                lines.push(ext.clone());
            }
        }
        if !self.settings.tls && self.settings.starttls {
            lines.push("STARTTLS".into());
        }
        if self.auth_allowed() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            out.push_str(if i == last { "250 " } else { "250-" });
            out.push_str(line);
            out.push_str("\r\n");
        }
        out
    }

    fn auth(&mut self, args: &str) -> Action {
        if !self.auth_allowed() {
            return self.bad("530 5.7.0 Must issue a STARTTLS command first");
        }
        if !matches!(self.helo, Some((_, true))) {
            return self.bad("503 5.5.1 Send EHLO first");
        }
        let mut parts = args.split(' ');
        let mechanism = parts.next().unwrap_or("").to_ascii_uppercase();
        let initial = parts.next();
        if parts.next().is_some() {
            return self.bad("501 5.5.4 Syntax: AUTH mechanism [initial-response]");
        }
        if mechanism.is_empty() {
            return self.bad("501 5.5.4 Syntax: AUTH mechanism [initial-response]");
        }
        if !sasl::MECHANISMS.contains(&mechanism.as_str()) {
            return self.sasl_next(Err(ExchangeError::UnknownMechanism));
        }
        let next = initial
            .map(|ir| sasl::decode_response(ir.as_bytes()))
            .transpose()
            .and_then(|initial| sasl::Exchange::start(&mechanism, initial.as_deref()));
        self.sasl_next(next)
    }

    /// Sends the exchange's next challenge, asks for the credential check, or refuses.
    fn sasl_next(&mut self, next: Result<sasl::Next, ExchangeError>) -> Action {
        match next {
            Ok(sasl::Next::Challenge(exchange, challenge)) => {
                self.state = State::Auth(exchange);
                Action::Write(format!("334 {}\r\n", sasl::encode_base64(challenge)).into_bytes())
            }
            Ok(sasl::Next::Done(credentials)) => {
                self.state = State::Deciding;
                Action::Login(LoginRequest {
                    tag: String::new(),
                    credentials,
                })
            }
            Err(e) => self.sasl_error(e),
        }
    }

    fn sasl_error(&mut self, e: ExchangeError) -> Action {
        match e {
            ExchangeError::UnknownMechanism => {
                self.bad("504 5.5.4 Unrecognized authentication type")
            }
            ExchangeError::Cancelled => self.bad("501 5.0.0 Authentication cancelled"),
            ExchangeError::Invalid(sasl::SaslError::Base64) => {
                self.bad("501 5.5.2 Invalid base64 data")
            }
            ExchangeError::Invalid(e) => {
                self.bad(&format!("501 5.5.2 Invalid authentication data: {e}"))
            }
        }
    }

    fn bad(&mut self, reply: &str) -> Action {
        self.bad_commands += 1;
        if self.bad_commands > self.settings.max_bad_commands {
            return self.close(&format!(
                "{reply}\r\n421 4.7.0 Too many errors, closing connection\r\n"
            ));
        }
        Action::Write(format!("{reply}\r\n").into_bytes())
    }

    fn close(&mut self, text: &str) -> Action {
        self.state = State::Closed;
        Action::Close(text.as_bytes().to_vec())
    }

    /// The login succeeded: the reply, and what the client sent after AUTH (pipelined), which
    /// is the backend's now.
    pub fn login_accepted(self) -> (Vec<u8>, Vec<u8>) {
        (
            b"235 2.7.0 Authentication successful\r\n".to_vec(),
            self.buffer,
        )
    }
}

impl super::PreAuth for PreAuth {
    fn greeting(&self) -> Vec<u8> {
        format!("220 {} ESMTP portcullis\r\n", self.settings.hostname).into_bytes()
    }

    fn enqueue(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    fn next_action(&mut self) -> Action {
        if matches!(self.state, State::Deciding | State::Closed) {
            return Action::NeedInput;
        }
        let max_line = self.max_line();
        let line = match super::take_line(&mut self.buffer, max_line) {
            super::Line::Complete(line) => line,
            super::Line::NeedMore => return Action::NeedInput,
            super::Line::TooLong => return self.close("500 5.5.6 Line too long\r\n"),
        };
        match std::mem::replace(&mut self.state, State::Command) {
            State::Command => self.command(&line),
            State::Auth(exchange) => {
                let next = sasl::decode_response(&line).and_then(|r| exchange.respond(&r));
                self.sasl_next(next)
            }
            State::Deciding | State::Closed => Action::NeedInput,
        }
    }

    /// The TLS handshake finished: the session starts over (RFC 3207 section 4.2).
    fn tls_started(&mut self) {
        self.settings.tls = true;
        self.buffer.clear();
        self.helo = None;
        self.state = State::Command;
    }

    /// The login failed: one reply for every reason; after `max_failures`, goodbye.
    fn login_rejected(&mut self, _tag: &str) -> Action {
        self.failures += 1;
        let reply = "535 5.7.8 Authentication credentials invalid\r\n";
        if self.failures >= self.settings.max_failures {
            return self.close(&format!(
                "{reply}421 4.7.0 Too many authentication failures\r\n"
            ));
        }
        self.state = State::Command;
        Action::Write(reply.as_bytes().to_vec())
    }

    /// The credential check or the backend is unavailable.
    fn login_unavailable(&mut self, _tag: &str) -> Action {
        self.state = State::Command;
        Action::Write(b"454 4.7.0 Temporary authentication failure, try again later\r\n".to_vec())
    }

    fn timeout_goodbye(&self) -> &'static [u8] {
        b"421 4.4.2 Timeout waiting for authentication, closing connection\r\n"
    }
    fn shutdown_goodbye(&self) -> &'static [u8] {
        b"421 4.3.2 Server shutting down\r\n"
    }
}

/// Parses the backend's EHLO reply lines (`250-KEYWORD params`) into its keywords with their
/// parameters, skipping the first line (the backend's name).
pub fn parse_ehlo_keywords(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .skip(1)
        .filter_map(|line| line.get(4..))
        .map(|ext| ext.trim().to_owned())
        .filter(|ext| !ext.is_empty())
        .collect()
}

#[cfg(test)]
mod tests;
