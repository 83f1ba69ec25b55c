//! The operator's command line: run the gateway, manage accounts and app passwords.
//!
//! Secrets never come from argv (other users can read a process's arguments): passwords are
//! read as one line from standard input, and a new app password is the only line written to
//! standard output. Messages for people go to standard error.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

mod domains;

use crate::config::Config;
use crate::credentials::accounts::{AccountService, Outcome};
use crate::credentials::hashing::PasswordHasher;
use crate::credentials::model::{GenerationBump, PasswordLimits, now_ms};
use crate::credentials::{Secret, Service};

/// portcullis: a protocol gateway with per-service app passwords.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_CONFIG",
        default_value = "config/portcullis.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Serve,
    /// Read and validate the configuration, then exit.
    CheckConfig,
    /// Write a self-signed development certificate to the `[tls]` paths of the configuration.
    DevCert {
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print the DNS records (SRV for mail, calendars, contacts and chat; autoconfig and
    /// Autodiscover) that let clients of DOMAIN find this deployment, for its zone.
    #[command(name = "dns-records")]
    DnsRecords { domain: String },
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Manage app passwords.
    #[command(subcommand, name = "app-password")]
    AppPassword(AppPasswordCommand),
    /// Hosted domains: connect, confirm, administrators, API tokens, transfer.
    #[command(subcommand)]
    Domain(domains::DomainCommand),
    /// Mailboxes of hosted domains.
    #[command(subcommand)]
    Mailbox(domains::MailboxCommand),
    /// Addresses banned by the login gate (every node's): list them, or lift one.
    Bans {
        #[command(subcommand)]
        action: Option<BansCommand>,
    },
    /// The store: apply migrations, or copy an installation to another database.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The audit log: every domain, mailbox, administrator and token change and every
    /// generation bump (of one account, one domain, or everyone's, newest first).
    Audit {
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum BansCommand {
    /// List the bans in force (the default).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Lift the ban of an address (an IPv6 address lifts its /64); every node within seconds.
    Lift { address: std::net::IpAddr },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Bring the store (`[store] url`, or --url) to this build's schema; `serve` does this too.
    Migrate {
        #[arg(long)]
        url: Option<String>,
    },
    /// Copy every row of one store into another, empty one (both are migrated first), e.g.
    /// `--from sqlite:///var/lib/portcullis/portcullis.db --to postgres://portcullis@db/portcullis`.
    /// A PostgreSQL password comes from PGPASSWORD or ~/.pgpass, never the command line.
    Copy {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    fn on(self) -> bool {
        matches!(self, Switch::On)
    }
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account; its main password is one line on standard input.
    Create { login: String },
    /// Set a new main password (one line on standard input). With 2FA off this ends every app
    /// password and session.
    Password { login: String },
    /// Turn two-factor authentication on or off; either ends every app password and session.
    TwoFactor { login: String, state: Switch },
    /// Record that access to the account was restored; ends every app password and session.
    Restore { login: String },
    /// Log out on all devices: ends every app password and session.
    LogoutEverywhere { login: String },
    /// On: protocols accept app passwords only. Off: the main password works too (refused
    /// while 2FA is on).
    AppPasswords { login: String, state: Switch },
    /// Show an account.
    Show {
        login: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppPasswordCommand {
    /// Create an app password for one service; prints it once, as the only line on stdout.
    Create {
        login: String,
        #[arg(long)]
        service: String,
        #[arg(long)]
        name: String,
        /// Refuse it from this moment on: `YYYY-MM-DD` (through the end of that day, UTC) or
        /// `YYYY-MM-DDTHH:MM:SSZ`; its live sessions are cut then.
        #[arg(long)]
        expires: Option<String>,
        /// Accept it only from this client network (CIDR or an address); repeat for several.
        #[arg(long = "network", value_name = "CIDR")]
        networks: Vec<String>,
    },
    /// List an account's app passwords (never the secrets).
    List {
        login: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke one app password by its id.
    Revoke { login: String, id: i64 },
}

/// An error for the operator: printed to stderr, exit code 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::CheckConfig => {
            // Everything `serve` would read before listening: the certificate, the key, every
            // backend's CA and master password file, and the secret key file.
            crate::tls::certificates::Certificates::load(config.tls.certificates())?;
            for (name, backend) in &config.backends {
                crate::upstream::Backend::new(name, backend)?;
            }
            if let Some(path) = &config.store.secret_key_file {
                crate::credentials::keys::Keys::load(path)
                    .map_err(|e| CliError(format!("[store] secret_key_file: {e}")))?;
            }
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            eprintln!(
                "{}: ok ({} listeners, {} backends)",
                cli.config.display(),
                config.listeners.len(),
                config.backends.len()
            );
            Ok(())
        }
        Command::DnsRecords { domain } => {
            let domain = crate::credentials::accounts::normalize_domain(&domain)?;
            let directory = crate::discovery::Directory::new(&config);
            print!("{}", crate::discovery::records::zone(&directory, &domain));
            Ok(())
        }
        Command::DevCert { force } => {
            let Some((cert, key)) = config.tls.single() else {
                return Err(CliError(
                    "dev-cert writes the single [tls] certificate and private_key; with [[tls.certificate]] entries, make each with your CA".into(),
                ));
            };
            if !force && cert.exists() && key.exists() {
                eprintln!("{} exists; keeping it (--force to replace)", cert.display());
                return Ok(());
            }
            // Also the names this configuration serves: the default domain (an XMPP client
            // checks the certificate against its JID's domain), XMPP domains, HTTP hosts.
            let mut extra: Vec<String> = config.default_domain.iter().cloned().collect();
            extra.extend(config.backends.values().filter_map(|b| b.domain.clone()));
            extra.extend(
                config
                    .listeners
                    .iter()
                    .flat_map(|l| l.routes.iter().filter_map(|r| r.host.clone())),
            );
            crate::tls::write_dev_certificate_for(cert, key, &extra)?;
            eprintln!("wrote {} and {}", cert.display(), key.display());
            Ok(())
        }
        Command::Account(command) => account(&config, command).await,
        Command::AppPassword(command) => app_password(&config, command).await,
        Command::Domain(command) => domains::domain(&config, command).await,
        Command::Mailbox(command) => domains::mailbox(&config, command).await,
        Command::Store(command) => store(&config, command).await,
        Command::Bans { action } => {
            bans(&config, action.unwrap_or(BansCommand::List { json: false })).await
        }
        Command::Audit {
            account,
            domain,
            limit,
        } => domains::audit(&config, account, domain, limit).await,
    }
}

async fn bans(config: &Config, command: BansCommand) -> Result<(), CliError> {
    let store = crate::store::open(&config.store.url).await?;
    match command {
        BansCommand::List { json } => {
            let bans = store.bans(crate::credentials::model::now_ms()).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&bans).map_err(|e| CliError(e.to_string()))?
                );
            } else if bans.is_empty() {
                eprintln!("no bans in force");
            } else {
                let mut rows = vec![[
                    "ADDRESS".to_owned(),
                    "UNTIL".to_owned(),
                    "FAILURES".to_owned(),
                    "SINCE".to_owned(),
                ]];
                rows.extend(bans.iter().map(|b| {
                    [
                        b.address.clone(),
                        crate::clock::timestamp(b.until),
                        b.failures.to_string(),
                        crate::clock::timestamp(b.created_at),
                    ]
                }));
                print!("{}", table(&rows));
            }
        }
        BansCommand::Lift { address } => {
            let key = crate::credentials::model::Network::of(address).to_string();
            if store.lift_ban(&key).await? {
                eprintln!("lifted the ban of {key}");
            } else {
                return Err(CliError(format!("{key} is not banned")));
            }
        }
    }
    Ok(())
}

async fn store(config: &Config, command: StoreCommand) -> Result<(), CliError> {
    use crate::store::{SqlStore, copy};
    match command {
        StoreCommand::Migrate { url } => {
            if let Some(url) = &url {
                no_password_in_argv(url)?;
            }
            let url = url.unwrap_or_else(|| config.store.url.clone());
            let store = SqlStore::open(&url).await?;
            eprintln!("schema at version {}", copy::version(&store).await?);
        }
        StoreCommand::Copy { from, to } => {
            no_password_in_argv(&from)?;
            no_password_in_argv(&to)?;
            let source = SqlStore::open(&from).await?;
            let target = SqlStore::open(&to).await?;
            for (table, rows) in copy::copy(&source, &target).await? {
                eprintln!("{table}: {rows} rows");
            }
            eprintln!("copied; point [store] url at the new store and restart the gateway");
        }
    }
    Ok(())
}

/// Refuses a database URL with a password in it: the command line is readable by every user
/// of the machine.
fn no_password_in_argv(url: &str) -> Result<(), CliError> {
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo);
    if userinfo.is_some_and(|u| u.contains(':')) {
        return Err(CliError(
            "a password in a database URL on the command line is readable by every user: give it in PGPASSWORD or ~/.pgpass".into(),
        ));
    }
    Ok(())
}

