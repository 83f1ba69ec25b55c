//! The operator's contract: the CLI's verbs, outputs, errors and exit codes.

mod common;

use std::process::Command;

use common::*;

fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("p.toml");
    std::fs::write(
        &path,
        format!(
            r#"default_domain = "example.org"
[store]
url = "sqlite://{root}/p.db"
secret_key_file = "{root}/k.secret"
[tls]
certificate = "{root}/c.crt"
private_key = "{root}/c.key"
[[listener]]
protocol = "imap"
address = "127.0.0.1:1143"
tls = "starttls"
backend = "b"
[backend.b]
address = "127.0.0.1:143"
tls = "none"
login = "master-user"
master_user = "m"
master_password_file = "{root}/m.secret"
{extra}
"#,
            root = dir.display()
        ),
    )
    .unwrap();
    let key = dir.join("k.secret");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    set_mode(&key, 0o600);
    path
}

fn cli(config: &std::path::Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn account_and_app_password_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    // check-config reads what serve reads: the certificate and the master password file.
    let (code, _, err) = cli(&cfg, &["check-config"], "");
    assert_eq!(code, 1);
    assert!(err.contains("c.crt"), "{err}");
    let (code, _, err) = cli(&cfg, &["dev-cert"], "");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&cfg, &["check-config"], "");
    assert_eq!(code, 1);
    assert!(err.contains("m.secret"), "{err}");
    std::fs::write(dir.path().join("m.secret"), "master\n").unwrap();
    set_mode(&dir.path().join("m.secret"), 0o644);
    let (code, _, err) = cli(&cfg, &["check-config"], "");
    assert_eq!(code, 1);
    assert!(err.contains("readable by every user (mode 0644)"), "{err}");
    set_mode(&dir.path().join("m.secret"), 0o600);
    let (code, _, err) = cli(&cfg, &["check-config"], "");
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = cli(
        &cfg,
        &["account", "create", "Alice"],
        "correct horse battery\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.is_empty() && err.contains("alice@example.org"),
        "{out} / {err}"
    );
    let (code, _, err) = cli(&cfg, &["account", "create", "alice@example.org"], "x\n");
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = cli(&cfg, &["account", "create", "bob"], "");
    assert_eq!(code, 1);
    assert!(err.contains("no password on standard input"), "{err}");

    let (code, out, err) = cli(
        &cfg,
        &[
            "app-password",
            "create",
            "alice",
            "--service",
            "mail",
            "--name",
            "Thunderbird at home",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let secret = out.trim();
    assert_eq!(
        out.lines().count(),
        1,
        "the secret is the only line on stdout: {out:?}"
    );
    assert!(
        secret.len() == 16 && secret.bytes().all(|b| b.is_ascii_lowercase()),
        "{secret}"
    );
    assert!(err.contains("will not be shown again"));

    let (code, out, _) = cli(&cfg, &["app-password", "list", "alice"], "");
    assert_eq!(code, 0);
    assert!(
        out.contains("Thunderbird at home") && out.contains("mail") && out.contains("alive"),
        "{out}"
    );
    assert!(!out.contains(secret));
    let (_, json, _) = cli(&cfg, &["app-password", "list", "alice", "--json"], "");
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let id = list[0]["id"].as_i64().unwrap().to_string();

    // The database holds no secret in clear.
    let db = std::fs::read(dir.path().join("p.db")).unwrap();
    let wal = std::fs::read(dir.path().join("p.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(!bytes.windows(21).any(|w| w == b"correct horse battery"));
    }

    let (code, _, err) = cli(&cfg, &["app-password", "revoke", "alice", &id], "");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&cfg, &["app-password", "revoke", "alice", "999"], "");
    assert_eq!(code, 1);
    assert!(err.contains("no app password with id 999"), "{err}");

    let (code, out, _) = cli(&cfg, &["account", "show", "alice"], "");
    assert_eq!(code, 0);
    assert!(out.contains("app passwords only:     on"), "{out}");
    let (code, _, err) = cli(&cfg, &["account", "logout-everywhere", "alice"], "");
    assert_eq!(code, 0);
    assert!(err.contains("generation is now 2"), "{err}");
    // The operator enrols for the owner: the seed, its URI and ten recovery codes, once, on
    // stdout; none of it in the database in clear.
    let (code, out, err) = cli(&cfg, &["account", "two-factor", "alice", "on"], "");
    assert_eq!(code, 0, "{err}");
    let seed = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("secret line")
        .trim()
        .to_owned();
    assert!(
        seed.len() >= 32
            && seed
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
        "{seed}"
    );
    assert!(out.contains("uri:    otpauth://totp/"), "{out}");
    assert_eq!(out.matches("recovery code: ").count(), 10, "{out}");
    assert!(err.contains("two-factor authentication on"), "{err}");
    let db = std::fs::read(dir.path().join("p.db")).unwrap();
    assert!(!db.windows(seed.len()).any(|w| w == seed.as_bytes()));
    let (code, _, err) = cli(&cfg, &["account", "two-factor", "alice", "on"], "");
    assert_eq!(code, 1);
    assert!(err.contains("already on"), "{err}");
    let (code, _, err) = cli(&cfg, &["account", "app-passwords", "alice", "off"], "");
    assert_eq!(code, 1);
    assert!(err.contains("two-factor"), "{err}");
    // The account service's password rules hold at the CLI too.
    let (code, _, err) = cli(&cfg, &["account", "password", "alice"], "123456789\n");
    assert_eq!(code, 1);
    assert!(err.contains("too weak"), "{err}");
    let (code, _, err) = cli(&cfg, &["account", "create", "bob"], "qwertyuiop\n");
    assert_eq!(code, 1);
    assert!(err.contains("too weak"), "{err}");
    // No app password while the option is off.
    let (code, _, err) = cli(
        &cfg,
        &["account", "create", "carol"],
        "carol's long password\n",
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = cli(&cfg, &["account", "app-passwords", "carol", "off"], "");
    assert_eq!(code, 0);
    let (code, _, err) = cli(
        &cfg,
        &[
            "app-password",
            "create",
            "carol",
            "--service",
            "mail",
            "--name",
            "x",
        ],
        "",
    );
    assert_eq!(code, 1);
    assert!(err.contains("app-passwords option is off"), "{err}");
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let (code, _, err) = cli(&cfg, &["account", "show", "nobody"], "");
    assert_eq!(code, 1);
    assert!(err.contains("unknown account nobody@example.org"), "{err}");
    let (code, _, err) = cli(
        &cfg,
        &[
            "app-password",
            "create",
            "nobody",
            "--service",
            "webmail",
            "--name",
            "x",
        ],
        "",
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown service \"webmail\""), "{err}");
    let (code, _, err) = cli(&cfg, &["account", "create", "a b"], "pw\n");
    assert_eq!(code, 1);
    assert!(err.contains("invalid login"), "{err}");

    let bad = config(dir.path(), "frobnicate = true");
    let (code, _, err) = cli(&bad, &["check-config"], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("frobnicate") && err.contains("line 19"),
        "{err}"
    );
    let (code, _, err) = cli(&dir.path().join("missing.toml"), &["check-config"], "");
    assert_eq!(code, 1);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn the_example_config_checks_and_the_default_path_is_used() {
    // A working directory laid out like the repository after scripts/run's set-up.
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml");
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::copy(&example, dir.path().join("config/portcullis.toml")).unwrap();
    std::fs::write(dir.path().join("config/backend-master.secret"), "master\n").unwrap();
    set_mode(&dir.path().join("config/backend-master.secret"), 0o600);
    let key = dir.path().join("config/portal.secret");
    std::fs::write(&key, "a development key of at least 32 bytes\n").unwrap();
    set_mode(&key, 0o600);
    let run = |args: &[&str]| {
        Command::new(binary())
            .args(args)
            .current_dir(dir.path())
            .env_remove("PORTCULLIS_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&["dev-cert"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("certs/localhost.crt").exists());
    let out = run(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config/portcullis.toml: ok (9 listeners, 7 backends)"),
        "{stderr}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");

    // Calendar and contacts on one server: refused, unless the operator says that server
    // keeps them apart, which check-config then repeats as a warning.
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("15233", "15232");
    std::fs::write(dir.path().join("config/portcullis.toml"), &text).unwrap();
    let out = run(&["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("http://127.0.0.1:15232 is behind routes of calendar and contacts"),
        "{stderr}"
    );
    let marked = text.replace(
        "url = \"http://127.0.0.1:15232/\"",
        "url = \"http://127.0.0.1:15232/\"\nshared_between_services = true",
    );
    std::fs::write(dir.path().join("config/portcullis.toml"), marked).unwrap();
    let out = run(&["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: http://127.0.0.1:15232 serves calendar and contacts"),
        "{stderr}"
    );
}

#[test]
fn dangerous_settings_are_refused_unless_named_and_doubtful_ones_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.secret"), "master\n").unwrap();
    set_mode(&dir.path().join("m.secret"), 0o600);
    let cfg = config(dir.path(), "");
    let (code, _, err) = cli(&cfg, &["dev-cert"], "");
    assert_eq!(code, 0, "{err}");
    let check = |extra: &str, replace: (&str, &str)| {
        let text = std::fs::read_to_string(config(dir.path(), extra))
            .unwrap()
            .replace(replace.0, replace.1);
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        cli(&dir.path().join("p.toml"), &["check-config"], "")
    };
    let none = ("", "");
    for (extra, replace, refusal, accept) in [
        (
            "",
            ("127.0.0.1:143", "192.0.2.5:143"),
            "would send the master password without TLS to 192.0.2.5:143",
            "allow_cleartext_to_backend = true",
        ),
        (
            "[[listener]]\nprotocol = \"http\"\naddress = \"127.0.0.1:8443\"\ntls = \"implicit\"\n[[listener.route]]\nservice = \"disk\"\nbackend = \"dav\"\n[backend.dav]\nurl = \"http://dav.internal:8080/\"\nlogin = \"trusted-header\"\n",
            none,
            "would send the trusted user header without TLS to http://dav.internal:8080/",
            "allow_cleartext_to_backend = true",
        ),
        (
            "[auth_server]\nlisten = [\"unix:{dir}/a.sock\"]\nunix_mode = \"0777\"\n",
            none,
            "unix_mode 0777 lets every local user connect",
            "allow_public_listen = true",
        ),
        (
            "[auth_server]\nlisten = [\"0.0.0.0:12345\"]\n",
            none,
            "0.0.0.0:12345: the auth protocol carries passwords in the clear",
            "allow_public_listen = true",
        ),
        (
            "[limits]\nlogin_timeout_secs = 0\n",
            none,
            "login_timeout_secs = 0",
            "",
        ),
    ] {
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let (code, _, err) = check(&extra, replace);
        assert_eq!(code, 1, "{extra}: {err}");
        assert!(err.contains(refusal), "{extra}: {err}");
        if accept.is_empty() {
            continue;
        }
        // The named setting accepts the risk, which check-config then repeats as a warning,
        // where it is one.
        // After the section that takes it: the extra's own, or else [backend.b].
        let accepted = if extra.is_empty() {
            format!("{accept}\n")
        } else {
            format!("{extra}{accept}\n")
        };
        let (code, _, err) = check(&accepted, replace);
        assert_eq!(code, 0, "{accepted}: {err}");
    }
    // Allowed, but worth a word.
    let (code, _, err) = check("[auth]\nfailure_delay_ms = 0\nmax_failures = 100\n", none);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: [auth] failure_delay_ms = 0"),
        "{err}"
    );
    assert!(err.contains("warning: [auth] max_failures = 100"), "{err}");
}

#[test]
fn the_database_and_its_log_are_private_to_the_gateway() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let (code, _, err) = cli(
        &cfg,
        &["account", "create", "alice"],
        "a long main password\n",
    );
    assert_eq!(code, 0, "{err}");
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .map(|m| m.permissions().mode() & 0o777)
            .ok()
    };
    assert_eq!(mode("p.db"), Some(0o600));
    for extra in ["p.db-wal", "p.db-shm"] {
        assert!(
            matches!(mode(extra), None | Some(0o600)),
            "{extra}: {:?}",
            mode(extra)
        );
    }
    // A database left world-readable by an older version is narrowed.
    set_mode(&dir.path().join("p.db"), 0o644);
    let (code, _, err) = cli(&cfg, &["account", "show", "alice"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode("p.db"), Some(0o600));
}

#[test]
fn a_portal_needs_the_secret_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let portal =
        "[[listener]]\nprotocol = \"portal\"\naddress = \"127.0.0.1:9443\"\ntls = \"implicit\"\n";
    let cfg = config(dir.path(), portal);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("secret_key_file", "# secret_key_file")).unwrap();
    let (code, _, err) = cli(&cfg, &["check-config"], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("the portal needs [store] secret_key_file"),
        "{err}"
    );
    // A key file every user can read is refused too, and so is a short one.
    std::fs::write(&cfg, &text).unwrap();
    let key = dir.path().join("k.secret");
    set_mode(&key, 0o644);
    let (code, _, err) = cli(&cfg, &["account", "show", "alice"], "");
    assert_eq!(code, 1);
    assert!(err.contains("readable by every user"), "{err}");
    std::fs::write(&key, "short\n").unwrap();
    set_mode(&key, 0o600);
    let (code, _, err) = cli(&cfg, &["account", "show", "alice"], "");
    assert_eq!(code, 1);
    assert!(err.contains("shorter than 32"), "{err}");
}
