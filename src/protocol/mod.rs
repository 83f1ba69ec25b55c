//! Protocol state machines before login, without I/O: bytes in, actions out.
//!
//! Each protocol's machine implements [`PreAuth`], so one driver (`server::session`) runs them
//! all: it owns the socket, the deadlines, STARTTLS and the credential check, and the machine
//! owns the grammar and the replies.

pub mod dovecot_auth;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod imap;
pub mod nginx_auth;
pub mod pop3;
pub mod sasl;
pub mod smtp;
pub mod xmpp;

use sasl::Credentials;

/// A login as a client typed it, safe for a log line: at most 64 characters, control
/// characters replaced (the text is whatever a client sent).
pub fn printable(login: &str) -> String {
    login
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Escapes text for XML content and attributes (either quote), so that a reader gets back
/// exactly `text`: tab, line feed and carriage return become character references, because a
/// reader turns a literal CR into LF and, in an attribute, any of them into a space; characters
/// XML 1.0 cannot carry at all (other C0 controls, U+FFFE, U+FFFF) become U+FFFD rather than
/// making the document malformed.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Write these bytes to the client.
    Write(Vec<u8>),
    /// Write these bytes, then run the TLS handshake; input buffered before it is discarded.
    StartTls(Vec<u8>),
    /// Decide these credentials, then report back with `login_rejected`, `login_unavailable`
    /// or the protocol's `login_accepted`.
    Login(LoginRequest),
    /// Write these bytes, then close the connection.
    Close(Vec<u8>),
    /// Read more input and pass it to `enqueue`.
    NeedInput,
}

/// What [`take_line`] found at the front of a buffer.
pub(crate) enum Line {
    /// A whole line, without its line end (LF or CRLF).
    Complete(Vec<u8>),
    /// No line end yet, and the buffer is within the bound.
    NeedMore,
    /// The line is longer than the bound, ended or not.
    TooLong,
}

/// Takes the next line off the front of `buffer`, for the line-based protocols (submission,
/// POP3). A line longer than `max_line` is refused whether or not its end has arrived.
pub(crate) fn take_line(buffer: &mut Vec<u8>, max_line: usize) -> Line {
    let Some(end) = buffer.iter().position(|&b| b == b'\n') else {
        return if buffer.len() > max_line {
            Line::TooLong
        } else {
            Line::NeedMore
        };
    };
    if end > max_line {
        return Line::TooLong;
    }
    let mut line: Vec<u8> = buffer.drain(..=end).collect();
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Line::Complete(line)
}

/// A login the client asked for.
#[derive(Debug)]
pub struct LoginRequest {
    /// The IMAP command tag the answer goes to (SMTP has none).
    pub tag: String,
    pub credentials: Credentials,
}

/// The pre-authentication half of a protocol, as the session driver sees it.
pub trait PreAuth: Send {
    /// The first bytes the server sends.
    fn greeting(&self) -> Vec<u8>;
    /// Bytes read from the client.
    fn enqueue(&mut self, bytes: &[u8]);
    /// The next thing to do; call until [`Action::NeedInput`].
    fn next_action(&mut self) -> Action;
    /// The TLS handshake after STARTTLS finished.
    fn tls_started(&mut self);
    /// The login in `tag` failed (same reply whatever failed).
    fn login_rejected(&mut self, tag: &str) -> Action;
    /// The credential check or the backend is unavailable.
    fn login_unavailable(&mut self, tag: &str) -> Action;
    /// What to say when the login deadline passes.
    fn timeout_goodbye(&self) -> &'static [u8];
    /// What to say when the gateway shuts down before login.
    fn shutdown_goodbye(&self) -> &'static [u8];
}

/// Helpers for the machines' tests: drive a machine and read what it would write.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Action, PreAuth};

    /// Feeds `input`, then collects actions until the machine needs input or does something
    /// other than write (a login, STARTTLS, a close).
    pub fn feed(machine: &mut dyn PreAuth, input: &[u8]) -> Vec<Action> {
        machine.enqueue(input);
        let mut out = Vec::new();
        loop {
            match machine.next_action() {
                Action::NeedInput => return out,
                action => {
                    let stop = !matches!(action, Action::Write(_));
                    out.push(action);
                    if stop {
                        return out;
                    }
                }
            }
        }
    }

    /// Everything the actions would write, with a login shown as `<login NAME>`.
    pub fn written(actions: &[Action]) -> String {
        actions
            .iter()
            .map(|action| match action {
                Action::Write(b) | Action::Close(b) | Action::StartTls(b) => {
                    String::from_utf8_lossy(b).into_owned()
                }
                Action::Login(request) => format!("<login {}>", request.credentials.login),
                Action::NeedInput => String::new(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::xml_escape;
    use rxml::{Event, Parse, Parser};

    /// What a reader gets back from `<a v="escaped">escaped</a>`: the attribute, then the text.
    fn read_back(text: &str) -> (String, String) {
        let escaped = xml_escape(text);
        let document = format!("<a v=\"{escaped}\">{escaped}</a>");
        let (mut parser, mut input) = (Parser::default(), document.as_bytes());
        let (mut attribute, mut content) = (String::new(), String::new());
        while let Some(event) = parser.parse(&mut input, true).expect("well-formed") {
            match event {
                Event::StartElement(_, _, attributes) => {
                    for (_, value) in attributes.iter() {
                        attribute.push_str(value);
                    }
                }
                Event::Text(_, chunk) => content.push_str(&chunk),
                _ => {}
            }
        }
        (attribute, content)
    }

    #[test]
    fn escaped_text_reads_back_unchanged_in_content_and_attributes() {
        let text = "a<b>&'\"\tc\r\nd\re";
        assert_eq!(read_back(text), (text.to_owned(), text.to_owned()));
    }

    #[test]
    fn characters_xml_cannot_carry_become_the_replacement_character() {
        let (attribute, content) = read_back("a\u{0}b\u{1b}c\u{fffe}");
        assert_eq!(content, "a\u{fffd}b\u{fffd}c\u{fffd}");
        assert_eq!(attribute, content);
    }
}
