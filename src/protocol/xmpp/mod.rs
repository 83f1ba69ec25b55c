//! XMPP client-to-server streams before authentication (RFC 6120), sans I/O.
//!
//! The stream header, the features, mandatory STARTTLS with the stream restart, and SASL PLAIN
//! (RFC 4616) after TLS. XML is read with rxml, a restricted XML parser: no DTD (so no entity
//! expansion), no processing instructions, no entities beyond the predefined five, and a cap on
//! every token. On top of it each top-level element before authentication is capped in size,
//! so an element that never closes is cut off, not buffered. Any XML fault ends the stream with
//! a stream error.

use rxml::{Event as XmlEvent, Parse, Parser, WithOptions};

use super::xml_escape as escape;

use crate::protocol::sasl::{self, ExchangeError};
use crate::protocol::{Action, LoginRequest};

const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// How the machine is set up for one connection.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The XMPP domain served (the `to` the client must name).
    pub domain: String,
    /// Largest top-level element (and stream header) before authentication, in bytes.
    pub max_element: usize,
    pub max_failures: u32,
    pub tls: bool,
    pub starttls: bool,
    pub plaintext_auth: bool,
    /// Stream id to send in our header.
    pub stream_id: String,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the client's stream header.
    Header,
    /// Waiting for a top-level element (STARTTLS, auth).
    Elements,
    /// A SASL challenge was sent (the exchange waits in `PreAuth::exchange`): the next element
    /// is the `<response/>`.
    AwaitingResponse,
    Deciding,
    /// Logged in and `<success/>` sent: waiting for the client's stream restart.
    Restarting,
    Closed,
}

/// How the client's stream restart after `<success/>` went.
#[derive(Debug)]
pub enum Restart {
    /// Read more input and pass it to `enqueue`.
    NeedInput,
    /// The restart, as the backend should hear it: the client's new stream header with any
    /// whitespace and XML declaration before it dropped, then whatever the client sent after it.
    Restarted(Vec<u8>),
    /// Not a stream restart: write this stream error and close.
    Failed(Action),
}

/// A top-level element being read.
#[derive(Debug, Default)]
struct Element {
    namespace: String,
    name: String,
    mechanism: Option<String>,
    text: String,
    depth: usize,
}

/// The pre-authentication part of one client stream.
pub struct PreAuth {
    settings: Settings,
    parser: Parser,
    buffer: Vec<u8>,
    state: State,
    header_sent: bool,
    /// Elements open below the stream root.
    element: Option<Element>,
    /// Bytes the current element (or the header) has used so far.
    element_bytes: usize,
    failures: u32,
    /// The SASL exchange waiting for the client's `<response/>`.
    exchange: Option<sasl::Exchange>,
    /// Bytes the current parser has taken: none means a stream header has yet to begin.
    parser_used: usize,
    /// While restarting: the bytes of the new stream header read so far.
    restart_header: Vec<u8>,
    /// While restarting: where the header's start tag begins in `restart_header` (after the
    /// XML declaration, if any).
    restart_tag_start: usize,
}

impl PreAuth {
    pub fn new(settings: Settings) -> Self {
        Self {
            parser: new_parser(settings.max_element),
            settings,
            buffer: Vec::new(),
            state: State::Header,
            header_sent: false,
            element: None,
            element_bytes: 0,
            failures: 0,
            exchange: None,
            parser_used: 0,
            restart_header: Vec::new(),
            restart_tag_start: 0,
        }
    }

    fn auth_allowed(&self) -> bool {
        self.settings.tls || self.settings.plaintext_auth
    }

