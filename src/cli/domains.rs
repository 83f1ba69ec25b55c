//! The operator's domain commands: `domain …`, `mailbox …`, `audit`. The operator acts with the
//! owner's rights on every domain (and alone may transfer one with its mailboxes); every change
//! is written to the audit log as "operator".

use clap::Subcommand;

use super::{CliError, accounts, read_password, table, timestamp};
use crate::config::Config;
use crate::credentials::accounts::{AccountService, Actor, normalize_domain};

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// The domains a platform account owns or administers.
    List { login: String },
    /// Connect DOMAIN for the platform account OWNER; prints the TXT record to publish.
    Connect {
        domain: String,
        #[arg(long)]
        owner: String,
    },
    /// Confirm OWNER's claim on DOMAIN by looking up its TXT record.
    Confirm {
        domain: String,
        #[arg(long)]
        owner: String,
    },
    /// Show a confirmed domain: owner, administrators, mailboxes, tokens.
    Show { domain: String },
    /// Disconnect a domain that has no mailboxes.
    Disconnect { domain: String },
    /// Support: give DOMAIN, with its mailboxes, to another platform account.
    Transfer {
        domain: String,
        #[arg(long)]
        to: String,
    },
    /// Additional administrators.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Domain API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Let another platform account manage DOMAIN's mailboxes.
    Add {
        domain: String,
        login: String,
    },
    Remove {
        domain: String,
        login: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make an API token for DOMAIN; prints it once, as the only line on stdout.
    Create {
        domain: String,
        #[arg(long)]
        name: String,
    },
    List {
        domain: String,
    },
    Revoke {
        domain: String,
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum MailboxCommand {
    /// Create a mailbox of a confirmed domain; its password is one line on standard input.
    Create {
        login: String,
        #[arg(long, default_value = "")]
        first_name: String,
        #[arg(long, default_value = "")]
        last_name: String,
    },
    /// A domain's mailboxes.
    List {
        domain: String,
    },
    /// Block a mailbox: no login anywhere; its app passwords and sessions die.
    Block {
        login: String,
    },
    Unblock {
        login: String,
    },
    /// Delete a mailbox for good, and run `[domains] on_mailbox_delete`.
    Delete {
        login: String,
    },
}

fn operator(service: &AccountService) -> AccountService {
    service.acting("operator", None)
}

pub async fn domain(config: &Config, command: DomainCommand) -> Result<(), CliError> {
    let service = operator(&accounts(config).await?);
    let actor = Actor::Operator;
    match command {
        DomainCommand::List { login } => {
            let account = service.account(&service.login(&login)?).await?;
            let mut rows = vec![["DOMAIN".to_owned(), "STATE".to_owned(), "ROLE".to_owned()]];
            for d in service.domains(&account).await? {
                rows.push([
                    d.record.name.clone(),
                    if d.record.confirmed() {
                        "confirmed"
                    } else {
                        "pending"
                    }
                    .to_owned(),
                    if d.owned { "owner" } else { "administrator" }.to_owned(),
                ]);
            }
            print!("{}", table(&rows));
        }
        DomainCommand::Connect { domain, owner } => {
            let owner = service.account(&service.login(&owner)?).await?;
            let view = service.connect_domain(&owner, &domain).await?;
            if view.record.confirmed() {
                eprintln!("{} is connected and confirmed", view.record.name);
            } else {
                println!("{} TXT \"{}\"", view.challenge.name, view.challenge.value);
                eprintln!(
                    "{} connected for {}: publish that TXT record, then `domain confirm`",
                    view.record.name, owner.login
                );
            }
        }
        DomainCommand::Confirm { domain, owner } => {
            let owner = service.account(&service.login(&owner)?).await?;
            let view = service.confirm_domain(&owner, &domain).await?;
            eprintln!("{} confirmed for {}", view.record.name, owner.login);
        }
        DomainCommand::Show { domain } => {
            let name = normalize_domain(&domain)?;
            let admins = service.domain_admins(&actor, &name).await?;
            let mailboxes = service.mailboxes(&actor, &name).await?;
            let tokens = service.domain_tokens(&actor, &name).await?;
            let record = service
                .domain_record(&name)
                .await?
                .ok_or_else(|| CliError(format!("{name} is not a confirmed domain")))?;
            println!("domain:          {name}");
            println!("owner:           {}", record.owner_login);
            println!(
                "confirmed:       {}",
                record.confirmed_at.map_or("no".into(), timestamp)
            );
            let admins: Vec<String> = admins.iter().map(ToString::to_string).collect();
            println!(
                "administrators:  {}",
                if admins.is_empty() {
                    "none".into()
                } else {
                    admins.join(", ")
                }
            );
            println!("mailboxes:       {}", mailboxes.len());
            println!(
                "live API tokens: {}",
                tokens.iter().filter(|t| t.revoked_at.is_none()).count()
            );
        }
        DomainCommand::Disconnect { domain } => {
            service.disconnect_domain(&actor, &domain).await?;
            eprintln!("{} disconnected", normalize_domain(&domain)?);
        }
        DomainCommand::Transfer { domain, to } => {
            let to = service.login(&to)?;
            service.transfer_domain(&domain, &to).await?;
            eprintln!(
                "{} and its mailboxes now belong to {to}",
                normalize_domain(&domain)?
            );
        }
        DomainCommand::Admin(AdminCommand::Add { domain, login }) => {
            service
                .set_domain_admin(&actor, &domain, &login, true)
                .await?;
            eprintln!("{login} manages the mailboxes of {domain}");
        }
        DomainCommand::Admin(AdminCommand::Remove { domain, login }) => {
            service
                .set_domain_admin(&actor, &domain, &login, false)
                .await?;
            eprintln!("{login} no longer manages {domain}");
        }
        DomainCommand::Token(TokenCommand::Create { domain, name }) => {
            let (id, secret) = service.create_domain_token(&actor, &domain, &name).await?;
            println!("{}", String::from_utf8_lossy(secret.expose()));
            eprintln!(
                "API token {id} \"{}\" for {domain} created; it will not be shown again",
                name.trim()
            );
        }
        DomainCommand::Token(TokenCommand::List { domain }) => {
            let mut rows = vec![[
                "ID".to_owned(),
                "STATE".to_owned(),
                "CREATED".to_owned(),
                "LAST USED".to_owned(),
                "NAME".to_owned(),
            ]];
            for t in service.domain_tokens(&actor, &domain).await? {
                rows.push([
                    t.id.to_string(),
                    if t.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "live"
                    }
                    .to_owned(),
                    timestamp(t.created_at),
                    match (t.last_used_at, &t.last_used_ip) {
                        (Some(at), Some(ip)) => format!("{} {ip}", timestamp(at)),
                        _ => "never".to_owned(),
                    },
                    t.name,
                ]);
            }
            print!("{}", table(&rows));
        }
        DomainCommand::Token(TokenCommand::Revoke { domain, id }) => {
            service.revoke_domain_token(&actor, &domain, id).await?;
            eprintln!("API token {id} of {domain} revoked");
        }
    }
    Ok(())
}

pub async fn mailbox(config: &Config, command: MailboxCommand) -> Result<(), CliError> {
    let service = operator(&accounts(config).await?);
    let actor = Actor::Operator;
    // A mailbox is named by its full login; its domain is the one it belongs to.
    let domain_of =
        |login: &str| -> Result<String, CliError> { Ok(service.login(login)?.domain().to_owned()) };
    match command {
        MailboxCommand::Create {
            login,
            first_name,
            last_name,
        } => {
            let domain = domain_of(&login)?;
            let password = read_password("Initial password")?;
            let account = service
                .create_mailbox(&actor, &domain, &login, &password, &first_name, &last_name)
                .await?;
            eprintln!("mailbox {} created", account.login);
        }
        MailboxCommand::List { domain } => {
            let mut rows = vec![[
                "LOGIN".to_owned(),
                "STATE".to_owned(),
                "CREATED".to_owned(),
                "NAME".to_owned(),
            ]];
            for m in service.mailboxes(&actor, &domain).await? {
                rows.push([
                    m.account.login.to_string(),
                    if m.account.blocked {
                        "blocked"
                    } else {
                        "active"
                    }
                    .to_owned(),
                    timestamp(m.created_at),
                    format!("{} {}", m.first_name, m.last_name)
                        .trim()
                        .to_owned(),
                ]);
            }
            print!("{}", table(&rows));
        }
        MailboxCommand::Block { login } => {
            service
                .block_mailbox(&actor, &domain_of(&login)?, &login, true)
                .await?;
            eprintln!("{login} blocked: its app passwords and sessions are dead");
        }
        MailboxCommand::Unblock { login } => {
            service
                .block_mailbox(&actor, &domain_of(&login)?, &login, false)
                .await?;
            eprintln!("{login} unblocked (its old app passwords stay dead)");
        }
        MailboxCommand::Delete { login } => {
            match service
                .delete_mailbox(&actor, &domain_of(&login)?, &login)
                .await?
            {
                None => eprintln!("{login} deleted"),
                Some(failure) => {
                    return Err(CliError(format!(
                        "{login} deleted, but the deletion hook failed: {failure}"
                    )));
                }
            }
        }
    }
    Ok(())
}

pub async fn audit(
    config: &Config,
    account: Option<String>,
    domain: Option<String>,
    limit: i64,
) -> Result<(), CliError> {
    let service = accounts(config).await?;
    let entries = match (account, domain) {
        (Some(login), _) => {
            let account = service.account(&service.login(&login)?).await?;
            service.account_audit(&account).await?
        }
        (None, Some(domain)) => {
            service
                .domain_audit(&Actor::Operator, &normalize_domain(&domain)?)
                .await?
        }
        (None, None) => service.audit_all(limit).await?,
    };
    let mut rows = vec![[
        "WHEN".to_owned(),
        "WHO".to_owned(),
        "FROM".to_owned(),
        "DOMAIN".to_owned(),
        "WHAT".to_owned(),
        "DETAIL".to_owned(),
    ]];
    for e in entries
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(100))
    {
        rows.push([
            timestamp(e.at),
            e.actor,
            e.ip.unwrap_or_else(|| "-".into()),
            e.domain.unwrap_or_else(|| "-".into()),
            e.action,
            e.detail,
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}
