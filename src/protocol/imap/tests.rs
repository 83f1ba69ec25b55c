use super::*;
use crate::protocol::testing::{feed, written};
use crate::protocol::{Action, LoginRequest, PreAuth as _};

fn settings() -> Settings {
    Settings {
        max_line: 8192,
        max_literal: 8192,
        max_failures: 3,
        max_bad_commands: 8,
        tls: true,
        starttls: false,
        plaintext_auth: false,
    }
}

fn plaintext() -> Settings {
    Settings {
        tls: false,
        starttls: true,
        ..settings()
    }
}

fn login_of(actions: &[Action]) -> (&str, &str, &[u8]) {
    match actions.last() {
        Some(Action::Login(LoginRequest { tag, credentials })) => {
            (tag, &credentials.login, credentials.secret.expose())
        }
        other => panic!("expected a login, got {other:?}"),
    }
}

#[test]
fn greeting_advertises_what_may_be_used() {
    let tls = PreAuth::new(settings());
    let g = String::from_utf8(tls.greeting()).unwrap();
    assert!(g.starts_with("* OK [CAPABILITY IMAP4rev1 "), "{g}");
    assert!(g.contains("AUTH=PLAIN") && !g.contains("LOGINDISABLED") && !g.contains("STARTTLS"));
    let plain = PreAuth::new(plaintext());
    let g = String::from_utf8(plain.greeting()).unwrap();
    assert!(
        g.contains("STARTTLS") && g.contains("LOGINDISABLED") && !g.contains("AUTH="),
        "{g}"
    );
}

#[test]
fn rfc3501_examples_capability_noop_logout() {
    let mut m = PreAuth::new(settings());
    let out = written(&feed(&mut m, b"abcd CAPABILITY\r\n"));
    assert!(out.starts_with("* CAPABILITY IMAP4rev1"), "{out}");
    assert!(out.ends_with("abcd OK CAPABILITY completed\r\n"));
    assert_eq!(
        written(&feed(&mut m, b"a002 NOOP\r\n")),
        "a002 OK NOOP completed\r\n"
    );
    let out = feed(&mut m, b"A023 LOGOUT\r\n");
    assert!(matches!(out.last(), Some(Action::Close(_))));
    assert_eq!(
        written(&out),
        "* BYE Logging out\r\nA023 OK LOGOUT completed\r\n"
    );
}

#[test]
fn rfc3501_login_example_and_quoted_strings() {
    let mut m = PreAuth::new(settings());
    let out = feed(&mut m, b"a001 LOGIN SMITH SESAME\r\n");
    assert_eq!(login_of(&out), ("a001", "SMITH", &b"SESAME"[..]));
    let mut m = PreAuth::new(settings());
    let out = feed(
        &mut m,
        b"a1 LOGIN \"alice@example.org\" \"pa ss\\\"word\"\r\n",
    );
    assert_eq!(
        login_of(&out),
        ("a1", "alice@example.org", &b"pa ss\"word"[..])
    );
}

#[test]
fn literals_get_a_continuation_and_arrive_whole() {
    let mut m = PreAuth::new(settings());
    let out = feed(&mut m, b"a1 LOGIN {5}\r\n");
    assert_eq!(written(&out), "+ Ready for literal data\r\n");
    let out = feed(&mut m, b"alice {6}\r\n");
    assert_eq!(written(&out), "+ Ready for literal data\r\n");
    let out = feed(&mut m, b"secret\r\n");
    assert_eq!(login_of(&out), ("a1", "alice", &b"secret"[..]));
    // Non-synchronizing literals are taken without a continuation.
    let mut m = PreAuth::new(settings());
    let out = feed(&mut m, b"a2 LOGIN {5+}\r\nalice {2+}\r\npw\r\n");
    assert_eq!(login_of(&out), ("a2", "alice", &b"pw"[..]));
}

