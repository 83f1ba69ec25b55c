//! The account portal: real Chromium (Selenium) through the real binary, with the app
//! passwords it makes used over IMAP through the gateway to a real Dovecot; and the portal's
//! HTTP rules (CSRF, headers, what may sign in) with curl.

mod common;

use std::process::Command;

use common::*;

struct World {
    sink: SmtpSink,
    _dovecot: Dovecot,
    gateway: Gateway,
}

/// The portal mails codes through the same sink Dovecot relays to, and hands codes for phones
/// to a command that appends them to `sms.jsonl` in the gateway's folder (`{dir}`).
fn world(portal: &str) -> World {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            tail: format!(
                r#"[[listener]]
protocol = "portal"
address = "127.0.0.1:{{http}}"
tls = "implicit"
[portal]
{portal}
[portal.mail]
relay = "127.0.0.1:{port}"
from = "portal@example.org"
[portal.sms]
command = ["sh", "-c", "cat >> \"$0\"; echo >> \"$0\"", "{{dir}}/sms.jsonl"]
"#,
                port = sink.port
            ),
            // A sign-in is one argon2 check, which must finish within the failure delay; with a
            // dozen Chromiums on two cores at once, 250 ms is not always enough.
            failure_delay_ms: 1000,
            ..Options::default()
        },
    );
    for login in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        gateway.create_account(login, &format!("{login} long main password"));
    }
    World {
        sink,
        _dovecot: dovecot,
        gateway,
    }
}

/// A portal test script with the helpers they share in front of it.
fn portal_script(path: &str) -> String {
    let common = std::fs::read_to_string(repo_path("tests/portal_common.py")).unwrap();
    let script = std::fs::read_to_string(repo_path(path)).unwrap();
    format!("{common}\n{script}")
}

fn browser(w: &World, scenario: &str) -> String {
    require("chromium", "apt-get install chromium chromium-driver");
    require("chromedriver", "apt-get install chromium-driver");
    require_python_module("selenium", "pip install selenium");
    let script = portal_script("tests/portal_browser.py");
    let work = w.gateway.dir.path().join(format!("browser-{scenario}"));
    std::fs::create_dir_all(&work).unwrap();
    let out = python(
        &script,
        &[
            &format!("https://localhost:{}", w.gateway.ports.http),
            &w.gateway.ports.imaps.to_string(),
            &w.gateway.ca.to_string_lossy(),
            &work.to_string_lossy(),
            scenario,
            &w.sink.maildir.to_string_lossy(),
            &w.gateway.dir.path().join("sms.jsonl").to_string_lossy(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{scenario}: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        w.gateway.log()
    );
    // The pages rendered: every screenshot the scenario took is a real image.
    for entry in std::fs::read_dir(&work).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "png") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                bytes.len() > 5000 && bytes.starts_with(b"\x89PNG"),
                "{}",
                path.display()
            );
        }
    }
    stdout
}

#[test]
fn sign_in_create_use_delete_switch_and_log_out_in_a_real_browser() {
    let w = world("");
    let out = browser(&w, "main");
    for step in [
        "CREATED",
        "IMAP-LOGIN OK",
        "IMAP-CUT * BYE",
        "LIMITS",
        "SWITCHED",
        "SIXTH-REFUSED",
        "LOGGED-OUT-ALL",
    ] {
        assert!(out.contains(step), "{step} missing: {out}");
    }
    // The secret shown once never reached the log.
    assert!(!w.gateway.log().contains("secret="), "{}", w.gateway.log());
}

#[test]
fn two_factor_enrolment_sign_in_replay_recovery_codes_and_turning_it_off() {
    let w = world("");
    let out = browser(&w, "two_factor");
    for step in [
        "2FA-ON",
        "2FA-SIGNED-IN",
        "2FA-REPLAY-REFUSED",
        "2FA-RECOVERY",
        "2FA-OFF",
    ] {
        assert!(out.contains(step), "{step} missing: {out}");
    }
}

#[test]
fn restore_access_by_emailed_code_and_by_security_question() {
    let w = world("");
    let out = browser(&w, "restore");
    for step in [
        "PROFILE",
        "NO-ENUMERATION",
        "RESTORED-BY-EMAIL",
        "RESTORED-BY-QUESTION",
    ] {
        assert!(out.contains(step), "{step} missing: {out}");
    }
    // No code reached the log.
    let log = w.gateway.log();
    assert!(!log.contains(" is your"), "{log}");
}