    /// Our stream header and the features for this stage.
    fn header_and_features(&mut self) -> String {
        self.header_sent = true;
        let features = if !self.settings.tls && self.settings.starttls {
            format!("<starttls xmlns='{NS_TLS}'><required/></starttls>")
        } else if self.auth_allowed() {
            let offered: String = sasl::MECHANISMS
                .iter()
                .map(|m| format!("<mechanism>{m}</mechanism>"))
                .collect();
            format!("<mechanisms xmlns='{NS_SASL}'>{offered}</mechanisms>")
        } else {
            String::new()
        };
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' id='{}' from='{}' version='1.0' xml:lang='en'><stream:features>{features}</stream:features>",
            self.settings.stream_id,
            escape(&self.settings.domain)
        )
    }

    /// A stream error, then the end of the stream (RFC 6120 section 4.9).
    pub fn stream_error(&mut self, condition: &str, text: Option<&str>) -> Action {
        let header = if self.header_sent {
            String::new()
        } else {
            self.header_sent = true;
            format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' id='{}' from='{}' version='1.0'>",
                self.settings.stream_id,
                escape(&self.settings.domain)
            )
        };
        let text = text.map_or(String::new(), |t| {
            format!("<text xmlns='{NS_STREAM_ERRORS}'>{}</text>", escape(t))
        });
        self.state = State::Closed;
        Action::Close(
            format!("{header}<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/>{text}</stream:error></stream:stream>")
                .into_bytes(),
        )
    }

    /// A failed authentication exchange of any kind (a refused login, a mechanism or encoding
    /// the client got wrong, an abort): after `max_failures` of them the stream closes, so no
    /// client can go on failing on one connection.
    fn sasl_failure(&mut self, condition: &str) -> Action {
        self.failures += 1;
        self.exchange = None;
        let reply = format!("<failure xmlns='{NS_SASL}'><{condition}/></failure>");
        if self.failures >= self.settings.max_failures {
            self.state = State::Closed;
            return Action::Close(format!("{reply}</stream:stream>").into_bytes());
        }
        self.state = State::Elements;
        Action::Write(reply.into_bytes())
    }

    fn element_done(&mut self, element: Element) -> Action {
        match (
            element.namespace.as_str(),
            element.name.as_str(),
            &self.state,
        ) {
            (NS_TLS, "starttls", State::Elements) => {
                if self.settings.tls || !self.settings.starttls {
                    return Action::Close(
                        format!("<failure xmlns='{NS_TLS}'/></stream:stream>").into_bytes(),
                    );
                }
                self.state = State::Header;
                Action::StartTls(format!("<proceed xmlns='{NS_TLS}'/>").into_bytes())
            }
            (NS_SASL, "auth", State::Elements) => {
                if !self.auth_allowed() {
                    return self.sasl_failure("encryption-required");
                }
                // RFC 6120 6.4.2: no text is no initial response, "=" an empty one.
                let text = element.text.trim();
                let next = (!text.is_empty())
                    .then(|| decode(text))
                    .transpose()
                    .and_then(|initial| {
                        let mechanism = element.mechanism.as_deref().unwrap_or("");
                        sasl::Exchange::start(mechanism, initial.as_deref())
                    });
                self.sasl_next(next)
            }
            (NS_SASL, "response", State::AwaitingResponse) => match self.exchange.take() {
                Some(exchange) => {
                    let next = decode(element.text.trim())
                        .and_then(|response| exchange.respond(&response));
                    self.sasl_next(next)
                }
                None => self.stream_error("not-authorized", None),
            },
            (NS_SASL, "abort", _) => self.sasl_failure("aborted"),
            _ => self.stream_error("not-authorized", None),
        }
    }

    /// Sends the exchange's next challenge, asks for the credential check, or fails.
    fn sasl_next(&mut self, next: Result<sasl::Next, ExchangeError>) -> Action {
        match next {
            Ok(sasl::Next::Challenge(exchange, challenge)) => {
                self.exchange = Some(exchange);
                self.state = State::AwaitingResponse;
                let reply = match sasl::encode_base64(challenge) {
                    text if text.is_empty() => format!("<challenge xmlns='{NS_SASL}'/>"),
                    text => format!("<challenge xmlns='{NS_SASL}'>{text}</challenge>"),
                };
                Action::Write(reply.into_bytes())
            }
            Ok(sasl::Next::Done(credentials)) => {
                self.state = State::Deciding;
                Action::Login(LoginRequest {
                    tag: String::new(),
                    credentials,
                })
            }
            Err(ExchangeError::UnknownMechanism) => self.sasl_failure("invalid-mechanism"),
            Err(ExchangeError::Cancelled) => self.sasl_failure("aborted"),
            Err(ExchangeError::Invalid(sasl::SaslError::Base64)) => {
                self.sasl_failure("incorrect-encoding")
            }
            Err(ExchangeError::Invalid(_)) => self.sasl_failure("malformed-request"),
        }
    }

    fn xml(&mut self, event: XmlEvent) -> Option<Action> {
        self.element_bytes += event_len(&event);
        if self.element_bytes > self.settings.max_element {
            return Some(self.stream_error("policy-violation", Some("element too large")));
        }
        match event {
            XmlEvent::XmlDeclaration(..) => None,
            XmlEvent::StartElement(_, (namespace, name), attributes) => match &mut self.element {
                Some(element) => {
                    element.depth += 1;
                    None
                }
                None if self.state == State::Header => {
                    if namespace.as_str() != NS_STREAMS || name.as_str() != "stream" {
                        return Some(self.stream_error("invalid-namespace", None));
                    }
                    let to = attributes
                        .get(&rxml::Namespace::NONE, "to")
                        .map(|v| v.to_string());
                    if to
                        .as_deref()
                        .is_some_and(|to| !to.eq_ignore_ascii_case(&self.settings.domain))
                    {
                        return Some(self.stream_error("host-unknown", None));
                    }
                    self.state = State::Elements;
                    self.element_bytes = 0;
                    let reply = self.header_and_features();
                    Some(Action::Write(reply.into_bytes()))
                }
                None => {
                    self.element = Some(Element {
                        namespace: namespace.as_str().to_owned(),
                        name: name.as_str().to_owned(),
                        mechanism: attributes
                            .get(&rxml::Namespace::NONE, "mechanism")
                            .map(|v| v.to_string()),
                        text: String::new(),
                        depth: 0,
                    });
                    None
                }
            },
            XmlEvent::Text(_, text) => {
                if let Some(element) = &mut self.element
                    && element.depth == 0
                {
                    element.text.push_str(&text);
                }
                None
            }
            XmlEvent::EndElement(_) => match self.element.take() {
                Some(mut element) if element.depth > 0 => {
                    element.depth -= 1;
                    self.element = Some(element);
                    None
                }
                Some(element) => {
                    self.element_bytes = 0;
                    Some(self.element_done(element))
                }
                // The client closed its stream.
                None => {
                    self.state = State::Closed;
                    Some(Action::Close(b"</stream:stream>".to_vec()))
                }
            },
        }
    }
}