#[test]
fn authenticate_plain_with_initial_response_and_with_continuation() {
    // RFC 4616 example message, RFC 4959 SASL-IR form.
    let mut m = PreAuth::new(settings());
    let out = feed(
        &mut m,
        b"a1 AUTHENTICATE PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n",
    );
    assert_eq!(login_of(&out), ("a1", "tim", &b"tanstaaftanstaaf"[..]));
    let mut m = PreAuth::new(settings());
    assert_eq!(
        written(&feed(&mut m, b"a2 AUTHENTICATE PLAIN\r\n")),
        "+ \r\n"
    );
    let out = feed(&mut m, b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
    assert_eq!(login_of(&out), ("a2", "tim", &b"tanstaaftanstaaf"[..]));
}

#[test]
fn authenticate_login_runs_the_shared_exchange() {
    let mut m = PreAuth::new(settings());
    assert!(m.capabilities().contains("AUTH=PLAIN AUTH=LOGIN"));
    assert_eq!(
        written(&feed(&mut m, b"a1 AUTHENTICATE LOGIN\r\n")),
        "+ VXNlcm5hbWU6\r\n"
    );
    assert_eq!(written(&feed(&mut m, b"dGlt\r\n")), "+ UGFzc3dvcmQ6\r\n");
    let out = feed(&mut m, b"c2VjcmV0\r\n");
    assert_eq!(login_of(&out), ("a1", "tim", &b"secret"[..]));
    // With the login as initial response (SASL-IR), and cancelled at the password.
    let mut m = PreAuth::new(settings());
    assert_eq!(
        written(&feed(&mut m, b"a2 AUTHENTICATE LOGIN dGlt\r\n")),
        "+ UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        written(&feed(&mut m, b"*\r\n")),
        "a2 BAD Authentication cancelled\r\n"
    );
}

#[test]
fn sasl_errors_are_bad_and_leave_the_connection_usable() {
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"a1 AUTHENTICATE PLAIN\r\n");
    assert_eq!(
        written(&feed(&mut m, b"*\r\n")),
        "a1 BAD Authentication cancelled\r\n"
    );
    feed(&mut m, b"a2 AUTHENTICATE PLAIN\r\n");
    let out = written(&feed(&mut m, b"!!notbase64\r\n"));
    assert!(out.starts_with("a2 BAD"), "{out}");
    // NUL inside a field (four fields), non-UTF-8 login.
    for ir in ["AGEAYgBj", "AP/+AHB3"] {
        let out = written(&feed(
            &mut m,
            format!("a3 AUTHENTICATE PLAIN {ir}\r\n").as_bytes(),
        ));
        assert!(
            out.starts_with("a3 BAD Invalid SASL response"),
            "{ir}: {out}"
        );
    }
    let out = written(&feed(&mut m, b"a4 AUTHENTICATE CRAM-MD5\r\n"));
    assert_eq!(out, "a4 NO Unsupported authentication mechanism\r\n");
    let out = feed(&mut m, b"a5 LOGIN alice pw\r\n");
    assert_eq!(login_of(&out).0, "a5");
}

#[test]
fn an_authorization_identity_goes_to_the_credential_check() {
    // "bob\0alice\0pw": whether bob is alice's own account is the credential check's call.
    let mut m = PreAuth::new(settings());
    let out = feed(&mut m, b"a1 AUTHENTICATE PLAIN Ym9iAGFsaWNlAHB3\r\n");
    let Some(Action::Login(request)) = out.last() else {
        panic!("no login: {}", written(&out));
    };
    assert_eq!(request.credentials.login, "alice");
    assert_eq!(request.credentials.authzid.as_deref(), Some("bob"));
}

#[test]
fn non_utf8_login_and_nul_in_literal_are_bad() {
    let mut m = PreAuth::new(settings());
    let mut all = feed(&mut m, b"a1 LOGIN {2+}\r\n\xff\xfe pw\r\n");
    all.extend(feed(&mut m, b""));
    let text = written(&all);
    assert!(text.contains("a1 BAD Invalid LOGIN arguments"), "{text}");
    let mut m = PreAuth::new(settings());
    let text = written(&feed(&mut m, b"a2 LOGIN {5+}\r\nal\0ce pw\r\n"));
    // imap-codec refuses NUL in a literal (RFC 9051 `literal` is CHAR8, no NUL) before we see it.
    assert!(text.starts_with("a2 BAD"), "{text}");
}

#[test]
fn before_tls_login_is_refused_and_starttls_discards_buffered_plaintext() {
    let mut m = PreAuth::new(plaintext());
    let out = written(&feed(&mut m, b"a1 LOGIN alice pw\r\n"));
    assert_eq!(out, "a1 NO [PRIVACYREQUIRED] Use STARTTLS first\r\n");
    let out = written(&feed(&mut m, b"a2 AUTHENTICATE PLAIN AHRpbQB0aW0=\r\n"));
    assert!(out.starts_with("a2 NO [PRIVACYREQUIRED]"), "{out}");
    // STARTTLS with an injected command behind it in the same packet.
    let out = feed(&mut m, b"a3 STARTTLS\r\na4 LOGIN alice pw\r\n");
    assert!(matches!(out.last(), Some(Action::StartTls(_))));
    m.tls_started();
    assert!(m.capabilities().contains("AUTH=PLAIN"));
    assert!(!m.capabilities().contains("STARTTLS"));
    // The injected LOGIN is gone: nothing happens until the client speaks over TLS.
    assert!(feed(&mut m, b"").is_empty());
    assert_eq!(
        written(&feed(&mut m, b"a5 STARTTLS\r\n")),
        "a5 BAD STARTTLS is not available\r\n"
    );
}

