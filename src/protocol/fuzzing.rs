//! Drivers for the fuzz targets in `fuzz/` (and for the unit tests that run them on seed
//! inputs in every build): each feeds a peer's arbitrary bytes to a parser that runs before
//! login and asserts that parser's own invariants, not only that it does not panic.
//!
//! The invariants, for every pre-auth machine:
//! - every reply is bounded, and all replies together grow at most linearly with the input;
//! - a machine that closed does nothing more;
//! - it closes before it has answered more protocol errors than its limits allow;
//! - a secret never comes back in anything written (checked for secrets with a byte no reply
//!   contains: a control character or 8-bit byte, so a tag or word a reply legitimately
//!   echoes cannot pass for one);
//! - a login carries bounded fields.

use super::{Action, PreAuth};

/// Largest single reply any pre-auth machine may write.
pub const MAX_REPLY: usize = 8192;

/// Reads the first byte of `data` as the listener's shape and the size of the pieces the
/// rest arrives in.
struct Shape {
    tls: bool,
    starttls: bool,
    plaintext_auth: bool,
    /// Logins alternate between refused and unavailable when set.
    unavailable: bool,
    chunk: usize,
}

fn shape(data: &[u8]) -> (Shape, &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return (
            Shape {
                tls: true,
                starttls: false,
                plaintext_auth: false,
                unavailable: false,
                chunk: 1,
            },
            data,
        );
    };
    let tls = first & 1 != 0;
    (
        Shape {
            tls,
            starttls: !tls && first & 2 != 0,
            plaintext_auth: first & 4 != 0,
            unavailable: first & 8 != 0,
            chunk: usize::from(first >> 4) * 16 + 1,
        },
        rest,
    )
}

fn is_marker(b: u8) -> bool {
    (b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t')) || b >= 0x7f
}

/// What a run produced, for the caller's protocol-specific checks.
#[derive(Debug, Default)]
pub struct Run {
    pub written: Vec<u8>,
    pub logins: usize,
    /// Replies the protocol counts as errors.
    pub errors: u32,
    pub closed: bool,
}

/// Runs `machine` on `input` (in `chunk`-byte pieces) and checks the invariants above.
/// `is_error` tells a protocol-error reply; `max_errors` is how many the machine may answer
/// before it must close.
fn drive(
    machine: &mut dyn PreAuth,
    input: &[u8],
    shape: &Shape,
    is_error: &dyn Fn(&[u8]) -> bool,
    max_errors: u32,
) -> Run {
    let mut run = Run::default();
    let greeting = machine.greeting();
    assert!(greeting.len() <= MAX_REPLY);
    run.written.extend_from_slice(&greeting);
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let mut refuse_next = true;
    let write = |run: &mut Run, bytes: &[u8]| {
        assert!(bytes.len() <= MAX_REPLY, "a {}-byte reply", bytes.len());
        if is_error(bytes) {
            run.errors += 1;
        }
        run.written.extend_from_slice(bytes);
    };
    'input: for piece in input.chunks(shape.chunk.max(1)) {
        machine.enqueue(piece);
        loop {
            let action = machine.next_action();
            assert!(
                !run.closed || matches!(action, Action::NeedInput | Action::Close(_)),
                "acted after closing: {action:?}"
            );
            match action {
                Action::NeedInput => break,
                Action::Write(bytes) => write(&mut run, &bytes),
                Action::StartTls(bytes) => {
                    write(&mut run, &bytes);
                    machine.tls_started();
                }
                Action::Close(bytes) => {
                    write(&mut run, &bytes);
                    run.closed = true;
                    break 'input;
                }
                Action::Login(request) => {
                    run.logins += 1;
                    let credentials = &request.credentials;
                    assert!(credentials.login.len() <= super::sasl::MAX_FIELD * 16);
                    assert!(credentials.secret.expose().len() <= super::sasl::MAX_FIELD * 16);
                    assert!(request.tag.len() <= MAX_REPLY);
                    let secret = credentials.secret.expose();
                    // The answer names the login (`user=`): a secret that is part of the
                    // login shows there legitimately.
                    let in_login = request
                        .credentials
                        .login
                        .as_bytes()
                        .windows(secret.len().max(1))
                        .any(|w| w == secret);
                    if secret.len() >= 4 && secret.iter().copied().any(is_marker) && !in_login {
                        secrets.push(secret.to_vec());
                    }
                    let unavailable = shape.unavailable && !refuse_next;
                    let reply = if unavailable {
                        machine.login_unavailable(&request.tag)
                    } else {
                        machine.login_rejected(&request.tag)
                    };
                    refuse_next = !refuse_next;
                    match reply {
                        // "Try later" is the gateway's failure, not the client's: no limit
                        // counts it (each costs the client a whole new login, and the output
                        // stays linear in the input).
                        Action::Write(bytes) if unavailable => {
                            assert!(bytes.len() <= MAX_REPLY);
                            run.written.extend_from_slice(&bytes);
                        }
                        Action::Write(bytes) => write(&mut run, &bytes),
                        Action::Close(bytes) => {
                            write(&mut run, &bytes);
                            run.closed = true;
                            break 'input;
                        }
                        other => panic!("a login answered with {other:?}"),
                    }
                }
            }
        }
    }
    assert!(
        run.errors <= max_errors,
        "{} error replies without closing (limit {max_errors})",
        run.errors
    );
    assert!(
        run.written.len() <= 4 * MAX_REPLY + 64 * input.len(),
        "{} bytes written for {} read",
        run.written.len(),
        input.len()
    );
    for secret in &secrets {
        assert!(
            !run.written
                .windows(secret.len())
                .any(|w| w == secret.as_slice()),
            "a secret came back in a reply"
        );
    }
    run
}