/// A SASL response in XMPP: base64, where "=" is an empty one (RFC 6120 6.4.2).
fn decode(text: &str) -> Result<Vec<u8>, ExchangeError> {
    if text == "=" {
        return Ok(Vec::new());
    }
    Ok(sasl::decode_base64(text.as_bytes())?)
}

fn new_parser(max_token: usize) -> Parser {
    Parser::with_options(rxml::Options {
        max_token_length: max_token,
        ..rxml::Options::default()
    })
}

fn event_len(event: &XmlEvent) -> usize {
    match event {
        XmlEvent::XmlDeclaration(m, _)
        | XmlEvent::StartElement(m, _, _)
        | XmlEvent::EndElement(m)
        | XmlEvent::Text(m, _) => m.len(),
    }
}

impl super::PreAuth for PreAuth {
    fn greeting(&self) -> Vec<u8> {
        // The client speaks first in XMPP.
        Vec::new()
    }

    fn enqueue(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    fn next_action(&mut self) -> Action {
        loop {
            if matches!(
                self.state,
                State::Deciding | State::Restarting | State::Closed
            ) {
                return Action::NeedInput;
            }
            if self.state == State::Header && !self.header_started() {
                // Whitespace before a stream header (after the TCP or TLS handshake) is not
                // XML, but harmless: clients send a newline there.
                skip_whitespace(&mut self.buffer);
            }
            // Called even with no new bytes: the parser may hold an event (the end of a
            // self-closing element) that needs none.
            let mut input: &[u8] = &self.buffer;
            let before = input.len();
            let parsed = self.parser.parse(&mut input, false);
            let used = before - input.len();
            self.parser_used += used;
            self.buffer.drain(..used);
            match parsed {
                Ok(Some(event)) => {
                    if let Some(action) = self.xml(event) {
                        return action;
                    }
                }
                Ok(None) => return self.stream_error("not-well-formed", None),
                Err(rxml::error::EndOrError::NeedMoreData) => {
                    // Bytes the parser holds in a partial token count towards the element too.
                    if self.element_bytes + used > self.settings.max_element {
                        return self.stream_error("policy-violation", Some("element too large"));
                    }
                    if used == 0 {
                        return Action::NeedInput;
                    }
                }
                Err(rxml::error::EndOrError::Error(rxml::Error::RestrictedXml(what))) => {
                    return self.stream_error("restricted-xml", Some(what));
                }
                Err(_) => return self.stream_error("not-well-formed", None),
            }
        }
    }

    fn tls_started(&mut self) {
        self.restart_header.clear();
        self.settings.tls = true;
        self.buffer.clear();
        self.parser = new_parser(self.settings.max_element);
        self.parser_used = 0;
        self.state = State::Header;
        self.header_sent = false;
        self.element = None;
        self.element_bytes = 0;
    }

    fn login_rejected(&mut self, _tag: &str) -> Action {
        self.sasl_failure("not-authorized")
    }

    fn login_unavailable(&mut self, _tag: &str) -> Action {
        // The gateway's failure, not the client's: not counted.
        self.state = State::Elements;
        Action::Write(
            format!("<failure xmlns='{NS_SASL}'><temporary-auth-failure/></failure>").into_bytes(),
        )
    }

    fn timeout_goodbye(&self) -> &'static [u8] {
        b"<stream:error><connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    }

    fn shutdown_goodbye(&self) -> &'static [u8] {
        b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    }
}