#[test]
fn too_long_literals_are_refused() {
    let mut m = PreAuth::new(settings());
    // A synchronizing literal announced at 4 GiB - 1: refused, the client sends no data.
    let out = written(&feed(&mut m, b"a1 LOGIN {4294967295}\r\n"));
    assert_eq!(out, "a1 BAD [TOOBIG] Literal too long\r\n");
    assert_eq!(
        written(&feed(&mut m, b"a2 NOOP\r\n")),
        "a2 OK NOOP completed\r\n"
    );
    // Past u32: not a literal at all, just a bad command.
    let out = written(&feed(&mut m, b"a3 LOGIN {4294967296}\r\n"));
    assert!(out.starts_with("a3 BAD"), "{out}");
    // Non-synchronizing and too long: the data would follow anyway, so hang up.
    let out = feed(&mut m, b"a4 LOGIN {100000+}\r\n");
    assert!(matches!(out.last(), Some(Action::Close(_))), "{out:?}");
}

#[test]
fn an_endless_line_is_cut_off() {
    let mut m = PreAuth::new(settings());
    let mut closed = false;
    for _ in 0..100 {
        let out = feed(&mut m, &[b'a'; 4096]);
        if let Some(Action::Close(bytes)) = out.last() {
            assert_eq!(bytes, b"* BYE Command line too long\r\n");
            closed = true;
            break;
        }
    }
    assert!(closed, "the machine kept buffering");
}

#[test]
fn garbage_and_commands_before_login_count_towards_the_limit() {
    let mut m = PreAuth::new(settings());
    assert_eq!(
        written(&feed(&mut m, b"a1 SELECT INBOX\r\n")),
        "a1 BAD Log in first\r\n"
    );
    assert_eq!(
        written(&feed(&mut m, b"\x00\x01\x02\r\n")),
        "* BAD Invalid command\r\n"
    );
    assert_eq!(
        written(&feed(&mut m, b"a2 FOO\r\n")),
        "a2 BAD Invalid command\r\n"
    );
    for i in 3..=7 {
        feed(&mut m, format!("a{i} FOO\r\n").as_bytes());
    }
    let out = feed(&mut m, b"a9 FOO\r\n");
    assert!(matches!(out.last(), Some(Action::Close(_))));
    assert!(written(&out).ends_with("* BYE Too many invalid commands\r\n"));
}

#[test]
fn failures_close_after_the_limit_with_one_reply_for_all() {
    let mut m = PreAuth::new(settings());
    for i in 1..=3 {
        let out = feed(&mut m, format!("t{i} LOGIN alice wrong\r\n").as_bytes());
        assert_eq!(login_of(&out).0, format!("t{i}"));
        let reply = m.login_rejected(&format!("t{i}"));
        let text = written(std::slice::from_ref(&reply));
        assert!(text.starts_with(&format!(
            "t{i} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        )));
        assert_eq!(matches!(reply, Action::Close(_)), i == 3);
    }
}

#[test]
fn unavailable_is_a_temporary_failure() {
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"t1 LOGIN alice pw\r\n");
    let text = written(&[m.login_unavailable("t1")]);
    assert!(text.starts_with("t1 NO [UNAVAILABLE]"), "{text}");
    assert_eq!(
        written(&feed(&mut m, b"t2 NOOP\r\n")),
        "t2 OK NOOP completed\r\n"
    );
}

#[test]
fn pipelined_commands_after_login_go_to_the_backend() {
    let mut m = PreAuth::new(settings());
    let out = feed(
        &mut m,
        b"a1 LOGIN alice pw\r\na2 SELECT INBOX\r\na3 FETCH 1 (BODY[])\r\na4 APP",
    );
    assert_eq!(login_of(&out).0, "a1");
    let (reply, leftover) = m.login_accepted("a1", "IMAP4rev1 IDLE");
    assert_eq!(reply, b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
    assert_eq!(
        leftover,
        b"a2 SELECT INBOX\r\na3 FETCH 1 (BODY[])\r\na4 APP"
    );
}

#[test]
fn plaintext_auth_when_the_operator_allows_it_on_loopback() {
    let mut m = PreAuth::new(Settings {
        plaintext_auth: true,
        ..plaintext()
    });
    let caps = m.capabilities();
    assert!(
        caps.contains("AUTH=PLAIN") && caps.contains("STARTTLS") && !caps.contains("LOGINDISABLED")
    );
    let out = feed(&mut m, b"a1 LOGIN alice pw\r\n");
    assert_eq!(login_of(&out).0, "a1");
}
