//! Hosted domains from the operator's CLI, against a real authoritative DNS server (dnslib) and
//! a real Dovecot: connect, publish the TXT record, confirm; a second account cannot take the
//! domain; mailboxes log in through the gateway; blocking and deleting cut their sessions within
//! a second; deletion runs the hook that removes the mailbox from Dovecot; disconnecting waits
//! for the mailboxes to go; the domain then goes to another account; support transfers; audit.

mod common;

use std::time::Duration;

use common::*;

struct World {
    dns: DnsServer,
    dovecot: Dovecot,
    gateway: Gateway,
    _sink: SmtpSink,
}

fn world() -> World {
    world_with("")
}

fn world_with(tail: &str) -> World {
    let dns = DnsServer::start();
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(
        sink.port,
        &["anna@shop.example", "ben@shop.example", "owner@example.org"],
    );
    let mail = dovecot.dir.path().join("mail");
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            extra: format!(
                "[platform]\ndomains = [\"example.org\"]\n[dns]\nresolvers = [\"127.0.0.1:{}\"]\n[domains]\non_mailbox_delete = [\"sh\", \"-c\", \"rm -rf -- \\\"$0/$1\\\"\", \"{}\"]\n",
                dns.port,
                mail.display()
            ),
            tail: tail.to_owned(),
            // A portal sign-in is one argon2 check, which must finish within the failure
            // delay; with Chromium and the other tests on two cores, 250 ms is not always enough.
            failure_delay_ms: 1000,
            ..Options::default()
        },
    );
    for login in ["owner", "other", "helper"] {
        gateway.create_account(login, &format!("{login} long main password"));
    }
    World {
        dns,
        dovecot,
        gateway,
        _sink: sink,
    }
}