/// Every line of `bytes` whose status word (after the tag) is `BAD` or `NO`.
fn imap_error(bytes: &[u8]) -> bool {
    bytes.split(|&b| b == b'\n').any(|line| {
        let mut words = line.split(|&b| b == b' ');
        let _tag = words.next();
        matches!(words.next(), Some(b"BAD" | b"NO"))
    })
}

/// The IMAP pre-auth machine.
pub fn imap(data: &[u8]) -> Run {
    let (shape, input) = shape(data);
    let settings = super::imap::Settings {
        max_line: 8192,
        max_literal: 8192,
        max_failures: 3,
        max_bad_commands: 8,
        tls: shape.tls,
        starttls: shape.starttls,
        plaintext_auth: shape.plaintext_auth,
    };
    let mut machine = super::imap::PreAuth::new(settings);
    // Bad commands and failed logins each have their limit; the closing reply may be one more.
    drive(&mut machine, input, &shape, &imap_error, 8 + 3 + 1)
}

fn smtp_error(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|&b| b == b'5' || b == b'4')
}

/// The submission pre-auth machine.
pub fn smtp(data: &[u8]) -> Run {
    let (shape, input) = shape(data);
    let settings = super::smtp::Settings {
        hostname: "gw.test".into(),
        max_line: 4096,
        max_failures: 3,
        max_bad_commands: 10,
        tls: shape.tls,
        starttls: shape.starttls,
        plaintext_auth: shape.plaintext_auth,
        backend_extensions: vec![
            "PIPELINING".into(),
            "SIZE 10240000".into(),
            "AUTH PLAIN LOGIN".into(),
            "8BITMIME".into(),
        ],
    };
    let mut machine = super::smtp::PreAuth::new(settings);
    drive(&mut machine, input, &shape, &smtp_error, 10 + 3 + 1)
}

fn pop3_error(bytes: &[u8]) -> bool {
    bytes.starts_with(b"-ERR")
}