#[test]
fn log_out_on_all_devices_ends_every_session_and_kills_app_passwords() {
    let w = world("");
    let out = browser(&w, "everywhere");
    assert!(out.contains("EVERYWHERE"), "{out}");
}

#[test]
fn a_password_change_kills_app_passwords_and_the_other_sessions() {
    let w = world("");
    let out = browser(&w, "password");
    assert!(out.contains("PASSWORD-CHANGED"), "{out}");
}

#[test]
fn an_app_password_made_long_after_sign_in_needs_the_main_password_again() {
    let w = world("reconfirm_after_secs = 1");
    let out = browser(&w, "reconfirm");
    assert!(out.contains("RECONFIRMED"), "{out}");
}

#[test]
fn a_session_ends_after_the_idle_timeout() {
    let w = world("idle_timeout_secs = 2");
    let out = browser(&w, "idle");
    assert!(out.contains("IDLE-EXPIRED"), "{out}");
}

#[test]
fn the_json_api_does_what_the_pages_do_with_problem_details() {
    let w = world("");
    let script = portal_script("tests/portal_api.py");
    let out = python(
        &script,
        &[
            &format!("https://localhost:{}", w.gateway.ports.http),
            &w.gateway.ports.imaps.to_string(),
            &w.gateway.ca.to_string_lossy(),
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
        "DOCUMENTED-ROUTES",
        "SIGNED-IN",
        "APP-PASSWORD",
        "PROFILE",
        "TWO-FACTOR",
        "SESSIONS",
        "RESTORED",
        "EVERYWHERE",
    ] {
        assert!(stdout.contains(step), "{step} missing: {stdout}");
    }
}

#[test]
fn codes_for_a_phone_go_to_the_sms_webhook_as_json() {
    let hook = SmsWebhook::start();
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            tail: format!(
                "[[listener]]\nprotocol = \"portal\"\naddress = \"127.0.0.1:{{http}}\"\ntls = \"implicit\"\n[portal.sms]\nwebhook = \"http://127.0.0.1:{}/sms\"\n",
                hook.port
            ),
            // As in `world`: beside the browser tests a sign-in's argon2 check may take longer
            // than the usual 250 ms, and a check not done by the failure delay is refused.
            failure_delay_ms: 1000,
            ..Options::default()
        },
    );
    gateway.create_account("alice", "alice long main password");
    let script = r#"
import http.client, json, re, ssl, sys, time
port, ca, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
cookie = None
def call(method, path, body=None):
    global cookie
    conn = http.client.HTTPSConnection("localhost", port, context=ctx)
    headers = {"Origin": f"https://localhost:{port}", "Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request(method, "/api/v1" + path, json.dumps(body) if body is not None else None, headers)
    r = conn.getresponse()
    data = r.read()
    if r.getheader("Set-Cookie"):
        cookie = r.getheader("Set-Cookie").split(";")[0]
    return r.status, json.loads(data) if data else None
status, body = call("POST", "/session", {"login": "alice", "password": "alice long main password"})
assert status == 200, (status, body)
status, body = call("POST", "/profile/contacts/phone", {"value": "+1 (202) 555-0143"})
assert status == 202 and body["sent_to"] == "+12025550143", (status, body)
deadline = time.time() + 10
while time.time() < deadline:
    lines = [json.loads(l) for l in open(log) if l.strip()] if __import__("os").path.exists(log) else []
    if lines:
        break
    time.sleep(0.1)
assert lines and lines[-1]["to"] == "+12025550143", lines
code = re.search(r"\b(\d{6}) is your", lines[-1]["text"]).group(1)
assert call("POST", "/profile/contacts/phone/confirm", {"code": code})[0] == 200
status, profile = call("GET", "/profile")
assert profile["phone"] == "+12025550143", profile
print("WEBHOOK-CONFIRMED")
"#;
    let out = python_ok(
        script,
        &[
            &gateway.ports.http.to_string(),
            &gateway.ca.to_string_lossy(),
            &hook.log.to_string_lossy(),
        ],
    );
    assert!(out.contains("WEBHOOK-CONFIRMED"), "{out}");
    // The code went to the webhook, never to the log.
    assert!(!gateway.log().contains(" is your"), "{}", gateway.log());
}

