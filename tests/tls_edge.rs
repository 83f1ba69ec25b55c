//! TLS for a hosting provider, checked with `openssl s_client`: certificates chosen by SNI
//! (ECDSA and RSA for one name, a default), TLS 1.2 and 1.3 only with modern suites,
//! resumption (also on another node sharing the store), and certificates reloaded when their
//! files change or on SIGHUP without dropping open sessions.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Options, require};

const OPENSSL: &str = "apt-get install openssl";

/// A self-signed certificate for `name`: `ec` (P-256) or `rsa` (2048 bits).
fn make_cert(dir: &Path, stem: &str, name: &str, kind: &str) -> (PathBuf, PathBuf) {
    let (chain, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    let mut command = Command::new("openssl");
    command.args(["req", "-x509", "-nodes", "-days", "2", "-newkey"]);
    match kind {
        "ec" => command.args(["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        _ => command.arg("rsa:2048"),
    };
    let out = command
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&chain)
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
        ])
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (chain, key)
}

/// `openssl s_client` to `port` with `args`, sending `a LOGOUT` after the greeting; its whole
/// output (the handshake report and the IMAP dialogue).
fn s_client(port: u16, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-crlf",
            "-ign_eof",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let _ = child.stdin.take().expect("stdin").write_all(b"a LOGOUT\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "s_client {args:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The subject's CN and the key size the server showed, or None if the handshake failed.
fn shown(report: &str) -> Option<(String, u32)> {
    if !report.contains("* OK") {
        return None;
    }
    let subject = report
        .lines()
        .find_map(|l| l.strip_prefix("subject=CN = "))?
        .trim()
        .to_owned();
    let bits = report
        .lines()
        .find_map(|l| l.strip_prefix("Server public key is "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((subject, bits))
}

fn protocol(report: &str) -> Option<String> {
    report
        .lines()
        .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
        .map(|l| l.split(", Cipher").next().unwrap_or(l).to_owned())
}

fn fingerprint(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(path)
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The fingerprint of the certificate the server shows for `name`.
fn served_fingerprint(port: u16, name: &str, dir: &Path) -> String {
    let report = s_client(port, &["-servername", name, "-showcerts"]);
    let pem: String = report
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .take_while(|l| !l.starts_with("-----END CERTIFICATE"))
        .chain(["-----END CERTIFICATE-----"])
        .map(|l| format!("{l}\n"))
        .collect();
    let file = dir.join("served.pem");
    std::fs::write(&file, pem).expect("write");
    fingerprint(&file)
}

fn tls_section(dir: &Path, reload_check_secs: u64) -> String {
    format!(
        r#"reload_check_secs = {reload_check_secs}

[[tls.certificate]]
chain = "{d}/shop-ec.crt"
private_key = "{d}/shop-ec.key"

[[tls.certificate]]
chain = "{d}/shop-rsa.crt"
private_key = "{d}/shop-rsa.key"

[[tls.certificate]]
chain = "{d}/org.crt"
private_key = "{d}/org.key"
default = true
"#,
        d = dir.display()
    )
}

#[test]
fn certificates_by_name_modern_protocols_shared_resumption_and_reload() {
    require("openssl", OPENSSL);
    let certs = common::open_tempdir();
    let dir = certs.path();
    make_cert(dir, "shop-ec", "mail.shop.example", "ec");
    make_cert(dir, "shop-rsa", "mail.shop.example", "rsa");
    make_cert(dir, "org", "mail.example.org", "ec");

    // No backend is needed: everything here happens before login. The unused port refuses.
    let closed = common::free_port();
    let a = Gateway::start(
        closed,
        closed,
        Options {
            tls: tls_section(dir, 1),
            ..Options::default()
        },
    );
    let port = a.ports.imaps;

    // SNI picks the certificate; ECDSA for clients that can check it, RSA for the others.
    let ecdsa = s_client(port, &["-servername", "mail.shop.example"]);
    assert_eq!(
        shown(&ecdsa),
        Some(("mail.shop.example".into(), 256)),
        "{ecdsa}"
    );
    assert_eq!(protocol(&ecdsa).as_deref(), Some("New, TLSv1.3"), "{ecdsa}");
    let rsa13 = s_client(
        port,
        &[
            "-servername",
            "mail.shop.example",
            "-sigalgs",
            "rsa_pss_rsae_sha256",
        ],
    );
    assert_eq!(
        shown(&rsa13),
        Some(("mail.shop.example".into(), 2048)),
        "{rsa13}"
    );
    let rsa12 = s_client(
        port,
        &[
            "-servername",
            "mail.shop.example",
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-GCM-SHA256",
        ],
    );
    assert_eq!(
        shown(&rsa12),
        Some(("mail.shop.example".into(), 2048)),
        "{rsa12}"
    );
    assert_eq!(protocol(&rsa12).as_deref(), Some("New, TLSv1.2"), "{rsa12}");
    // No name, or a name nobody has: the default.
    for args in [&["-noservername"][..], &["-servername", "other.test"][..]] {
        let report = s_client(port, args);
        assert_eq!(
            shown(&report),
            Some(("mail.example.org".into(), 256)),
            "{report}"
        );
    }

    // The server picks AES-128-GCM with SHA-256 even from a client that lists AES-256 first
    // (its key schedule is the cheaper one), on TLS 1.3 and 1.2 alike.
    let preferred = s_client(
        port,
        &[
            "-servername",
            "mail.shop.example",
            "-ciphersuites",
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
        ],
    );
    assert!(
        preferred.contains("Cipher is TLS_AES_128_GCM_SHA256"),
        "{preferred}"
    );
    let preferred12 = s_client(
        port,
        &[
            "-servername",
            "mail.shop.example",
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256",
        ],
    );
    assert!(
        preferred12.contains("Cipher is ECDHE-RSA-AES128-GCM-SHA256"),
        "{preferred12}"
    );

    // TLS 1.0 and 1.1 are refused, and so are suites without forward secrecy or an AEAD.
    for args in [
        &["-tls1"][..],
        &["-tls1_1"][..],
        &["-tls1_2", "-cipher", "AES128-GCM-SHA256"][..],
        &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"][..],
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA384"][..],
    ] {
        let mut all = vec!["-servername", "mail.shop.example"];
        all.extend_from_slice(args);
        let report = s_client(port, &all);
        assert_eq!(shown(&report), None, "{args:?} was accepted:\n{report}");
    }

    // Resumption, on TLS 1.3 and 1.2, on this node and on a second node sharing the store.
    let b = Gateway::start(
        closed,
        closed,
        Options {
            tls: tls_section(dir, 0),
            store: Some(format!(
                "sqlite://{}/data/portcullis.db",
                a.dir.path().display()
            )),
            ..Options::default()
        },
    );
    for version in ["-tls1_3", "-tls1_2"] {
        let session = dir.join(format!("session{version}"));
        let session = session.to_str().expect("utf-8");
        let first = s_client(
            port,
            &[
                "-servername",
                "mail.example.org",
                version,
                "-sess_out",
                session,
            ],
        );
        assert!(
            protocol(&first).is_some_and(|p| p.starts_with("New")),
            "{first}"
        );
        for (node, on) in [(port, "the same node"), (b.ports.imaps, "another node")] {
            let again = s_client(
                node,
                &[
                    "-servername",
                    "mail.example.org",
                    version,
                    "-sess_in",
                    session,
                ],
            );
            let expected = format!("Reused, TLSv1.{}", &version[6..]);
            assert_eq!(
                protocol(&again),
                Some(expected),
                "{version} on {on}:\n{again}"
            );
        }
    }

    // Reload: a session open before the renewal goes on; new handshakes get the new
    // certificate, on the node that watches files within seconds and on the node that does
    // not only after SIGHUP.
    let mut open = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "mail.example.org",
            "-crlf",
            "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("s_client");
    let mut open_in = open.stdin.take().expect("stdin");
    let mut open_out = BufReader::new(open.stdout.take().expect("stdout"));
    let mut line = String::new();
    open_out.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("* OK"), "{line}");

    let old = fingerprint(&dir.join("org.crt"));
    assert_eq!(served_fingerprint(port, "mail.example.org", dir), old);
    let renewed = tempfile::tempdir().expect("tempdir");
    make_cert(renewed.path(), "org", "mail.example.org", "ec");
    // As certbot does: the key first, then the certificate; the moment between them must not
    // break anything (the pair does not fit, so the old one stays).
    std::fs::copy(renewed.path().join("org.key"), dir.join("org.key")).expect("copy");
    std::fs::copy(renewed.path().join("org.crt"), dir.join("org.crt")).expect("copy");
    let new = fingerprint(&dir.join("org.crt"));
    assert_ne!(old, new);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_fingerprint(port, "mail.example.org", dir) != new {
        assert!(
            Instant::now() < deadline,
            "node A still serves the old certificate:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.log().contains("certificate reloaded"), "{}", a.log());

    open_in.write_all(b"a NOOP\n").expect("write");
    line.clear();
    open_out.read_line(&mut line).expect("NOOP");
    assert!(line.starts_with("a OK"), "the open session broke: {line:?}");
    drop(open_in);
    let _ = open.kill();
    let _ = open.wait();

    assert_eq!(
        served_fingerprint(b.ports.imaps, "mail.example.org", dir),
        old,
        "node B does not watch files"
    );
    let hup = Command::new("kill")
        .args(["-HUP", &b.pid().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_fingerprint(b.ports.imaps, "mail.example.org", dir) != new {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A broken file keeps the certificate in use, and the log says why.
    std::fs::write(
        dir.join("org.crt"),
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.log().contains("keeping the previous certificate") {
        assert!(
            Instant::now() < deadline,
            "no complaint about the bad file:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served_fingerprint(port, "mail.example.org", dir), new);
}