/// The POP3 pre-auth machine.
pub fn pop3(data: &[u8]) -> Run {
    let (shape, input) = shape(data);
    let settings = super::pop3::Settings {
        max_line: 4096,
        max_failures: 3,
        max_bad_commands: 10,
        tls: shape.tls,
        starttls: shape.starttls,
        plaintext_auth: shape.plaintext_auth,
    };
    let mut machine = super::pop3::PreAuth::new(settings);
    drive(&mut machine, input, &shape, &pop3_error, 10 + 3 + 1)
}

fn xmpp_error(bytes: &[u8]) -> bool {
    bytes.windows(b"<failure".len()).any(|w| w == b"<failure")
        || bytes
            .windows(b"<stream:error".len())
            .any(|w| w == b"<stream:error")
}

/// The XMPP pre-auth machine (a stream error always closes; SASL failures have a limit).
pub fn xmpp(data: &[u8]) -> Run {
    let (shape, input) = shape(data);
    let settings = super::xmpp::Settings {
        domain: "example.org".into(),
        max_element: 8192,
        max_failures: 2,
        tls: shape.tls,
        starttls: shape.starttls,
        plaintext_auth: shape.plaintext_auth,
        stream_id: "fuzz".into(),
    };
    let mut machine = super::xmpp::PreAuth::new(settings);
    let run = drive(&mut machine, input, &shape, &xmpp_error, 2 + 1);
    let stream_errors = run
        .written
        .windows(b"<stream:error".len())
        .filter(|w| *w == b"<stream:error")
        .count();
    assert!(stream_errors <= 1, "{stream_errors} stream errors");
    assert!(
        stream_errors == 0 || run.closed,
        "a stream error without a close"
    );
    run
}

/// SASL: base64 and PLAIN as every protocol's exchange reads them.
pub fn sasl(data: &[u8]) {
    use super::sasl::{MAX_FIELD, decode_base64, encode_base64, parse_plain};
    if let Ok(decoded) = decode_base64(data) {
        // What decodes re-encodes to what was sent, less the line's trailing white space (one
        // spelling per message).
        assert_eq!(encode_base64(&decoded).as_bytes(), data.trim_ascii_end());
    }
    match parse_plain(data) {
        Ok(credentials) => {
            assert!(credentials.login.len() <= MAX_FIELD);
            assert!(credentials.secret.expose().len() <= MAX_FIELD);
            assert!(!credentials.login.is_empty());
        }
        Err(e) => {
            // An error names the problem, never the bytes.
            assert!(e.to_string().len() < 40);
        }
    }
}

/// The Dovecot authentication protocol, as the auth server reads a daemon's lines.
pub fn dovecot_auth(data: &[u8]) {
    use super::dovecot_auth::{AuthServer, Event, MAX_LINE, MAX_PENDING, Verdict};
    let (shape, input) = shape(data);
    let mut server = AuthServer::new();
    let mut written = 0usize;
    let mut verdict = Verdict::Rejected;
    'input: for piece in input.chunks(shape.chunk) {
        server.enqueue(piece);
        assert!(
            server.buffered() <= MAX_LINE + shape.chunk + 1,
            "unbounded buffer"
        );
        loop {
            match server.next_event() {
                Event::NeedInput => break,
                Event::Write(text) => written += text.len(),
                Event::Close(text) => {
                    written += text.len();
                    break 'input;
                }
                Event::Verify(request) => {
                    assert!(request.credentials.login.len() <= super::sasl::MAX_FIELD);
                    let answer = server.verdict(request.id, verdict, &request.credentials.login);
                    let secret = request.credentials.secret.expose();
                    // The answer names the login (`user=`): a secret that is part of the
                    // login shows there legitimately.
                    let in_login = request
                        .credentials
                        .login
                        .as_bytes()
                        .windows(secret.len().max(1))
                        .any(|w| w == secret);
                    if secret.len() >= 4 && secret.iter().copied().any(is_marker) && !in_login {
                        assert!(!answer.as_bytes().windows(secret.len()).any(|w| w == secret));
                    }
                    written += answer.len();
                    verdict = match verdict {
                        Verdict::Rejected => Verdict::Accepted,
                        Verdict::Accepted => Verdict::Temporary,
                        Verdict::Temporary => Verdict::Rejected,
                    };
                }
            }
            assert!(server.pending() <= MAX_PENDING);
        }
    }
    assert!(
        written <= 4096 + 8 * input.len(),
        "{written} bytes for {}",
        input.len()
    );
}