/// curl against the portal: (status, headers, body).
fn curl(w: &World, args: &[&str]) -> (String, String, String) {
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let out = Command::new("curl")
        .args(["-sS", "--cacert", &ca, "-D", "-", "-o", "-"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn the_portal_takes_main_passwords_only_from_its_own_origin_with_strict_headers() {
    let w = world("");
    let base = format!("https://localhost:{}", w.gateway.ports.http);
    let origin = format!("Origin: {base}");
    let (status, head, body) = curl(&w, &[&format!("{base}/signin")]);
    assert_eq!(status, "200", "{body}");
    for header in [
        "content-security-policy: default-src 'none'; style-src 'self'",
        "frame-ancestors 'none'",
        "strict-transport-security: max-age=",
        "referrer-policy: no-referrer",
        "cache-control: no-store",
    ] {
        assert!(head.contains(header), "{header}: {head}");
    }
    // A right main password signs in: a __Host- cookie, Secure, HttpOnly, SameSite.
    let signin = |login: &str, password: &str, extra: &[&str]| {
        let form = format!("login={login}&password={}", password.replace(' ', "+"));
        let mut args = vec!["-X", "POST", "--data", &form];
        args.extend_from_slice(extra);
        let url = format!("{base}/signin");
        args.push(&url);
        curl(&w, &args)
    };
    let (status, head, _) = signin("alice", "alice long main password", &["-H", &origin]);
    assert_eq!(status, "303", "{head}");
    assert!(
        head.contains("set-cookie: __host-portcullis=")
            && head.contains("; path=/; secure; httponly; samesite=lax; max-age="),
        "{head}"
    );
    // An app password, of any service, never opens the portal; nor a wrong password or an
    // unknown account, all with one answer.
    let secret = w.gateway.app_password("alice", "mail", "Thunderbird");
    let mut bodies = Vec::new();
    for (login, password) in [
        ("alice", secret.as_str()),
        ("alice", "wrong password here"),
        ("nobody", "alice long main password"),
    ] {
        let (status, head, body) = signin(login, password, &["-H", &origin]);
        assert_eq!(status, "401", "{login}: {head}");
        assert!(!head.contains("set-cookie"), "{head}");
        bodies.push(body.replace(login, "LOGIN"));
    }
    assert!(bodies.windows(2).all(|b| b[0] == b[1]), "{bodies:#?}");
    // A state-changing request from another origin, or naming none, is refused.
    for extra in [
        vec!["-H", "Origin: https://evil.example"],
        vec!["-H", "Sec-Fetch-Site: cross-site"],
        vec![],
    ] {
        let (status, _, body) = signin("alice", "alice long main password", &extra);
        assert_eq!(status, "403", "{extra:?}: {body}");
    }
    // Sign-in failures pass the login gate every protocol's logins pass: one line each in its
    // fixed format (throttling and bans are tests/brute_force.rs's and the test below).
    let log = w.gateway.log();
    assert!(
        log.contains("login failed: address=127.0.0.1 login=\"alice\" protocol=portal service=account reason=wrong-credentials"),
        "{log}"
    );
}

#[test]
fn guessing_one_account_slows_down_but_never_locks_its_owner_out() {
    let w = world("");
    let base = format!("https://localhost:{}", w.gateway.ports.http);
    let origin = format!("Origin: {base}");
    let timed = |source: &str, login: &str, password: &str| {
        let form = format!("login={login}&password={}", password.replace(' ', "+"));
        let started = std::time::Instant::now();
        let (status, _, _) = curl(
            &w,
            &[
                "-4",
                "--interface",
                source,
                "-X",
                "POST",
                "--data",
                &form,
                "-H",
                &origin,
                &format!("{base}/signin"),
            ],
        );
        (status, started.elapsed())
    };
    // Ten distinct guesses from one address, one account spelled four ways: the first ones at
    // the failure delay (1 s here), then one per slot, the slots doubling apart.
    let mut times = Vec::new();
    for (n, login) in [
        "alice",
        "Alice",
        "alice@example.org",
        "ALICE",
        "alice",
        "alice",
        "Alice",
        "alice",
        "alice",
        "alice",
    ]
    .iter()
    .enumerate()
    {
        let (status, took) = timed("127.0.0.1", login, &format!("wrong guess number {n}"));
        assert_eq!(status, "401");
        times.push(took);
    }
    eprintln!("refusal times: {times:?}");
    assert!(
        times[..6]
            .iter()
            .all(|t| *t < std::time::Duration::from_millis(1450)),
        "{times:?}"
    );
    assert!(
        times[9] >= std::time::Duration::from_millis(3500),
        "{times:?}"
    );
    // The owner, from another address, still signs in at once.
    let (status, took) = timed("127.0.0.4", "alice", "alice long main password");
    assert_eq!(status, "303");
    assert!(took < std::time::Duration::from_millis(1450), "{took:?}");
}