async fn serve(config: Config) -> Result<(), CliError> {
    let shutdown = CancellationToken::new();
    let gateway = crate::server::Gateway::start(config, shutdown.clone()).await?;
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    gateway.run_until_shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Reads one line from stdin as a password; a prompt goes to stderr when stdin is a terminal.
fn read_password(prompt: &str) -> Result<Secret, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError(format!("cannot read the password from standard input: {e}")))?;
    let secret = Secret::from(line.trim_end_matches(['\r', '\n']));
    zeroize::Zeroize::zeroize(&mut line);
    if secret.is_empty() {
        return Err(CliError(
            "no password on standard input (expected one line)".into(),
        ));
    }
    if secret.expose().len() > crate::protocol::sasl::MAX_FIELD {
        return Err(CliError(format!(
            "the password is longer than {} bytes",
            crate::protocol::sasl::MAX_FIELD
        )));
    }
    Ok(secret)
}

fn report(outcome: Outcome, what: &str) {
    match outcome {
        Outcome::Changed(Some(generation)) => {
            eprintln!(
                "{what}; credential generation is now {}: every older app password is dead",
                generation.0
            )
        }
        Outcome::Changed(None) => eprintln!("{what}"),
        Outcome::Unchanged => eprintln!("nothing to do: already so"),
    }
}