fn fails(w: &World, args: &[&str], stdin: Option<&str>) -> String {
    let out = w.gateway.cli(args, stdin);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `domain connect`: the TXT record's name and value.
fn connect(w: &World, domain: &str, owner: &str) -> (String, String) {
    let out = w
        .gateway
        .cli_ok(&["domain", "connect", domain, "--owner", owner], None);
    let (name, rest) = out.trim().split_once(" TXT ").expect("a TXT line");
    (name.to_owned(), rest.trim_matches('"').to_owned())
}

#[test]
fn a_hosted_domain_in_a_real_browser() {
    require("chromium", "apt-get install chromium chromium-driver");
    require_python_module("selenium", "pip install selenium");
    let w = world_with(
        "[[listener]]\nprotocol = \"portal\"\naddress = \"127.0.0.1:{http}\"\ntls = \"implicit\"\n[portal]\nattempts_per_minute = 100\n",
    );
    let common = std::fs::read_to_string(repo_path("tests/portal_common.py")).unwrap();
    let script = std::fs::read_to_string(repo_path("tests/domains_browser.py")).unwrap();
    let work = w.gateway.dir.path().join("browser");
    std::fs::create_dir_all(&work).unwrap();
    let out = python(
        &format!("{common}\n{script}"),
        &[
            &format!("https://localhost:{}", w.gateway.ports.http),
            &w.gateway.ports.imaps.to_string(),
            &w.gateway.ca.to_string_lossy(),
            &work.to_string_lossy(),
            &w.dns.records().to_string_lossy(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        w.gateway.log()
    );
    for step in [
        "CONFIRMED",
        "MAILBOX",
        "ADMINISTRATOR",
        "NOT-TAKEN",
        "RECONNECTED",
    ] {
        assert!(stdout.contains(step), "{step} missing: {stdout}");
    }
}

#[test]
fn a_hosted_domain_from_connection_to_transfer() {
    let w = world();
    let cli = |args: &[&str]| w.gateway.cli_ok(args, None);

    // Connect: a pending claim with a challenge of this account and domain.
    let (name, value) = connect(&w, "Shop.Example", "owner");
    assert_eq!(name, "_portcullis-challenge.shop.example");
    assert!(
        value.starts_with("portcullis-domain-verification="),
        "{value}"
    );
    let (other_name, other_value) = connect(&w, "shop.example", "other");
    assert_eq!(other_name, name);
    assert_ne!(other_value, value, "tokens are per account");
    // Nothing published: no confirmation.
    let err = fails(
        &w,
        &["domain", "confirm", "shop.example", "--owner", "owner"],
        None,
    );
    assert!(err.contains("no TXT record"), "{err}");
    // Someone else's token does not confirm it for this account.
    w.dns.set_txt(&[(&name, &[&other_value])]);
    let err = fails(
        &w,
        &["domain", "confirm", "shop.example", "--owner", "owner"],
        None,
    );
    assert!(err.contains("no TXT record"), "{err}");
    w.dns.set_txt(&[(&name, &[&other_value, &value])]);
    cli(&["domain", "confirm", "shop.example", "--owner", "owner"]);
    // Confirmed for the owner: the other account can neither confirm nor connect it now.
    let err = fails(
        &w,
        &["domain", "confirm", "shop.example", "--owner", "other"],
        None,
    );
    assert!(err.contains("not connected to this account"), "{err}");
    let err = fails(
        &w,
        &["domain", "connect", "shop.example", "--owner", "other"],
        None,
    );
    assert!(
        err.contains("already connected to another account"),
        "{err}"
    );
    assert!(!err.contains("owner@"), "says who holds it: {err}");
    // A platform domain is not a customer's; a mailbox is made only in a confirmed domain.
    let err = fails(
        &w,
        &["domain", "connect", "example.org", "--owner", "owner"],
        None,
    );
    assert!(err.contains("own domains"), "{err}");
    let err = fails(
        &w,
        &["account", "create", "bob@shop.example"],
        Some("bob long password\n"),
    );
    assert!(err.contains("mailbox create"), "{err}");
    let err = fails(
        &w,
        &["mailbox", "create", "x@elsewhere.example"],
        Some("long password here\n"),
    );
    assert!(err.contains("not a domain you manage"), "{err}");
    println!("CONFIRMED");

    // A mailbox: it logs in through the gateway to Dovecot with an app password.
    w.gateway.cli_ok(
        &[
            "mailbox",
            "create",
            "anna@shop.example",
            "--first-name",
            "Anna",
        ],
        Some("anna long main password\n"),
    );
    let list = cli(&["mailbox", "list", "shop.example"]);
    assert!(
        list.contains("anna@shop.example") && list.contains("active"),
        "{list}"
    );
    let secret = w.gateway.app_password("anna@shop.example", "mail", "phone");
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let port = w.gateway.ports.imaps;
    let held = Held::start(IMAP_HOLD, port, &ca, "anna@shop.example", &secret);
    assert!(w.dovecot.dir.path().join("mail/anna@shop.example").exists());

    // Blocking cuts the session at once and refuses logins; unblocking does not revive the
    // old app password.
    cli(&["mailbox", "block", "anna@shop.example"]);
    let line = held
        .next(Duration::from_secs(1))
        .expect("cut within a second");
    assert!(line.starts_with("GOT * BYE"), "{line}");
    assert!(imap_login(&w.gateway, "anna@shop.example", &secret).contains("LOGIN-FAILED"));
    cli(&["mailbox", "unblock", "anna@shop.example"]);
    assert!(imap_login(&w.gateway, "anna@shop.example", &secret).contains("LOGIN-FAILED"));
    println!("BLOCKED");

    // Disconnecting waits for the mailboxes.
    let err = fails(&w, &["domain", "disconnect", "shop.example"], None);
    assert!(err.contains("still has 1 mailbox"), "{err}");

    // Deleting cuts the open session within a second, refuses the password, runs the hook.
    let secret = w
        .gateway
        .app_password("anna@shop.example", "mail", "laptop");
    let held = Held::start(IMAP_HOLD, port, &ca, "anna@shop.example", &secret);
    cli(&["mailbox", "delete", "anna@shop.example"]);
    let line = held
        .next(Duration::from_secs(1))
        .expect("cut within a second");
    assert!(line.starts_with("GOT * BYE"), "{line}");
    assert!(imap_login(&w.gateway, "anna@shop.example", &secret).contains("LOGIN-FAILED"));
    assert!(
        !w.dovecot.dir.path().join("mail/anna@shop.example").exists(),
        "the hook did not remove the mailbox from Dovecot"
    );
    println!("DELETED");

    // Without mailboxes it disconnects; then another account connects and confirms it.
    cli(&["domain", "disconnect", "shop.example"]);
    let (name, value) = connect(&w, "shop.example", "other");
    w.dns.set_txt(&[(&name, &[&value])]);
    cli(&["domain", "confirm", "shop.example", "--owner", "other"]);
    assert!(
        cli(&["domain", "show", "shop.example"]).contains("owner:           other@example.org")
    );
    println!("RECONNECTED");

    // Support moves it back with its mailboxes; administrators; the audit log.
    w.gateway.cli_ok(
        &["mailbox", "create", "ben@shop.example"],
        Some("ben long main password\n"),
    );
    cli(&["domain", "transfer", "shop.example", "--to", "owner"]);
    cli(&["domain", "admin", "add", "shop.example", "helper"]);
    let shown = cli(&["domain", "show", "shop.example"]);
    assert!(
        shown.contains("owner:           owner@example.org"),
        "{shown}"
    );
    assert!(
        shown.contains("administrators:  helper@example.org"),
        "{shown}"
    );
    assert!(shown.contains("mailboxes:       1"), "{shown}");
    let err = fails(
        &w,
        &["domain", "admin", "add", "shop.example", "ben@shop.example"],
        None,
    );
    assert!(err.contains("platform account"), "{err}");
    let audit = cli(&["audit", "--domain", "shop.example"]);
    for action in [
        "domain connected",
        "domain confirmed",
        "mailbox created",
        "mailbox blocked",
        "mailbox unblocked",
        "mailbox deleted",
        "domain disconnected",
        "domain transferred",
        "administrator added",
    ] {
        assert!(audit.contains(action), "{action}: {audit}");
    }
    assert!(audit.contains("operator"), "{audit}");
    // Secrets never reach the log.
    assert!(
        !audit.contains(&secret) && !audit.contains("long main password"),
        "{audit}"
    );
    let everyone = cli(&["audit"]);
    assert!(everyone.contains("generation bumped"), "{everyone}");
    println!("AUDITED");
}

/// curl: (status, body).
fn curl(w: &World, args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&w.gateway.ca)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn a_domain_token_manages_its_domains_mailboxes_and_nothing_else() {
    require("curl", "apt-get install curl");
    let w = world_with(
        "[[listener]]\nprotocol = \"portal\"\naddress = \"127.0.0.1:{http}\"\ntls = \"implicit\"\n",
    );
    for (domain, owner) in [("shop.example", "owner"), ("other.example", "other")] {
        let (name, value) = connect(&w, domain, owner);
        w.dns.set_txt(&[(&name, &[&value])]);
        w.gateway
            .cli_ok(&["domain", "confirm", domain, "--owner", owner], None);
    }
    let token = w
        .gateway
        .cli_ok(
            &[
                "domain",
                "token",
                "create",
                "shop.example",
                "--name",
                "provisioning",
            ],
            None,
        )
        .trim()
        .to_owned();
    assert!(token.starts_with("pcd_"), "{token}");
    let base = format!("https://localhost:{}/api/v1", w.gateway.ports.http);
    let auth = format!("Authorization: Bearer {token}");
    let json = "Content-Type: application/json";
    let api = |method: &str, path: &str, body: Option<&str>| {
        let url = format!("{base}{path}");
        let mut args = vec!["-X", method, "-H", &auth, "-H", json];
        if let Some(body) = body {
            args.extend(["--data", body]);
        }
        args.push(&url);
        curl(&w, &args)
    };
    // Create, list, block, reset, delete: no Origin needed, no cookie involved.
    let (status, body) = api(
        "POST",
        "/domains/shop.example/mailboxes",
        Some(r#"{"login":"anna","password":"anna long main password","first_name":"Anna"}"#),
    );
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("anna@shop.example"), "{body}");
    let (status, body) = api("GET", "/domains/shop.example/mailboxes", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""login":"anna@shop.example""#) && body.contains(r#""blocked":false"#),
        "{body}"
    );
    assert_eq!(
        api("POST", "/domains/shop.example/mailboxes/anna/block", None).0,
        204
    );
    assert!(
        api("GET", "/domains/shop.example/mailboxes", None)
            .1
            .contains(r#""blocked":true"#)
    );
    assert_eq!(
        api("POST", "/domains/shop.example/mailboxes/anna/unblock", None).0,
        204
    );
    let (status, body) = api(
        "POST",
        "/domains/shop.example/mailboxes/anna/password",
        Some(r#"{"password":"short"}"#),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("too weak"), "{body}");
    assert_eq!(
        api(
            "POST",
            "/domains/shop.example/mailboxes/anna/password",
            Some(r#"{"password":"a new long password"}"#)
        )
        .0,
        204
    );
    // Nothing but mailboxes: not the owner's things, not another domain, not an account.
    for (method, path) in [
        ("GET", "/domains/shop.example/tokens"),
        ("GET", "/domains/shop.example/audit"),
        ("DELETE", "/domains/shop.example"),
        ("GET", "/domains/other.example/mailboxes"),
        ("POST", "/domains/other.example/mailboxes/x/block"),
    ] {
        let (status, body) = api(method, path, None);
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(
            body.contains("application/problem+json") || body.contains("\"status\":403"),
            "{body}"
        );
    }
    for (method, path) in [
        ("GET", "/account"),
        ("GET", "/domains"),
        ("GET", "/app-passwords"),
    ] {
        assert_eq!(api(method, path, None).0, 401, "{method} {path}");
    }
    // The token is no password: not for IMAP, not for the portal.
    assert!(imap_login(&w.gateway, "anna@shop.example", &token).contains("LOGIN-FAILED"));
    assert!(imap_login(&w.gateway, "owner", &token).contains("LOGIN-FAILED"));
    let origin = format!("Origin: https://localhost:{}", w.gateway.ports.http);
    let signin = format!(r#"{{"login":"owner","password":"{token}"}}"#);
    let url = format!("{base}/session");
    let (status, _) = curl(
        &w,
        &[
            "-X", "POST", "-H", &origin, "-H", json, "--data", &signin, &url,
        ],
    );
    assert_eq!(status, 401);
    // Deleting through the API.
    assert_eq!(
        api("DELETE", "/domains/shop.example/mailboxes/anna", None).0,
        204
    );
    assert_eq!(
        api("GET", "/domains/shop.example/mailboxes", None).1,
        r#"{"mailboxes":[]}"#
    );
    // Its use is on record; revoked, it is refused from the next request.
    let listed = w
        .gateway
        .cli_ok(&["domain", "token", "list", "shop.example"], None);
    assert!(
        listed.contains("live") && listed.contains("127.0.0.1"),
        "{listed}"
    );
    assert!(!listed.contains(&token), "{listed}");
    let id = listed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    w.gateway
        .cli_ok(&["domain", "token", "revoke", "shop.example", &id], None);
    let (status, body) = api("GET", "/domains/shop.example/mailboxes", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not valid"), "{body}");
    // The audit log names the token as who did it.
    let audit = w
        .gateway
        .cli_ok(&["audit", "--domain", "shop.example"], None);
    assert!(
        audit.contains("API token")
            && audit.contains("mailbox blocked")
            && audit.contains("mailbox deleted"),
        "{audit}"
    );
}

#[test]
fn a_listener_sends_a_hosted_domains_mailboxes_to_their_own_backend() {
    let shop_dovecot = Dovecot::start(free_port(), &["anna@shop.example"]);
    let port = free_port();
    let w = world_with(&format!(
        r#"[[listener]]
protocol = "imap"
address = "127.0.0.1:{port}"
tls = "implicit"
backend = "imap"
domain_backends = {{ "shop.example" = "shop-imap" }}

[backend.shop-imap]
address = "127.0.0.1:{}"
tls = "none"
login = "master-user"
master_user = "portcullis"
master_password_file = "{{dir}}/master.secret"
"#,
        shop_dovecot.imap_port
    ));
    let (name, value) = connect(&w, "shop.example", "owner");
    w.dns.set_txt(&[(&name, &[&value])]);
    w.gateway.cli_ok(
        &["domain", "confirm", "shop.example", "--owner", "owner"],
        None,
    );
    w.gateway.cli_ok(
        &["mailbox", "create", "anna@shop.example"],
        Some("anna long main password\n"),
    );
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let anna = w.gateway.app_password("anna@shop.example", "mail", "phone");
    let owner = w.gateway.app_password("owner", "mail", "laptop");
    // Each logs in and opens INBOX (which makes Dovecot create the mailbox).
    drop(Held::start(
        IMAP_HOLD,
        port,
        &ca,
        "anna@shop.example",
        &anna,
    ));
    drop(Held::start(IMAP_HOLD, port, &ca, "owner", &owner));
    // Anna's mailbox is on the shop's Dovecot, the platform account's on the listener's.
    assert!(
        shop_dovecot
            .dir
            .path()
            .join("mail/anna@shop.example")
            .exists()
    );
    assert!(!w.dovecot.dir.path().join("mail/anna@shop.example").exists());
    assert!(w.dovecot.dir.path().join("mail/owner@example.org").exists());
    assert!(
        !shop_dovecot
            .dir
            .path()
            .join("mail/owner@example.org")
            .exists()
    );
}