/// HTTP: the request-framing sniffer on a byte stream, Basic credentials, and path
/// normalisation on the same bytes.
pub fn http(data: &[u8]) {
    use super::http::sniffer::FramingSniffer;
    use super::http::{normalize_path, parse_basic};
    let (shape, input) = shape(data);
    let max_head = 4096;
    let mut sniffer = FramingSniffer::new(max_head);
    let mut verdicts = 0usize;
    for piece in input.chunks(shape.chunk) {
        sniffer.observe(piece);
        assert!(
            sniffer.buffered() <= max_head + 4096 + shape.chunk,
            "unbounded buffer"
        );
        while let Some(verdict) = sniffer.next_verdict() {
            verdicts += 1;
            if !verdict.is_clean() || verdicts > input.len() + 1 {
                break;
            }
        }
    }
    if let Some((user, password)) = parse_basic(input) {
        assert!(user.len() <= 1024 && password.expose().len() <= 1024);
        assert!(!user.contains(':'));
    }
    if let Ok(text) = std::str::from_utf8(input)
        && let Ok(path) = normalize_path(text)
    {
        assert!(path.starts_with('/'), "{path:?}");
        assert!(
            !path
                .split('/')
                .any(|segment| segment == ".." || segment == "."),
            "{path:?}"
        );
        // Normalising is idempotent.
        assert_eq!(normalize_path(&path).as_deref(), Ok(path.as_str()));
    }
}

/// The PROXY protocol header, read as the listener reads it: as many bytes as the framing
/// asks for, then the parse.
pub fn proxy_header(data: &[u8]) {
    use crate::server::proxy::{MAX_HEADER, more_needed, parse};
    let mut head: Vec<u8> = Vec::new();
    let mut rest = data;
    loop {
        match more_needed(&head) {
            Ok(Some(n)) => {
                assert!(
                    n > 0 && head.len() + n <= MAX_HEADER,
                    "asks for {n} after {}",
                    head.len()
                );
                if rest.len() < n {
                    return;
                }
                head.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            Ok(None) => {
                let _ = parse(&head);
                return;
            }
            Err(e) => {
                assert!(e.to_string().len() < 200);
                return;
            }
        }
    }
}

/// A deployment with one endpoint of each mail kind, for the drivers that render answers.
fn directory() -> &'static crate::discovery::Directory {
    static DIRECTORY: std::sync::OnceLock<crate::discovery::Directory> = std::sync::OnceLock::new();
    DIRECTORY.get_or_init(|| {
        let mut text = String::from(
            "[public]\nhost = \"mail.example.org\"\n[store]\nurl = \"sqlite::memory:\"\n[tls]\ncertificate = \"c\"\nprivate_key = \"k\"\n[backend.b]\naddress = \"127.0.0.1:1\"\nlogin = \"master-user\"\nmaster_user = \"m\"\nmaster_password_file = \"f\"\n",
        );
        for (protocol, port) in [("imap", 993), ("pop3", 995), ("submission", 465)] {
            text.push_str(&format!(
                "[[listener]]\nprotocol = \"{protocol}\"\naddress = \"127.0.0.1:{port}\"\ntls = \"implicit\"\nbackend = \"b\"\n"
            ));
        }
        match crate::config::Config::parse(&text) {
            Ok(config) => crate::discovery::Directory::new(&config),
            Err(e) => panic!("the fuzzing deployment does not parse: {e}"),
        }
    })
}

