//! IMAP before login (RFC 9051 / RFC 3501 not-authenticated state), sans I/O.
//!
//! [`PreAuth`] takes the client's bytes and yields [`Action`]s: bytes to write, a STARTTLS
//! upgrade, a login to decide, or a close. imap-codec's `Fragmentizer` splits input into lines
//! and literals first, so memory is bounded by the configured sizes and literal data is never
//! mistaken for a command. The driver (`server::imap`) owns the sockets, the credential check
//! and the backend; this file owns the grammar and the replies.

use imap_codec::fragmentizer::{
    DecodeMessageError, FragmentInfo, Fragmentizer, LiteralAnnouncement,
};
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{LiteralMode, Tag};
use imap_codec::{AuthenticateDataCodec, CommandCodec};

use crate::protocol::sasl::{self, Credentials, ExchangeError};
use crate::protocol::{Action, LoginRequest};

/// How the machine is set up for one connection.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest command line, in bytes.
    pub max_line: usize,
    /// Longest literal, in bytes.
    pub max_literal: u32,
    /// Failed logins before the connection is closed.
    pub max_failures: u32,
    /// Invalid or refused commands before the connection is closed.
    pub max_bad_commands: u32,
    /// The connection is already TLS (implicit TLS listener).
    pub tls: bool,
    /// STARTTLS may be offered (a plaintext listener with a certificate).
    pub starttls: bool,
    /// Logins are accepted without TLS (loopback listeners the operator marked so).
    pub plaintext_auth: bool,
}

enum State {
    Command,
    /// `AUTHENTICATE` sent a challenge: the next line is the client's response.
    Authenticate(Tag<'static>, sasl::Exchange),
    /// A login is being decided: no input is processed until the driver reports back.
    Deciding,
    Closed,
}

/// The not-authenticated state of one IMAP connection.
pub struct PreAuth {
    settings: Settings,
    fragmentizer: Fragmentizer,
    state: State,
    failures: u32,
    bad_commands: u32,
}

impl PreAuth {
    pub fn new(settings: Settings) -> Self {
        Self {
            fragmentizer: new_fragmentizer(&settings),
            settings,
            state: State::Command,
            failures: 0,
            bad_commands: 0,
        }
    }

    /// Capabilities before login. Authentication is offered only where it may be used.
    pub fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 SASL-IR ID");
        if !self.settings.tls && self.settings.starttls {
            caps.push_str(" STARTTLS");
        }
        if self.auth_allowed() {
            for mechanism in sasl::MECHANISMS {
                caps.push_str(" AUTH=");
                caps.push_str(mechanism);
            }
        } else {
            caps.push_str(" LOGINDISABLED");
        }
        caps
    }

    fn auth_allowed(&self) -> bool {
        self.settings.tls || self.settings.plaintext_auth
    }

    fn literal_announced(&mut self, mode: LiteralMode, length: u32) -> Option<Action> {
        if matches!(self.state, State::Authenticate(..)) {
            // A SASL response is one base64 line; a literal here is a confused or hostile
            // client, and its data would follow without our consent.
            return Some(self.close(b"* BYE Unexpected literal in SASL response\r\n"));
        }
        if length <= self.settings.max_literal {
            return match mode {
                LiteralMode::Sync => Some(Action::Write(b"+ Ready for literal data\r\n".to_vec())),
                // Non-synchronizing literals (RFC 7888) within the limit cost nothing extra.
                LiteralMode::NonSync => None,
            };
        }
        match mode {
            LiteralMode::Sync => match self
                .fragmentizer
                .decode_tag()
                .map(|t| t.as_ref().to_owned())
            {
                Some(tag) => {
                    // The client waits for "+" and will not send the data: drop the command.
                    self.fragmentizer.skip_message();
                    Some(self.bad(&tag, "[TOOBIG] Literal too long"))
                }
                None => {
                    self.fragmentizer.poison_message();
                    None
                }
            },
            // The data is coming whether we like it or not: the only safe answer is to hang up.
            LiteralMode::NonSync => Some(self.close(b"* BYE [TOOBIG] Literal too long\r\n")),
        }
    }

    fn message_complete(&mut self) -> Option<Action> {
        match std::mem::replace(&mut self.state, State::Command) {
            State::Authenticate(tag, exchange) => Some(self.sasl_response(tag, exchange)),
            State::Command => self.command(),
            State::Deciding | State::Closed => None,
        }
    }