/// The account service on the configured store. The CLI changes accounts only through it, by
/// the same rules as the portal; running gateways learn of the change from the store's feed.
async fn accounts(config: &Config) -> Result<AccountService, CliError> {
    let store = crate::store::open(&config.store.url).await?;
    AccountService::configured(store, PasswordHasher::new(1), config).map_err(CliError)
}

async fn account(config: &Config, command: AccountCommand) -> Result<(), CliError> {
    let service = accounts(config).await?.acting("operator", None);
    match command {
        AccountCommand::Create { login } => {
            let login = service.login(&login)?;
            let password = read_password("Main password")?;
            service.create_account(&login, &password).await?;
            eprintln!("created account {login} (app passwords only; 2FA off)");
        }
        AccountCommand::Password { login } => {
            let login = service.login(&login)?;
            service.account(&login).await?;
            let password = read_password("New main password")?;
            report(
                service.change_password(&login, &password).await?,
                "main password changed",
            );
        }
        AccountCommand::TwoFactor { login, state } => {
            let login = service.login(&login)?;
            if state.on() {
                // The operator enrols for the owner: the seed goes to the owner's app, the
                // recovery codes to the owner. Shown once, on stdout only.
                let (enrolment, on) = service.enable_two_factor_for(&login).await?;
                println!(
                    "secret: {}",
                    String::from_utf8_lossy(enrolment.secret.expose())
                );
                println!(
                    "uri:    {}",
                    String::from_utf8_lossy(enrolment.uri.expose())
                );
                for code in &on.recovery_codes {
                    println!("recovery code: {}", String::from_utf8_lossy(code.expose()));
                }
                let account = service.account(&login).await?;
                report(
                    Outcome::Changed(Some(account.generation)),
                    "two-factor authentication on",
                );
            } else {
                report(
                    service.reset_two_factor(&login).await?,
                    "two-factor authentication off",
                );
            }
        }
        AccountCommand::Restore { login } => {
            let login = service.login(&login)?;
            let generation = service
                .end_everything(&login, GenerationBump::AccessRestored)
                .await?;
            report(Outcome::Changed(Some(generation)), "access restored");
        }
        AccountCommand::LogoutEverywhere { login } => {
            let login = service.login(&login)?;
            let generation = service
                .end_everything(&login, GenerationBump::LogoutEverywhere)
                .await?;
            report(Outcome::Changed(Some(generation)), "logged out everywhere");
        }
        AccountCommand::AppPasswords { login, state } => {
            let login = service.login(&login)?;
            let what = if state.on() {
                "app passwords only: the main password no longer opens any protocol"
            } else {
                "legacy mode: the main password opens every protocol"
            };
            report(
                service.set_app_passwords_only(&login, state.on()).await?,
                what,
            );
        }
        AccountCommand::Show { login, json } => {
            let login = service.login(&login)?;
            let (state, passwords) = service.list_app_passwords(&login).await?;
            let alive = passwords.iter().filter(|p| p.alive).count();
            if json {
                let value = serde_json::json!({
                    "login": state.login,
                    "generation": state.generation,
                    "two_factor": state.two_factor,
                    "app_passwords_only": state.app_passwords_only,
                    "main_password_accepted": state.main_password_allowed(),
                    "app_passwords_alive": alive,
                    "app_passwords_total": passwords.len(),
                });
                println!("{value}");
            } else {
                println!("login:                  {}", state.login);
                println!("credential generation:  {}", state.generation.0);
                println!("two-factor:             {}", on_off(state.two_factor));
                println!(
                    "app passwords only:     {}",
                    on_off(state.app_passwords_only)
                );
                println!(
                    "main password accepted: {}",
                    yes_no(state.main_password_allowed())
                );
                println!(
                    "app passwords:          {alive} alive, {} in all",
                    passwords.len()
                );
            }
        }
    }
    Ok(())
}

