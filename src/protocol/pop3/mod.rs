//! The POP3 AUTHORIZATION state (RFC 1939), with CAPA (RFC 2449), STLS (RFC 2595), AUTH
//! (RFC 5034) and response codes (RFC 3206), as a pure state machine.
//!
//! Mail importers (fetchmail, getmail, other providers' "check mail from other accounts") and
//! old clients speak it. Nothing authenticates before TLS: `USER`, `PASS` and `AUTH` are
//! refused and not listed in `CAPA` until then. Once a login passes, the backend serves the
//! TRANSACTION state.

use super::{Action, LoginRequest};
use crate::protocol::sasl::{self, ExchangeError};

#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest command line, in bytes (RFC 2449 allows 255 for commands; `AUTH` lines and SASL
    /// responses may be longer, RFC 5034 section 4).
    pub max_line: usize,
    pub max_failures: u32,
    pub max_bad_commands: u32,
    pub tls: bool,
    pub starttls: bool,
    pub plaintext_auth: bool,
}

enum State {
    Command,
    /// A SASL challenge was sent: the next line is the client's response.
    Auth(sasl::Exchange),
    Deciding,
    Closed,
}

/// The AUTHORIZATION state of one POP3 connection.
pub struct PreAuth {
    settings: Settings,
    buffer: Vec<u8>,
    state: State,
    /// The name given by `USER`, waiting for `PASS`.
    user: Option<String>,
    failures: u32,
    bad_commands: u32,
}

impl PreAuth {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            buffer: Vec::new(),
            state: State::Command,
            user: None,
            failures: 0,
            bad_commands: 0,
        }
    }

    fn auth_allowed(&self) -> bool {
        self.settings.tls || self.settings.plaintext_auth
    }

    /// The `CAPA` list: login methods only where they may be used.
    fn capabilities(&self) -> String {
        let mut lines = vec!["+OK Capability list follows".to_owned()];
        if !self.settings.tls && self.settings.starttls {
            lines.push("STLS".into());
        }
        if self.auth_allowed() {
            lines.push("USER".into());
            lines.push(format!("SASL {}", sasl::MECHANISMS.join(" ")));
        }
        lines.extend(
            [
                "RESP-CODES",
                "AUTH-RESP-CODE",
                "PIPELINING",
                "IMPLEMENTATION portcullis",
            ]
            .map(str::to_owned),
        );
        lines.push(".".into());
        lines.iter().map(|l| format!("{l}\r\n")).collect()
    }

    fn command(&mut self, line: &[u8]) -> Action {
        if line.contains(&0) {
            return self.bad("-ERR NUL in command");
        }
        let Ok(line) = std::str::from_utf8(line) else {
            return self.bad("-ERR Invalid command");
        };
        let (verb, args) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "CAPA" => Action::Write(self.capabilities().into_bytes()),
            "STLS" => {
                if self.settings.tls || !self.settings.starttls {
                    self.bad("-ERR STLS not available")
                } else {
                    Action::StartTls(b"+OK Begin TLS negotiation\r\n".to_vec())
                }
            }
            "USER" => {
                if !self.auth_allowed() {
                    return self.bad("-ERR Use STLS first");
                }
                match sasl::parse_login_field(args.as_bytes()) {
                    Ok(user) => {
                        self.user = Some(user);
                        Action::Write(b"+OK Send PASS\r\n".to_vec())
                    }
                    Err(_) => self.bad("-ERR Syntax: USER name"),
                }
            }
            "PASS" => {
                if !self.auth_allowed() {
                    return self.bad("-ERR Use STLS first");
                }
                let Some(user) = self.user.take() else {
                    return self.bad("-ERR Send USER first");
                };
                // The rest of the line: passwords may contain spaces.
                match sasl::parse_password_field(args.as_bytes()) {
                    Ok(secret) => self.login(sasl::Credentials::new(user, secret)),
                    Err(_) => self.bad("-ERR Syntax: PASS password"),
                }
            }
            "AUTH" => self.auth(args),
            "QUIT" => self.close("+OK Bye\r\n"),
            "NOOP" | "STAT" | "LIST" | "RETR" | "DELE" | "RSET" | "TOP" | "UIDL" | "LAST" => {
                self.bad("-ERR Log in first")
            }
            _ => self.bad("-ERR Unknown command"),
        }
    }

    fn auth(&mut self, args: &str) -> Action {
        if !self.auth_allowed() {
            return self.bad("-ERR Use STLS first");
        }
        let mut parts = args.split(' ').filter(|p| !p.is_empty());
        let Some(mechanism) = parts.next() else {
            // What many clients send to learn the mechanisms (RFC 1734's habit).
            let list: String = sasl::MECHANISMS
                .iter()
                .map(|m| format!("{m}\r\n"))
                .collect();
            return Action::Write(format!("+OK\r\n{list}.\r\n").into_bytes());
        };
        let initial = parts.next();
        if parts.next().is_some() {
            return self.bad("-ERR Syntax: AUTH mechanism [initial-response]");
        }
        let next = initial
            .map(|ir| sasl::decode_response(ir.as_bytes()))
            .transpose()
            .and_then(|initial| sasl::Exchange::start(mechanism, initial.as_deref()));
        self.sasl_next(next)
    }

    /// Sends the exchange's next challenge, asks for the credential check, or refuses.
    fn sasl_next(&mut self, next: Result<sasl::Next, ExchangeError>) -> Action {
        match next {
            Ok(sasl::Next::Challenge(exchange, challenge)) => {
                self.state = State::Auth(exchange);
                Action::Write(format!("+ {}\r\n", sasl::encode_base64(challenge)).into_bytes())
            }
            Ok(sasl::Next::Done(credentials)) => self.login(credentials),
            Err(ExchangeError::UnknownMechanism) => {
                self.bad("-ERR Unrecognized authentication mechanism")
            }
            Err(ExchangeError::Cancelled) => self.bad("-ERR Authentication cancelled"),
            Err(ExchangeError::Invalid(e)) => self.bad(&format!("-ERR Invalid SASL response: {e}")),
        }
    }

    fn login(&mut self, credentials: sasl::Credentials) -> Action {
        self.state = State::Deciding;
        Action::Login(LoginRequest {
            tag: String::new(),
            credentials,
        })
    }

    fn bad(&mut self, reply: &str) -> Action {
        self.bad_commands += 1;
        if self.bad_commands > self.settings.max_bad_commands {
            return self.close(&format!(
                "{reply}\r\n-ERR Too many errors, closing connection\r\n"
            ));
        }
        Action::Write(format!("{reply}\r\n").into_bytes())
    }

    fn close(&mut self, text: &str) -> Action {
        self.state = State::Closed;
        Action::Close(text.as_bytes().to_vec())
    }

    /// The login succeeded: the reply, and what the client sent after its login (pipelined,
    /// RFC 2449 PIPELINING), which is the backend's now.
    pub fn login_accepted(self) -> (Vec<u8>, Vec<u8>) {
        (b"+OK Logged in\r\n".to_vec(), self.buffer)
    }
}