/// Outlook's Autodiscover request, as the portal reads an unauthenticated POST body; and the
/// answer to what it accepted, which must stay well-formed XML whatever address was asked
/// about (the address is the one part of a client's request the answer repeats).
pub fn autodiscover(data: &[u8]) {
    use crate::discovery::autodiscover::{parse_request, response};
    use rxml::{Event, Parse, Parser};
    let Ok(request) = parse_request(data) else {
        return;
    };
    assert!(!request.email.is_empty() && request.email.len() <= data.len());
    let xml = response(directory(), &request.email);
    let mut parser = Parser::default();
    let mut input = xml.as_bytes();
    let (mut protocols, mut login_names, mut in_login, mut text) =
        (0, Vec::new(), false, String::new());
    loop {
        match parser.parse(&mut input, true) {
            Ok(Some(Event::StartElement(_, (_, name), _))) => {
                protocols += usize::from(name.as_str() == "Protocol");
                in_login = name.as_str() == "LoginName";
                text.clear();
            }
            Ok(Some(Event::Text(_, chunk))) if in_login => text.push_str(&chunk),
            Ok(Some(Event::EndElement(_))) if in_login => {
                login_names.push(std::mem::take(&mut text));
                in_login = false;
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => panic!("the answer is not well-formed XML: {e:?}"),
        }
    }
    assert_eq!(protocols, 3, "{xml}");
    assert!(login_names.iter().all(|l| *l == request.email), "{xml}");
}

/// nginx's auth_http request, its headers as `Name: value` lines; and the answer, whose
/// headers must hold no line break whatever nginx sent.
pub fn nginx_auth(data: &[u8]) {
    use super::nginx_auth::{Answer, Field, Request};
    let headers: Vec<(String, &[u8])> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = std::str::from_utf8(&line[..colon])
                .ok()?
                .trim()
                .to_ascii_lowercase();
            Some((name, line[colon + 1..].trim_ascii()))
        })
        .collect();
    let parsed = Request::parse(|name| {
        let name = name.to_ascii_lowercase();
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    });
    let request = match parsed {
        Ok(request) => request,
        Err(e) => {
            // An error names the header, or at most 64 characters of the method or protocol
            // (up to 4 bytes each), never more of what nginx sent.
            assert!(e.to_string().len() <= 100 + 64 * 4, "{e}");
            return;
        }
    };
    assert!(!request.credentials.login.is_empty());
    assert!(request.credentials.login.len() <= 1024);
    assert!(request.credentials.secret.expose().len() <= 1024);
    for answer in [
        Answer::Refused {
            protocol: request.protocol,
            retry: request.attempt < 3,
        },
        Answer::Unavailable {
            protocol: request.protocol,
        },
    ] {
        for field in answer.fields() {
            if let Field::Text(_, value) = field {
                assert!(!value.contains(['\r', '\n']), "{value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The drivers on hand-written inputs, so every build checks the invariants on the
    //! dialogues real clients have (the fuzzer explores the rest).
    use super::*;

    fn with_shape(first: u8, rest: &[u8]) -> Vec<u8> {
        let mut data = vec![first];
        data.extend_from_slice(rest);
        data
    }

    #[test]
    fn imap_dialogues_keep_the_invariants() {
        let run = imap(&with_shape(
            0x01,
            b"a CAPABILITY\r\nb LOGIN alice \"p\x01ssword\"\r\nc AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldAE=\r\nd LOGIN x y\r\n",
        ));
        assert_eq!(run.logins, 3);
        assert!(run.closed, "the third failure closes");
        let flood = with_shape(0x01, &b"x BOGUS\r\n".repeat(50));
        let run = imap(&flood);
        assert!(run.closed && run.errors <= 12, "{run:?}");
        imap(&with_shape(0x02, b"a STARTTLS\r\nb LOGIN a b\r\n"));
        imap(&with_shape(0x01, &[b'a'; 20_000]));
    }

    #[test]
    fn smtp_dialogues_keep_the_invariants() {
        let run = smtp(&with_shape(
            0x01,
            b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldAE=\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0AQ==\r\nQUIT\r\n",
        ));
        assert_eq!(run.logins, 2);
        let run = smtp(&with_shape(0x01, &b"NOPE\r\n".repeat(40)));
        assert!(run.closed, "{run:?}");
    }

    #[test]
    fn autodiscover_and_nginx_requests_keep_the_invariants() {
        autodiscover(
            b"<Autodiscover xmlns='http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006'><Request><EMailAddress>a&lt;b&amp;&quot;@example.org</EMailAddress></Request></Autodiscover>",
        );
        nginx_auth(
            b"Auth-Method: plain\nAuth-User: alice%0d%0aX: y\nAuth-Pass: s%25\nAuth-Protocol: smtp\nClient-IP: ::1\n",
        );
        // Found by the autodiscover target: an address holding `&#13;`, which the answer
        // wrote back as a literal CR that a reader turns into LF.
        autodiscover(include_bytes!(
            "../../fuzz/seeds/autodiscover/carriage-return-reference"
        ));
        // Found by the nginx_auth target: a method of backslashes, which a Debug-formatted
        // error doubled past the bound.
        nginx_auth(include_bytes!("../../fuzz/seeds/nginx_auth/escaped-method"));
    }

    #[test]
    fn a_secret_that_is_part_of_the_login_may_show_in_the_answer() {
        // Found by the dovecot_auth target: the answer's `user=` names the login.
        dovecot_auth(include_bytes!(
            "../../fuzz/seeds/dovecot_auth/secret-inside-login"
        ));
    }

    #[test]
    fn pop3_dialogues_keep_the_invariants() {
        let run = pop3(&with_shape(
            0x01,
            b"CAPA\r\nUSER alice\r\nPASS secret\x01\r\nAUTH PLAIN AGFsaWNlAHNlY3JldAE=\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0AQ==\r\nQUIT\r\n",
        ));
        assert_eq!(run.logins, 3);
        let run = pop3(&with_shape(0x01, &b"NOPE\r\n".repeat(40)));
        assert!(run.closed, "{run:?}");
        pop3(&with_shape(0x02, b"STLS\r\nUSER a\r\nPASS b\r\n"));
        pop3(&with_shape(0x01, &[b'a'; 20_000]));
    }

    #[test]
    fn xmpp_dialogues_keep_the_invariants() {
        let header = "<?xml version='1.0'?><stream:stream to='example.org' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
        let auth = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldAE=</auth>";
        let run = xmpp(&with_shape(
            0x01,
            format!("{header}{auth}{auth}").as_bytes(),
        ));
        assert_eq!(run.logins, 2);
        let run = xmpp(&with_shape(0x01, b"<stream:stream to='other.example'>"));
        assert!(run.closed);
    }

    #[test]
    fn the_other_parsers_keep_their_invariants() {
        sasl(b"AGFsaWNlAHNlY3JldA==");
        sasl(b"not base64!");
        dovecot_auth(&with_shape(
            0x10,
            b"VERSION\t1\t2\nCPID\t1\nAUTH\t1\tPLAIN\tservice=imap\tresp=AGFsaWNlAHNlY3JldA==\nAUTH\t2\tLOGIN\tservice=smtp\nCONT\t2\tYWxpY2U=\nCONT\t2\tc2VjcmV0AQ==\n",
        ));
        dovecot_auth(&with_shape(0xf0, &[b'A'; 40_000]));
        http(&with_shape(
            0x30,
            b"PUT /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ));
        http(b"\x00/a/../b/./c");
        proxy_header(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 993\r\n");
        proxy_header(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\xc0\x00\x02\x02\x04\xd2\x03\xe1");
        proxy_header(&[b'P'; 300]);
    }
}