async fn app_password(config: &Config, command: AppPasswordCommand) -> Result<(), CliError> {
    let service = accounts(config).await?.acting("operator", None);
    match command {
        AppPasswordCommand::Create {
            login,
            service: kind,
            name,
            expires,
            networks,
        } => {
            let login = service.login(&login)?;
            let kind: Service = kind.parse()?;
            let networks: Vec<&str> = networks.iter().map(String::as_str).collect();
            let limits = PasswordLimits::parse(expires.as_deref(), &networks, now_ms())?;
            let made = service
                .create_limited_app_password(&login, kind, &name, &limits)
                .await?;
            let text = std::str::from_utf8(made.secret.expose())
                .map_err(|_| CliError("internal: non-ASCII secret".into()))?;
            println!("{text}");
            eprintln!(
                "app password {} \"{}\" for {kind} created for {login}; it will not be shown again",
                made.id,
                name.trim()
            );
        }
        AppPasswordCommand::List { login, json } => {
            let login = service.login(&login)?;
            let (_, passwords) = service.list_app_passwords(&login).await?;
            if json {
                println!("{}", serde_json::to_string(&passwords)?);
            } else {
                let mut rows = vec![[
                    "ID".to_owned(),
                    "SERVICE".to_owned(),
                    "STATE".to_owned(),
                    "CREATED".to_owned(),
                    "LAST USED".to_owned(),
                    "LIMITS".to_owned(),
                    "NAME".to_owned(),
                ]];
                for p in &passwords {
                    let state = match (p.alive, p.revoked_at) {
                        (true, _) => "alive",
                        (false, Some(_)) => "revoked",
                        (false, None) => "expired",
                    };
                    let limits = p.limits.summary().unwrap_or_else(|| "-".to_owned());
                    let last = match (&p.last_used_at, &p.last_used_ip, &p.last_used_protocol) {
                        (Some(at), Some(ip), Some(proto)) => match &p.last_used_reporter {
                            // An address a daemon reported, not one the gateway saw.
                            Some(by) => {
                                format!("{} {ip} {proto} (reported by {by})", timestamp(*at))
                            }
                            None => format!("{} {ip} {proto}", timestamp(*at)),
                        },
                        _ => "never".to_owned(),
                    };
                    rows.push([
                        p.id.to_string(),
                        p.service.to_string(),
                        state.to_owned(),
                        timestamp(p.created_at),
                        last,
                        limits,
                        p.name.clone(),
                    ]);
                }
                print!("{}", table(&rows));
            }
        }
        AppPasswordCommand::Revoke { login, id } => {
            let login = service.login(&login)?;
            let outcome = service
                .revoke_app_password(&login, crate::credentials::model::AppPasswordId(id))
                .await?;
            report(outcome, &format!("app password {id} revoked"));
        }
    }
    Ok(())
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Unix milliseconds as `YYYY-MM-DD hh:mm:ss` UTC.
pub fn timestamp(ms: i64) -> String {
    crate::clock::timestamp(ms)
}

/// Rows as aligned columns, two spaces apart; the first column (ids) right-aligned, the last
/// (free text) not padded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            let pad = " ".repeat(width - cell.chars().count());
            match i {
                0 => line.push_str(&format!("{pad}{cell}")),
                _ if i == N - 1 => line.push_str(cell),
                _ => line.push_str(&format!("{cell}{pad}")),
            }
            if i + 1 < N {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up_whatever_the_cell_widths() {
        let rows = [
            ["ID", "SERVICE", "LAST USED", "NAME"].map(str::to_owned),
            ["7", "calendar", "never", "Phone"].map(str::to_owned),
            [
                "12",
                "mail",
                "2026-11-22 04:00:00 192.0.2.10 imap",
                "Thunderbird at home",
            ]
            .map(str::to_owned),
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID  SERVICE   LAST USED                            NAME"
        );
        assert_eq!(
            lines[1],
            " 7  calendar  never                                Phone"
        );
        assert_eq!(
            lines[2],
            "12  mail      2026-11-22 04:00:00 192.0.2.10 imap  Thunderbird at home"
        );
    }

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn cli_parses_the_contract() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "portcullis",
            "--config",
            "x.toml",
            "app-password",
            "create",
            "alice",
            "--service",
            "mail",
            "--name",
            "TB",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::AppPassword(AppPasswordCommand::Create { .. })
        ));
        let cli =
            Cli::try_parse_from(["portcullis", "account", "two-factor", "alice", "on"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Account(AccountCommand::TwoFactor {
                state: Switch::On,
                ..
            })
        ));
        assert!(
            Cli::try_parse_from(["portcullis", "account", "two-factor", "alice", "maybe"]).is_err()
        );
    }
}
