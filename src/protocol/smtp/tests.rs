use super::*;
use crate::protocol::testing::{feed, written};
use crate::protocol::{Action, LoginRequest, PreAuth as _};

fn settings() -> Settings {
    Settings {
        hostname: "gw.test".into(),
        max_line: 4096,
        max_failures: 3,
        max_bad_commands: 10,
        tls: true,
        starttls: false,
        plaintext_auth: false,
        backend_extensions: vec![
            "PIPELINING".into(),
            "SIZE 10240000".into(),
            "AUTH PLAIN LOGIN".into(),
            "STARTTLS".into(),
            "XCLIENT ADDR NAME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "8BITMIME".into(),
        ],
    }
}

fn login(actions: &[Action]) -> (&str, &[u8]) {
    match actions.last() {
        Some(Action::Login(LoginRequest { credentials: c, .. })) => (&c.login, c.secret.expose()),
        other => panic!("expected a login, got {other:?}"),
    }
}

#[test]
fn ehlo_offers_the_backend_extensions_and_our_auth() {
    let mut m = PreAuth::new(settings());
    assert_eq!(m.greeting(), b"220 gw.test ESMTP portcullis\r\n");
    let reply = written(&feed(&mut m, b"EHLO client.example\r\n"));
    assert_eq!(
        reply,
        "250-gw.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 AUTH PLAIN LOGIN\r\n"
    );
    assert_eq!(m.helo_name(), Some("client.example"));
}

#[test]
fn before_tls_auth_is_neither_offered_nor_accepted() {
    let mut m = PreAuth::new(Settings {
        tls: false,
        starttls: true,
        ..settings()
    });
    let reply = written(&feed(&mut m, b"EHLO c\r\n"));
    assert!(
        reply.contains("250-STARTTLS\r\n") || reply.ends_with("250 STARTTLS\r\n"),
        "{reply}"
    );
    assert!(!reply.contains("AUTH"), "{reply}");
    let reply = written(&feed(
        &mut m,
        b"AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n",
    ));
    assert_eq!(reply, "530 5.7.0 Must issue a STARTTLS command first\r\n");
    assert_eq!(
        written(&feed(&mut m, b"MAIL FROM:<a@b>\r\n")),
        "530 5.7.0 Authentication required\r\n"
    );
    // STARTTLS with an injected command in the same packet: the command is discarded.
    let out = feed(
        &mut m,
        b"STARTTLS\r\nAUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n",
    );
    assert!(matches!(out.last(), Some(Action::StartTls(_))));
    m.tls_started();
    assert!(feed(&mut m, b"").is_empty());
    // EHLO again is required after TLS.
    assert_eq!(
        written(&feed(
            &mut m,
            b"AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n"
        )),
        "503 5.5.1 Send EHLO first\r\n"
    );
    let reply = written(&feed(&mut m, b"EHLO c\r\n"));
    assert!(
        reply.ends_with("250 AUTH PLAIN LOGIN\r\n") && !reply.contains("STARTTLS"),
        "{reply}"
    );
}

#[test]
fn auth_plain_with_and_without_initial_response() {
    // RFC 4954 section 4 example.
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"EHLO c\r\n");
    let out = feed(&mut m, b"AUTH PLAIN dGVzdAB0ZXN0ADEyMzQ=\r\n");
    assert_eq!(login(&out), ("test", &b"1234"[..]));
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"EHLO c\r\n");
    assert_eq!(written(&feed(&mut m, b"AUTH PLAIN\r\n")), "334 \r\n");
    let out = feed(&mut m, b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
    assert_eq!(login(&out), ("tim", &b"tanstaaftanstaaf"[..]));
}

#[test]
fn auth_login_both_ways() {
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"EHLO c\r\n");
    assert_eq!(
        written(&feed(&mut m, b"AUTH LOGIN\r\n")),
        "334 VXNlcm5hbWU6\r\n"
    );
    assert_eq!(
        written(&feed(&mut m, b"YWxpY2U=\r\n")),
        "334 UGFzc3dvcmQ6\r\n"
    );
    let out = feed(&mut m, b"c2VjcmV0\r\n");
    assert_eq!(login(&out), ("alice", &b"secret"[..]));
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"EHLO c\r\n");
    assert_eq!(
        written(&feed(&mut m, b"auth login YWxpY2U=\r\n")),
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        login(&feed(&mut m, b"c2VjcmV0\r\n")),
        ("alice", &b"secret"[..])
    );
}

#[test]
fn sasl_errors() {
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"EHLO c\r\n");
    assert_eq!(
        written(&feed(&mut m, b"AUTH PLAIN %%%%\r\n")),
        "501 5.5.2 Invalid base64 data\r\n"
    );
    feed(&mut m, b"AUTH PLAIN\r\n");
    assert_eq!(
        written(&feed(&mut m, b"*\r\n")),
        "501 5.0.0 Authentication cancelled\r\n"
    );
    // NUL inside a field, empty response, non-UTF-8 login.
    for ir in ["AGEAYgBj", "=", "AP/+AHB3"] {
        let reply = written(&feed(&mut m, format!("AUTH PLAIN {ir}\r\n").as_bytes()));
        assert!(
            reply.starts_with("501 5.5.2 Invalid authentication data"),
            "{ir}: {reply}"
        );
    }
    assert_eq!(
        written(&feed(&mut m, b"AUTH CRAM-MD5\r\n")),
        "504 5.5.4 Unrecognized authentication type\r\n"
    );
    assert_eq!(
        login(&feed(&mut m, b"AUTH PLAIN AGEAYg==\r\n")),
        ("a", &b"b"[..])
    );
}