    fn sasl_response(&mut self, tag: Tag<'static>, exchange: sasl::Exchange) -> Action {
        let next = match self
            .fragmentizer
            .decode_message(&AuthenticateDataCodec::default())
        {
            Ok(AuthenticateData::Continue(data)) => exchange.respond(data.declassify()),
            Ok(AuthenticateData::Cancel) => Err(ExchangeError::Cancelled),
            Err(DecodeMessageError::MessageTooLong { .. }) => {
                return self.close(b"* BYE Command line too long\r\n");
            }
            Err(_) => Err(ExchangeError::Invalid(sasl::SaslError::Base64)),
        };
        self.sasl_next(tag, next)
    }

    /// Sends the exchange's next challenge, asks for the credential check, or refuses.
    fn sasl_next(&mut self, tag: Tag<'static>, next: Result<sasl::Next, ExchangeError>) -> Action {
        match next {
            Ok(sasl::Next::Challenge(exchange, challenge)) => {
                self.state = State::Authenticate(tag, exchange);
                Action::Write(format!("+ {}\r\n", sasl::encode_base64(challenge)).into_bytes())
            }
            Ok(sasl::Next::Done(credentials)) => {
                self.state = State::Deciding;
                Action::Login(LoginRequest {
                    tag: tag.as_ref().to_owned(),
                    credentials,
                })
            }
            Err(ExchangeError::UnknownMechanism) => {
                self.refused(tag.as_ref(), "Unsupported authentication mechanism")
            }
            Err(ExchangeError::Cancelled) => self.bad(tag.as_ref(), "Authentication cancelled"),
            Err(ExchangeError::Invalid(e)) => {
                self.bad(tag.as_ref(), &format!("Invalid SASL response: {e}"))
            }
        }
    }

    fn command(&mut self) -> Option<Action> {
        let command = match self.fragmentizer.decode_message(&CommandCodec::default()) {
            Ok(command) => command,
            Err(DecodeMessageError::MessageTooLong { .. }) => {
                return Some(self.close(b"* BYE Command line too long\r\n"));
            }
            Err(_) => {
                let tag = self
                    .fragmentizer
                    .decode_tag()
                    .map(|t| t.as_ref().to_owned());
                return Some(self.bad(tag.as_deref().unwrap_or("*"), "Invalid command"));
            }
        };
        let Command { tag, body } = command;
        let tag_owned = tag.clone().into_static();
        let tag = tag.as_ref().to_owned();
        Some(match body {
            CommandBody::Capability => Action::Write(
                format!(
                    "* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n",
                    self.capabilities()
                )
                .into_bytes(),
            ),
            CommandBody::Noop => Action::Write(format!("{tag} OK NOOP completed\r\n").into_bytes()),
            CommandBody::Logout => {
                self.close(format!("* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n").as_bytes())
            }
            CommandBody::Id { .. } => Action::Write(
                format!("* ID (\"name\" \"portcullis\")\r\n{tag} OK ID completed\r\n").into_bytes(),
            ),
            CommandBody::StartTLS => {
                if self.settings.tls || !self.settings.starttls {
                    self.bad(&tag, "STARTTLS is not available")
                } else {
                    Action::StartTls(format!("{tag} OK Begin TLS negotiation now\r\n").into_bytes())
                }
            }
            CommandBody::Login { username, password } => {
                if !self.auth_allowed() {
                    return Some(self.refused(&tag, "[PRIVACYREQUIRED] Use STARTTLS first"));
                }
                let login = sasl::parse_login_field(username.as_ref());
                let secret = sasl::parse_password_field(password.declassify().as_ref());
                match (login, secret) {
                    (Ok(login), Ok(secret)) => {
                        self.state = State::Deciding;
                        Action::Login(LoginRequest {
                            tag,
                            credentials: Credentials::new(login, secret),
                        })
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        self.bad(&tag, &format!("Invalid LOGIN arguments: {e}"))
                    }
                }
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                if !self.auth_allowed() {
                    return Some(self.refused(&tag, "[PRIVACYREQUIRED] Use STARTTLS first"));
                }
                let initial = initial_response.as_ref().map(|r| r.declassify().as_ref());
                self.sasl_next(
                    tag_owned,
                    sasl::Exchange::start(mechanism.as_ref(), initial),
                )
            }
            _ => self.bad(&tag, "Log in first"),
        })
    }