impl PreAuth {
    /// Whether any byte of the current stream header has been parsed.
    fn header_started(&self) -> bool {
        self.parser_used > 0
    }

    /// The login succeeded: `<success/>` for the client. The client restarts its stream next
    /// (RFC 6120 section 6.4.6); call [`Self::next_restart`] to read it.
    pub fn login_accepted(&mut self) -> Vec<u8> {
        self.state = State::Restarting;
        self.parser = new_parser(self.settings.max_element);
        self.parser_used = 0;
        self.element = None;
        self.element_bytes = 0;
        self.restart_header.clear();
        self.restart_tag_start = 0;
        format!("<success xmlns='{NS_SASL}'/>").into_bytes()
    }

    /// Reads the client's stream restart. The backend gets a restart it accepts whatever the
    /// client put around it: whitespace left over after `</auth>` and before the new header is
    /// dropped, and so is an XML declaration (optional, and a backend whose parser was reset
    /// at `<success/>` refuses one that does not open its input). The header itself is checked
    /// like the first one and passed on byte for byte, so its prefixes match what follows.
    pub fn next_restart(&mut self) -> Restart {
        if self.state != State::Restarting {
            return Restart::Failed(self.stream_error("not-authorized", None));
        }
        if !self.header_started() {
            skip_whitespace(&mut self.buffer);
            if self.buffer.first().is_some_and(|&b| b != b'<') {
                return Restart::Failed(self.stream_error("not-well-formed", None));
            }
        }
        loop {
            let mut input: &[u8] = &self.buffer;
            let before = input.len();
            let parsed = self.parser.parse(&mut input, false);
            let used = before - input.len();
            self.restart_header.extend_from_slice(&self.buffer[..used]);
            self.parser_used += used;
            self.buffer.drain(..used);
            if self.restart_header.len() > self.settings.max_element {
                return Restart::Failed(
                    self.stream_error("policy-violation", Some("stream header too large")),
                );
            }
            match parsed {
                Ok(Some(XmlEvent::XmlDeclaration(..))) => {
                    self.restart_tag_start = self.restart_header.len();
                }
                Ok(Some(XmlEvent::StartElement(_, (namespace, name), attributes))) => {
                    if namespace.as_str() != NS_STREAMS || name.as_str() != "stream" {
                        return Restart::Failed(self.stream_error("invalid-namespace", None));
                    }
                    if attributes
                        .get(&rxml::Namespace::NONE, "to")
                        .is_some_and(|to| !to.eq_ignore_ascii_case(&self.settings.domain))
                    {
                        return Restart::Failed(self.stream_error("host-unknown", None));
                    }
                    let tag = &self.restart_header[self.restart_tag_start..];
                    let mut restart = tag.trim_ascii_start().to_vec();
                    restart.append(&mut self.buffer);
                    self.state = State::Closed;
                    return Restart::Restarted(restart);
                }
                Ok(Some(_)) | Ok(None) => {
                    return Restart::Failed(self.stream_error("not-well-formed", None));
                }
                Err(rxml::error::EndOrError::NeedMoreData) => {
                    if used == 0 {
                        return Restart::NeedInput;
                    }
                }
                Err(rxml::error::EndOrError::Error(rxml::Error::RestrictedXml(what))) => {
                    return Restart::Failed(self.stream_error("restricted-xml", Some(what)));
                }
                Err(_) => return Restart::Failed(self.stream_error("not-well-formed", None)),
            }
        }
    }
}

/// Drops XML whitespace (RFC 6120 section 11.7) from the front of `buffer`.
fn skip_whitespace(buffer: &mut Vec<u8>) {
    let blank = buffer
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    buffer.drain(..blank);
}

#[cfg(test)]
mod tests;
