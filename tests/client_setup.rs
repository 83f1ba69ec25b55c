//! Clients that configure themselves: Thunderbird's autoconfig and Outlook's Autodiscover
//! served by the portal's listener, the DNS records of `portcullis dns-records`, and the Apple
//! profile offered with a new app password. Each is checked the way its client uses it: the
//! XML against schemas of what Thunderbird and Outlook read, then every server it names logged
//! in to through the real gateway (imaplib, poplib, smtplib, python caldav); the records parsed
//! by dnslib and followed; the profile downloaded by Chromium, read with plistlib and used.

mod common;

use common::*;

struct World {
    _sink: SmtpSink,
    _dovecot: Dovecot,
    _calendar: Radicale,
    _contacts: Radicale,
    _wsgidav: Wsgidav,
    gateway: Gateway,
    pop3s: u16,
    pop3: u16,
}

fn world() -> World {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let calendar = Radicale::start();
    let contacts = Radicale::start();
    let wsgidav = Wsgidav::start();
    let (pop3s, pop3, dav) = (free_port(), free_port(), free_port());
    let tail = format!(
        r#"
[[listener]]
protocol = "portal"
address = "127.0.0.1:{{http}}"
tls = "implicit"

[[listener]]
protocol = "pop3"
address = "127.0.0.1:{pop3s}"
tls = "implicit"
backend = "pop3"

[[listener]]
protocol = "pop3"
address = "127.0.0.1:{pop3}"
tls = "starttls"
backend = "pop3"

[backend.pop3]
address = "127.0.0.1:{pop3_backend}"
tls = "none"
login = "master-user"
master_user = "portcullis"
master_password_file = "{{dir}}/master.secret"
{http}
"#,
        pop3_backend = dovecot.pop3_port,
        http = http_listener(dav, wsgidav.port, calendar.port, contacts.port),
    );
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            // Clients are told to connect to "localhost", the name the test certificate has.
            extra: "[public]\nhost = \"localhost\"\ndisplay_name = \"Example Mail\"\n".into(),
            tail,
            // A portal sign-in is one argon2 check, which must finish within the delay.
            failure_delay_ms: 1000,
            ..Options::default()
        },
    );
    gateway.create_account("alice", "alice long main password");
    World {
        _sink: sink,
        _dovecot: dovecot,
        _calendar: calendar,
        _contacts: contacts,
        _wsgidav: wsgidav,
        gateway,
        pop3s,
        pop3,
    }
}

#[test]
fn autoconfig_autodiscover_and_dns_records_lead_clients_to_the_live_listeners() {
    require_python_module("lxml", "apt-get install python3-lxml");
    require_python_module("dnslib", "pip install dnslib");
    require_python_module("caldav", "pip install caldav");
    let w = world();
    let mail = w.gateway.app_password("alice", "mail", "Thunderbird");
    let calendar = w.gateway.app_password("alice", "calendar", "Calendar");
    let zone = w.gateway.cli_ok(&["dns-records", "example.org"], None);
    let zone_file = w.gateway.dir.path().join("example.org.zone");
    std::fs::write(&zone_file, &zone).expect("write zone");
    let p = &w.gateway.ports;
    let live = [
        ("imap", "SSL", p.imaps),
        ("imap", "STARTTLS", p.imap),
        ("smtp", "SSL", p.submissions),
        ("smtp", "STARTTLS", p.submission),
        ("pop3", "SSL", w.pop3s),
        ("pop3", "STARTTLS", w.pop3),
    ]
    .map(|(kind, security, port)| format!("{kind}:{security}:{port}"))
    .join(",");
    let script = std::fs::read_to_string(repo_path("tests/client_setup.py")).expect("script");
    let out = python(
        &script,
        &[
            &format!("https://localhost:{}", p.http),
            &w.gateway.ca.to_string_lossy(),
            &mail,
            &calendar,
            &repo_path("tests/schemas").to_string_lossy(),
            &zone_file.to_string_lossy(),
            &live,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "{stdout}\n{}\n{zone}\n{}",
        String::from_utf8_lossy(&out.stderr),
        w.gateway.log()
    );
    // Six listeners through autoconfig, three through Autodiscover (one per protocol), six
    // through SRV records.
    assert_eq!(stdout.matches("AUTOCONFIG ").count() - 1, 6, "{stdout}");
    assert_eq!(stdout.matches("AUTODISCOVER ").count() - 1, 6, "{stdout}");
    assert_eq!(stdout.matches("SRV _").count(), 7, "{stdout}");
}

#[test]
fn the_apple_profile_of_a_new_app_password_sets_a_device_up() {
    require("chromium", "apt-get install chromium chromium-driver");
    require("chromedriver", "apt-get install chromium-driver");
    require_python_module("selenium", "pip install selenium");
    require_python_module("caldav", "pip install caldav");
    let w = world();
    let common = std::fs::read_to_string(repo_path("tests/portal_common.py")).expect("common");
    let script =
        std::fs::read_to_string(repo_path("tests/client_setup_browser.py")).expect("script");
    let work = w.gateway.dir.path().join("browser");
    std::fs::create_dir_all(&work).expect("mkdir");
    let out = python(
        &format!("{common}\n{script}"),
        &[
            &format!("https://localhost:{}", w.gateway.ports.http),
            &w.gateway.ports.imaps.to_string(),
            &w.gateway.ca.to_string_lossy(),
            &work.to_string_lossy(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        w.gateway.log()
    );
    for step in ["MAIL-PROFILE OK", "CALDAV-PROFILE OK", "PROFILE-REFUSED OK"] {
        assert!(stdout.contains(step), "{step} missing: {stdout}");
    }
    // The profile held the password; the log never did.
    let log = w.gateway.log();
    assert!(log.contains("Apple profile downloaded"), "{log}");
}