#[test]
fn an_authorization_identity_goes_to_the_credential_check() {
    // "bob\0alice\0pw": whether bob is alice's own account is the credential check's call.
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"EHLO c\r\n");
    let out = feed(&mut m, b"AUTH PLAIN Ym9iAGFsaWNlAHB3\r\n");
    let Some(Action::Login(request)) = out.last() else {
        panic!("no login: {}", written(&out));
    };
    assert_eq!(request.credentials.login, "alice");
    assert_eq!(request.credentials.authzid.as_deref(), Some("bob"));
}

#[test]
fn session_commands_and_errors() {
    let mut m = PreAuth::new(settings());
    assert_eq!(written(&feed(&mut m, b"HELO c\r\n")), "250 gw.test\r\n");
    assert_eq!(written(&feed(&mut m, b"NOOP\r\n")), "250 2.0.0 OK\r\n");
    assert_eq!(written(&feed(&mut m, b"RSET\r\n")), "250 2.0.0 OK\r\n");
    assert_eq!(
        written(&feed(&mut m, b"EHLO\r\n")),
        "501 5.5.4 Syntax: EHLO domain\r\n"
    );
    assert_eq!(
        written(&feed(&mut m, b"FOO\r\n")),
        "500 5.5.2 Command not recognized\r\n"
    );
    assert_eq!(
        written(&feed(&mut m, b"NO\0OP\r\n")),
        "500 5.5.2 Syntax error: control characters\r\n"
    );
    assert_eq!(
        written(&feed(&mut m, b"\xff\xfe\r\n")),
        "500 5.5.2 Syntax error: not UTF-8\r\n"
    );
    assert_eq!(
        written(&feed(&mut m, b"STARTTLS\r\n")),
        "502 5.5.1 STARTTLS not available\r\n"
    );
    let out = feed(&mut m, b"QUIT\r\n");
    assert!(matches!(out.last(), Some(Action::Close(_))));
    assert_eq!(written(&out), "221 2.0.0 Bye\r\n");
}

#[test]
fn long_lines_close_the_connection_but_auth_lines_may_reach_12288() {
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"EHLO c\r\n");
    let long_auth = format!("AUTH PLAIN {}\r\n", "A".repeat(10000));
    let reply = written(&feed(&mut m, long_auth.as_bytes()));
    assert!(reply.starts_with("501"), "{reply}");
    let out = feed(&mut m, &vec![b'x'; 13000]);
    assert!(matches!(out.last(), Some(Action::Close(b)) if b.starts_with(b"500 5.5.6")));
}

#[test]
fn failures_and_bad_commands_are_limited() {
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"EHLO c\r\n");
    for i in 1..=3 {
        login(&feed(&mut m, b"AUTH PLAIN AGEAYg==\r\n"));
        let reply = m.login_rejected("");
        assert!(written(std::slice::from_ref(&reply)).starts_with("535 5.7.8 "));
        assert_eq!(matches!(reply, Action::Close(_)), i == 3);
    }
    let mut m = PreAuth::new(settings());
    let mut closed = false;
    for _ in 0..11 {
        if let Some(Action::Close(b)) = feed(&mut m, b"DATA\r\n").last() {
            assert!(b.ends_with(b"421 4.7.0 Too many errors, closing connection\r\n"));
            closed = true;
        }
    }
    assert!(closed);
}

#[test]
fn unavailable_then_success_hands_over_pipelined_bytes() {
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"EHLO c\r\n");
    login(&feed(&mut m, b"AUTH PLAIN AGEAYg==\r\n"));
    assert_eq!(
        written(&[m.login_unavailable("")]),
        "454 4.7.0 Temporary authentication failure, try again later\r\n"
    );
    login(&feed(
        &mut m,
        b"AUTH PLAIN AGEAYg==\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
    ));
    let (reply, leftover) = m.login_accepted();
    assert_eq!(reply, b"235 2.7.0 Authentication successful\r\n");
    assert_eq!(leftover, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
}

#[test]
fn backend_ehlo_keywords() {
    let lines: Vec<String> = [
        "250-mx.example",
        "250-PIPELINING",
        "250-SIZE 100",
        "250 AUTH PLAIN",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        parse_ehlo_keywords(&lines),
        vec!["PIPELINING", "SIZE 100", "AUTH PLAIN"]
    );
}

#[test]
fn plaintext_auth_when_the_operator_allows_it_on_loopback() {
    let mut m = PreAuth::new(Settings {
        tls: false,
        starttls: true,
        plaintext_auth: true,
        ..settings()
    });
    let reply = written(&feed(&mut m, b"EHLO c\r\n"));
    assert!(
        reply.contains("STARTTLS") && reply.contains("AUTH PLAIN LOGIN"),
        "{reply}"
    );
    assert_eq!(
        login(&feed(&mut m, b"AUTH PLAIN AGEAYg==\r\n")),
        ("a", &b"b"[..])
    );
}
