use super::*;
use crate::protocol::testing::{feed, written};
use crate::protocol::{Action, LoginRequest, PreAuth as _};

fn settings() -> Settings {
    Settings {
        max_line: 4096,
        max_failures: 3,
        max_bad_commands: 10,
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

fn login(actions: &[Action]) -> (&str, &[u8]) {
    match actions.last() {
        Some(Action::Login(LoginRequest { credentials: c, .. })) => (&c.login, c.secret.expose()),
        other => panic!("expected a login, got {other:?}"),
    }
}

#[test]
fn rfc1939_user_and_pass_with_a_password_that_has_spaces() {
    let mut m = PreAuth::new(settings());
    assert_eq!(m.greeting(), b"+OK portcullis POP3 ready\r\n");
    assert_eq!(
        written(&feed(&mut m, b"USER alice\r\n")),
        "+OK Send PASS\r\n"
    );
    let out = feed(&mut m, b"PASS tan staaf\r\n");
    assert_eq!(login(&out), ("alice", &b"tan staaf"[..]));
    // Nothing more is read until the check is decided.
    assert!(feed(&mut m, b"STAT\r\n").is_empty());
    let (reply, pipelined) = m.login_accepted();
    assert_eq!(reply, b"+OK Logged in\r\n");
    assert_eq!(pipelined, b"STAT\r\n");
}

#[test]
fn capa_lists_login_methods_only_after_tls() {
    let mut m = PreAuth::new(plaintext());
    let capa = written(&feed(&mut m, b"CAPA\r\n"));
    assert!(
        capa.starts_with("+OK") && capa.ends_with("\r\n.\r\n"),
        "{capa}"
    );
    assert!(
        capa.contains("\r\nSTLS\r\n") && capa.contains("RESP-CODES"),
        "{capa}"
    );
    assert!(!capa.contains("USER") && !capa.contains("SASL"), "{capa}");
    for command in ["USER alice\r\n", "PASS pw\r\n", "AUTH PLAIN AGEAYg==\r\n"] {
        assert_eq!(
            written(&feed(&mut m, command.as_bytes())),
            "-ERR Use STLS first\r\n"
        );
    }
    let out = feed(&mut m, b"STLS\r\nUSER injected\r\n");
    assert!(matches!(&out[..], [Action::StartTls(b)] if b == b"+OK Begin TLS negotiation\r\n"));
    // What was pipelined behind STLS in plaintext is gone (RFC 2595 section 4).
    m.tls_started();
    assert_eq!(
        written(&feed(&mut m, b"PASS pw\r\n")),
        "-ERR Send USER first\r\n"
    );
    let capa = written(&feed(&mut m, b"CAPA\r\n"));
    assert!(capa.contains("\r\nUSER\r\n") && capa.contains("\r\nSASL PLAIN LOGIN\r\n"));
    assert!(!capa.contains("STLS"), "{capa}");
    assert_eq!(
        written(&feed(&mut m, b"STLS\r\n")),
        "-ERR STLS not available\r\n"
    );
}

#[test]
fn rfc5034_auth_plain_and_login_with_and_without_initial_responses() {
    let mut m = PreAuth::new(settings());
    let out = feed(&mut m, b"AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
    assert_eq!(login(&out), ("tim", &b"tanstaaftanstaaf"[..]));

    let mut m = PreAuth::new(settings());
    assert_eq!(written(&feed(&mut m, b"AUTH PLAIN\r\n")), "+ \r\n");
    let out = feed(&mut m, b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
    assert_eq!(login(&out), ("tim", &b"tanstaaftanstaaf"[..]));

    let mut m = PreAuth::new(settings());
    assert_eq!(
        written(&feed(&mut m, b"auth login\r\n")),
        "+ VXNlcm5hbWU6\r\n"
    );
    assert_eq!(written(&feed(&mut m, b"dGlt\r\n")), "+ UGFzc3dvcmQ6\r\n");
    assert_eq!(login(&feed(&mut m, b"cHc=\r\n")), ("tim", &b"pw"[..]));

    let mut m = PreAuth::new(settings());
    assert_eq!(
        written(&feed(&mut m, b"AUTH\r\n")),
        "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    );
}

#[test]
fn sasl_errors_leave_the_connection_usable() {
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"AUTH PLAIN\r\n");
    assert_eq!(
        written(&feed(&mut m, b"*\r\n")),
        "-ERR Authentication cancelled\r\n"
    );
    let out = written(&feed(&mut m, b"AUTH PLAIN !!notbase64\r\n"));
    assert_eq!(out, "-ERR Invalid SASL response: invalid base64\r\n");
    let out = written(&feed(&mut m, b"AUTH CRAM-MD5\r\n"));
    assert_eq!(out, "-ERR Unrecognized authentication mechanism\r\n");
    // NUL inside a PLAIN field (four fields).
    let out = written(&feed(&mut m, b"AUTH PLAIN AGEAYgBj\r\n"));
    assert!(out.starts_with("-ERR Invalid SASL response"), "{out}");
    let out = feed(&mut m, b"USER alice\r\nPASS pw\r\n");
    assert_eq!(login(&out), ("alice", &b"pw"[..]));
}

#[test]
fn refusals_carry_rfc3206_codes_and_close_after_the_limit() {
    let mut m = PreAuth::new(settings());
    for n in 1..=3 {
        feed(&mut m, b"USER alice\r\nPASS wrong\r\n");
        match m.login_rejected("") {
            Action::Write(b) if n < 3 => {
                assert_eq!(b, b"-ERR [AUTH] Invalid login or password\r\n");
            }
            Action::Close(b) if n == 3 => {
                assert!(b.starts_with(b"-ERR [AUTH] Invalid login or password\r\n"));
            }
            other => panic!("failure {n}: {other:?}"),
        }
    }
    let mut m = PreAuth::new(settings());
    feed(&mut m, b"USER alice\r\nPASS pw\r\n");
    let Action::Write(b) = m.login_unavailable("") else {
        panic!("unavailable closes");
    };
    assert!(b.starts_with(b"-ERR [SYS/TEMP]"));
    // The client may try again.
    assert_eq!(
        login(&feed(&mut m, b"USER alice\r\nPASS pw\r\n")).0,
        "alice"
    );
}

#[test]
fn hostile_input_is_bounded() {
    // A line without end.
    let mut m = PreAuth::new(settings());
    let out = feed(&mut m, &vec![b'a'; 5000]);
    assert!(matches!(out.last(), Some(Action::Close(b)) if b.starts_with(b"-ERR Line too long")));
    // NUL bytes, unknown and early commands count; the limit closes.
    let mut m = PreAuth::new(settings());
    assert_eq!(
        written(&feed(&mut m, b"US\0ER alice\r\n")),
        "-ERR NUL in command\r\n"
    );
    assert_eq!(
        written(&feed(&mut m, b"RETR 1\r\n")),
        "-ERR Log in first\r\n"
    );
    let out = feed(&mut m, &b"XYZZY\r\n".repeat(20));
    assert!(
        matches!(out.last(), Some(Action::Close(b)) if b.ends_with(b"Too many errors, closing connection\r\n"))
    );
    // QUIT says goodbye.
    let mut m = PreAuth::new(settings());
    assert!(matches!(&feed(&mut m, b"QUIT\r\n")[..], [Action::Close(b)] if b == b"+OK Bye\r\n"));
}