    /// A refused or malformed command: `BAD`, and the connection closes after too many.
    fn bad(&mut self, tag: &str, text: &str) -> Action {
        self.bad_commands += 1;
        if self.bad_commands > self.settings.max_bad_commands {
            return self.close(
                format!("{tag} BAD {text}\r\n* BYE Too many invalid commands\r\n").as_bytes(),
            );
        }
        Action::Write(format!("{tag} BAD {text}\r\n").into_bytes())
    }

    /// A well-formed command that is not allowed now: `NO`, counted like a bad command.
    fn refused(&mut self, tag: &str, text: &str) -> Action {
        self.bad_commands += 1;
        if self.bad_commands > self.settings.max_bad_commands {
            return self.close(
                format!("{tag} NO {text}\r\n* BYE Too many invalid commands\r\n").as_bytes(),
            );
        }
        Action::Write(format!("{tag} NO {text}\r\n").into_bytes())
    }

    fn close(&mut self, bytes: &[u8]) -> Action {
        self.state = State::Closed;
        Action::Close(bytes.to_vec())
    }

    /// The login succeeded: the reply for the client, given the backend's capabilities after
    /// login, and whatever the client sent after its login command (pipelined commands), which
    /// belongs to the backend now.
    pub fn login_accepted(mut self, tag: &str, capabilities: &str) -> (Vec<u8>, Vec<u8>) {
        let reply = format!("{tag} OK [CAPABILITY {capabilities}] Logged in\r\n").into_bytes();
        let mut leftover = Vec::new();
        while self.fragmentizer.progress().is_some() {
            if self.fragmentizer.is_message_complete() {
                leftover.extend_from_slice(self.fragmentizer.message_bytes());
            }
        }
        if !self.fragmentizer.is_message_complete() {
            leftover.extend_from_slice(self.fragmentizer.message_bytes());
        }
        (reply, leftover)
    }
}

impl super::PreAuth for PreAuth {
    /// The greeting, sent before anything is read.
    fn greeting(&self) -> Vec<u8> {
        format!(
            "* OK [CAPABILITY {}] portcullis ready\r\n",
            self.capabilities()
        )
        .into_bytes()
    }

    /// Feeds bytes read from the client.
    fn enqueue(&mut self, bytes: &[u8]) {
        self.fragmentizer.enqueue_bytes(bytes);
    }

    /// The next thing to do. Call until it returns [`Action::NeedInput`].
    fn next_action(&mut self) -> Action {
        loop {
            if matches!(self.state, State::Deciding | State::Closed) {
                return Action::NeedInput;
            }
            let Some(fragment) = self.fragmentizer.progress() else {
                if self.fragmentizer.is_max_message_size_exceeded() {
                    return self.close(b"* BYE Command line too long\r\n");
                }
                return Action::NeedInput;
            };
            if let FragmentInfo::Line {
                announcement: Some(LiteralAnnouncement { mode, length }),
                ..
            } = fragment
            {
                if let Some(action) = self.literal_announced(mode, length) {
                    return action;
                }
                continue;
            }
            if !self.fragmentizer.is_message_complete() {
                continue;
            }
            if let Some(action) = self.message_complete() {
                return action;
            }
        }
    }

    /// The TLS handshake finished: capabilities change and nothing from before counts.
    fn tls_started(&mut self) {
        self.settings.tls = true;
        self.fragmentizer = new_fragmentizer(&self.settings);
    }

    /// The login failed. The same words whatever failed; after `max_failures`, goodbye.
    fn login_rejected(&mut self, tag: &str) -> Action {
        self.failures += 1;
        let reply = format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
        if self.failures >= self.settings.max_failures {
            return self
                .close(format!("{reply}* BYE Too many authentication failures\r\n").as_bytes());
        }
        self.state = State::Command;
        Action::Write(reply.into_bytes())
    }

    /// The credential check or the backend is unavailable: a temporary failure.
    fn login_unavailable(&mut self, tag: &str) -> Action {
        self.state = State::Command;
        Action::Write(
            format!("{tag} NO [UNAVAILABLE] Service temporarily unavailable, try again later\r\n")
                .into_bytes(),
        )
    }

    fn timeout_goodbye(&self) -> &'static [u8] {
        b"* BYE Autologout; too long without logging in\r\n"
    }
    fn shutdown_goodbye(&self) -> &'static [u8] {
        b"* BYE Server shutting down\r\n"
    }
}

fn new_fragmentizer(settings: &Settings) -> Fragmentizer {
    // A LOGIN may carry two literals: the limit must fit the line and both.
    let max = settings
        .max_line
        .saturating_add(2 * settings.max_literal as usize);
    Fragmentizer::new(u32::try_from(max).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests;