impl super::PreAuth for PreAuth {
    fn greeting(&self) -> Vec<u8> {
        b"+OK portcullis POP3 ready\r\n".to_vec()
    }

    fn enqueue(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    fn next_action(&mut self) -> Action {
        if matches!(self.state, State::Deciding | State::Closed) {
            return Action::NeedInput;
        }
        let line = match super::take_line(&mut self.buffer, self.settings.max_line) {
            super::Line::Complete(line) => line,
            super::Line::NeedMore => return Action::NeedInput,
            super::Line::TooLong => return self.close("-ERR Line too long\r\n"),
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

    /// The TLS handshake finished: the session starts over, and nothing sent before it counts
    /// (RFC 2595 section 4).
    fn tls_started(&mut self) {
        self.settings.tls = true;
        self.buffer.clear();
        self.user = None;
        self.state = State::Command;
    }

    fn login_rejected(&mut self, _tag: &str) -> Action {
        self.failures += 1;
        let reply = "-ERR [AUTH] Invalid login or password\r\n";
        if self.failures >= self.settings.max_failures {
            return self.close(&format!(
                "{reply}-ERR Too many failures, closing connection\r\n"
            ));
        }
        self.state = State::Command;
        Action::Write(reply.as_bytes().to_vec())
    }

    fn login_unavailable(&mut self, _tag: &str) -> Action {
        self.state = State::Command;
        Action::Write(b"-ERR [SYS/TEMP] Temporarily unavailable, try again later\r\n".to_vec())
    }

    fn timeout_goodbye(&self) -> &'static [u8] {
        b"-ERR Timeout waiting for authentication, closing connection\r\n"
    }

    fn shutdown_goodbye(&self) -> &'static [u8] {
        b"-ERR [SYS/TEMP] Server shutting down\r\n"
    }
}

#[cfg(test)]
mod tests;
