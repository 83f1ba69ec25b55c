//! The credential model: accounts, services, app passwords and the generation that kills them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::secret::Secret;

/// What a credential opens. Each listener serves exactly one service, and an app password is
/// made for exactly one; a secret is only ever checked for the service it arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// IMAP and SMTP submission.
    Mail,
    /// WebDAV.
    Disk,
    /// CalDAV.
    Calendar,
    /// CardDAV.
    Contacts,
    /// XMPP.
    Xmpp,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Mail,
        Service::Disk,
        Service::Calendar,
        Service::Contacts,
        Service::Xmpp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Mail => "mail",
            Service::Disk => "disk",
            Service::Calendar => "calendar",
            Service::Contacts => "contacts",
            Service::Xmpp => "xmpp",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text of an unknown service name, kept for the error message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown service {0:?} (expected one of: mail, disk, calendar, contacts, xmpp)")]
pub struct UnknownService(pub String);

impl FromStr for Service {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|service| service.as_str() == s)
            .ok_or_else(|| UnknownService(s.to_owned()))
    }
}

/// An account's login in canonical form: `local@domain`, lower-case.
///
/// Built only through [`Login::parse`], so every login the store or the index sees has been
/// normalised the same way (a user typing `Alice` or `alice@Example.org` reaches one account).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Login(String);

/// Why a login was not accepted as an account name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("the login is empty")]
    Empty,
    #[error("the login is longer than {MAX_LOGIN_LEN} bytes")]
    TooLong,
    #[error("the login contains a space, a control character or a character that is not allowed")]
    BadCharacter,
    #[error("the login has no domain and no default_domain is configured")]
    NoDomain,
    #[error("the login is not of the form local@domain")]
    Malformed,
}

/// Longest login accepted, in bytes: RFC 5321's limit for a mailbox (local part 64, domain 255).
pub const MAX_LOGIN_LEN: usize = 320;

impl Login {
    /// Normalises what a user typed: trims nothing (a space is an error), lower-cases, and
    /// appends `default_domain` to a bare local part.
    pub fn parse(raw: &str, default_domain: Option<&str>) -> Result<Self, LoginError> {
        if raw.is_empty() {
            return Err(LoginError::Empty);
        }
        if raw.len() > MAX_LOGIN_LEN {
            return Err(LoginError::TooLong);
        }
        // `*` is Dovecot's master-user separator and `"`/`\` need quoting in IMAP: refusing them
        // here means a login can never smuggle a different identity to a backend.
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '"' | '\\' | '%'))
        {
            return Err(LoginError::BadCharacter);
        }
        let lower = raw.to_lowercase();
        let full = match lower.split_once('@') {
            Some((local, domain)) => {
                if local.is_empty() || domain.is_empty() || domain.contains('@') {
                    return Err(LoginError::Malformed);
                }
                lower
            }
            None => match default_domain {
                Some(domain) if !domain.is_empty() => format!("{lower}@{}", domain.to_lowercase()),
                _ => return Err(LoginError::NoDomain),
            },
        };
        if full.len() > MAX_LOGIN_LEN {
            return Err(LoginError::TooLong);
        }
        Ok(Self(full))
    }

    /// A login read back from the store, already canonical.
    pub(crate) fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn local_part(&self) -> &str {
        self.0.split_once('@').map_or(&self.0, |(local, _)| local)
    }

    pub fn domain(&self) -> &str {
        self.0.split_once('@').map_or("", |(_, domain)| domain)
    }
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client presented to log in: the login it typed (the SASL authentication identity),
/// the SASL authorization identity if it sent one, and the secret.
#[derive(Debug)]
pub struct Credentials {
    pub login: String,
    /// SASL PLAIN's authorization identity (RFC 4616): the identity to act as. Empty is `None`.
    pub authzid: Option<String>,
    pub secret: Secret,
}

/// Why presented credentials name no account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Login(#[from] LoginError),
    /// The authorization identity names a different account than the login. Nobody acts for
    /// someone else through the gateway.
    #[error("the authorization identity names another account")]
    OtherAccount,
}

impl Credentials {
    /// Credentials without an authorization identity (IMAP `LOGIN`, SASL LOGIN, HTTP Basic).
    pub fn new(login: String, secret: Secret) -> Self {
        Self {
            login,
            authzid: None,
            secret,
        }
    }

    /// The account these credentials claim. Clients send the authorization identity as the
    /// full address with a bare login, or the reverse: both name one account once
    /// `default_domain` and case folding are applied, so that is accepted; one that names a
    /// different account is not.
    pub fn account(&self, default_domain: Option<&str>) -> Result<Login, IdentityError> {
        let login = Login::parse(&self.login, default_domain)?;
        if let Some(authzid) = &self.authzid
            && Login::parse(authzid, default_domain)? != login
        {
            return Err(IdentityError::OtherAccount);
        }
        Ok(login)
    }
}

/// A client network, for fairness and for throttling: an IPv4 address, or an IPv6 /64 (what one customer gets,
/// and what one attacker can fill with addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    V4(u32),
    V6(u64),
}

impl Network {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Network::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Network::V4(u32::from(v4)),
                None => Network::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl Network {
    /// The network's first address (the IPv4 address itself).
    pub fn address(self) -> IpAddr {
        match self {
            Network::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(v4)),
            Network::V6(prefix) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(prefix) << 64)),
        }
    }
}

impl std::fmt::Display for Network {
    /// `192.0.2.1`, `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Network::V4(_) => write!(f, "{}", self.address()),
            Network::V6(_) => write!(f, "{}/64", self.address()),
        }
    }
}

impl std::str::FromStr for Network {
    type Err = std::net::AddrParseError;

    /// An address (`2001:db8:1:2::9` names its /64) or the form [`Display`](std::fmt::Display)
    /// writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ip: IpAddr = s.strip_suffix("/64").unwrap_or(s).parse()?;
        Ok(Network::of(ip))
    }
}

/// Where a login came from, for the last-use record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The end user's address.
    pub ip: std::net::IpAddr,
    /// Who told us `ip`, when it was not the connection the gateway itself accepted.
    pub reported_by: Option<String>,
    /// False when `ip` is not the end user's but the reporter's own (a daemon that did not
    /// say whose login it asks about): limits by network then refuse.
    pub ip_known: bool,
}

impl From<std::net::IpAddr> for Origin {
    /// An address the gateway saw itself.
    fn from(ip: std::net::IpAddr) -> Self {
        Self {
            ip,
            reported_by: None,
            ip_known: true,
        }
    }
}

/// Row id of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AccountId(pub i64);

/// Row id of an app password; printed to the user as the handle for `revoke`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AppPasswordId(pub i64);

impl fmt::Display for AppPasswordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The credential generation of an account. Every app password records the generation it was
/// made under and is dead once the account's generation has moved past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Generation(pub i64);

/// The events that kill every older app password at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationBump {
    /// The main password changed while 2FA was off.
    PasswordChanged,
    TwoFactorOn,
    TwoFactorOff,
    AccessRestored,
    LogoutEverywhere,
    /// A domain's manager blocked the mailbox.
    Blocked,
}

/// What the credential index needs to know about an account to decide a login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub id: AccountId,
    pub login: Login,
    pub generation: Generation,
    /// Bumped on every main-password change, 2FA or not, so a cached main-password grant dies
    /// with the old password even when the generation stays.
    pub password_version: i64,
    pub two_factor: bool,
    pub app_passwords_only: bool,
    /// Bumped by every change to the account or its app passwords: of two snapshots, the one
    /// with the higher revision is the newer.
    pub revision: i64,
    /// Blocked by its domain's manager (or deleted): no login anywhere.
    pub blocked: bool,
    /// The hosted domain this account is a mailbox of; `None` for platform accounts.
    pub domain_id: Option<i64>,
}

impl AccountState {
    /// Whether protocols may accept the main password. With 2FA on, never (and the option is
    /// forced on); without 2FA, the account's "app passwords" option decides.
    pub fn main_password_allowed(&self) -> bool {
        !self.blocked && !self.two_factor && !self.app_passwords_only
    }
}

/// Most networks one app password may be limited to.
pub const MAX_NETWORKS: usize = 32;

/// What its owner limited one app password to, at its creation: a moment it stops working,
/// and the client networks it works from (none listed: any).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PasswordLimits {
    /// Unix ms from which it is refused, and its live sessions are cut.
    pub expires_at: Option<i64>,
    #[serde(serialize_with = "networks_as_text")]
    pub networks: Vec<ipnet::IpNet>,
}

fn networks_as_text<S: serde::Serializer>(
    networks: &[ipnet::IpNet],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(networks.iter().map(ToString::to_string))
}

impl PasswordLimits {
    /// Reads what a person typed: `expires` as `YYYY-MM-DD` (through the end of that day,
    /// UTC) or `YYYY-MM-DDTHH:MM:SSZ`, in the future at `now`; `networks` as CIDR blocks or
    /// single addresses, separated by commas, spaces or new lines.
    pub fn parse(expires: Option<&str>, networks: &[&str], now: i64) -> Result<Self, String> {
        let expires_at = match expires.map(str::trim).filter(|e| !e.is_empty()) {
            None => None,
            Some(text) => {
                let at = crate::clock::parse_expiry(text).ok_or_else(|| {
                    format!("expiry {text:?}: give a date (2026-12-31) or a UTC time (2026-12-31T18:00:00Z)")
                })?;
                if at <= now {
                    return Err(format!("expiry {text:?} is not in the future"));
                }
                Some(at)
            }
        };
        let mut parsed: Vec<ipnet::IpNet> = Vec::new();
        for text in networks
            .iter()
            .flat_map(|n| n.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|n| !n.is_empty())
        {
            let network = match text.parse::<ipnet::IpNet>() {
                Ok(network) => network.trunc(),
                Err(_) => match text.parse::<std::net::IpAddr>() {
                    Ok(ip) => ipnet::IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "network {:?}: give a CIDR block (192.0.2.0/24, 2001:db8::/48) or an address",
                            crate::protocol::printable(text)
                        ));
                    }
                },
            };
            if !parsed.contains(&network) {
                parsed.push(network);
            }
        }
        if parsed.len() > MAX_NETWORKS {
            return Err(format!("at most {MAX_NETWORKS} networks"));
        }
        Ok(PasswordLimits {
            expires_at,
            networks: parsed,
        })
    }

    /// As the store keeps the networks: comma-separated, `None` for any.
    pub fn stored_networks(&self) -> Option<String> {
        (!self.networks.is_empty()).then(|| {
            self.networks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// From the store's columns; a network that no longer parses limits to nothing rather
    /// than to anything.
    pub fn from_stored(expires_at: Option<i64>, networks: Option<&str>) -> Self {
        let networks = networks
            .unwrap_or("")
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| {
                n.parse().unwrap_or_else(|_| {
                    ipnet::IpNet::from(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
                })
            })
            .collect();
        PasswordLimits {
            expires_at,
            networks,
        }
    }

    /// The limits as their owner reads them: `until 2026-12-31; only from 192.0.2.0/24,
    /// 2001:db8::/48`; `None` without any.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(at) = self.expires_at {
            parts.push(format!("until {}", crate::clock::expiry(at)));
        }
        if !self.networks.is_empty() {
            let networks: Vec<String> = self.networks.iter().map(ToString::to_string).collect();
            parts.push(format!("only from {}", networks.join(", ")));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Whether a login from `client` (`None`: an address the gateway does not know, as from
    /// a daemon that did not say) may use it at `now`.
    pub fn permit(&self, client: Option<std::net::IpAddr>, now: i64) -> bool {
        if self.expired(now) {
            return false;
        }
        if self.networks.is_empty() {
            return true;
        }
        let Some(ip) = client.map(|ip| ip.to_canonical()) else {
            return false;
        };
        self.networks.iter().any(|n| n.contains(&ip))
    }
}

/// An app password as listed to its owner: everything but the secret, which is never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppPasswordInfo {
    pub id: AppPasswordId,
    pub service: Service,
    pub name: String,
    pub generation: Generation,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
    pub last_used_protocol: Option<String>,
    /// Who reported `last_used_ip` when the gateway did not see the client itself: the auth
    /// server's daemon (`auth server 127.0.0.1`, `auth server unix socket`).
    pub last_used_reporter: Option<String>,
    /// Alive: not revoked, not expired, and made under the account's current generation.
    pub alive: bool,
    /// Its expiry and networks.
    #[serde(flatten)]
    pub limits: PasswordLimits,
}

/// The protocol a login arrived over, recorded as an app password's last use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Imap,
    Submission,
    WebDav,
    CalDav,
    CardDav,
    Pop3,
    Xmpp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Submission => "submission",
            Protocol::WebDav => "webdav",
            Protocol::CalDav => "caldav",
            Protocol::CardDav => "carddav",
            Protocol::Pop3 => "pop3",
            Protocol::Xmpp => "xmpp",
        }
    }

    pub fn service(self) -> Service {
        match self {
            Protocol::Imap | Protocol::Submission | Protocol::Pop3 => Service::Mail,
            Protocol::Xmpp => Service::Xmpp,
            Protocol::WebDav => Service::Disk,
            Protocol::CalDav => Service::Calendar,
            Protocol::CardDav => Service::Contacts,
        }
    }

    /// The protocol a Dovecot-auth client names in `service=`.
    pub fn from_auth_service(name: &str) -> Option<Self> {
        match name {
            "imap" => Some(Protocol::Imap),
            "pop3" => Some(Protocol::Pop3),
            "smtp" | "submission" => Some(Protocol::Submission),
            "xmpp" => Some(Protocol::Xmpp),
            _ => None,
        }
    }

    /// The HTTP protocol that serves `service`, if any.
    pub fn over_http(service: Service) -> Option<Self> {
        match service {
            Service::Disk => Some(Protocol::WebDav),
            Service::Calendar => Some(Protocol::CalDav),
            Service::Contacts => Some(Protocol::CardDav),
            Service::Mail | Service::Xmpp => None,
        }
    }
}

/// Milliseconds since the Unix epoch: the store's timestamp unit.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_is_canonical_and_takes_the_default_domain() {
        let d = Some("Example.org");
        assert_eq!(
            Login::parse("Alice", d).unwrap().as_str(),
            "alice@example.org"
        );
        assert_eq!(
            Login::parse("ALICE@Example.ORG", None).unwrap().as_str(),
            "alice@example.org"
        );
        assert_eq!(Login::parse("alice", None), Err(LoginError::NoDomain));
        assert_eq!(Login::parse("", d), Err(LoginError::Empty));
        assert_eq!(Login::parse("al ice", d), Err(LoginError::BadCharacter));
        assert_eq!(
            Login::parse("alice*master", d),
            Err(LoginError::BadCharacter)
        );
        assert_eq!(Login::parse("a\0b", d), Err(LoginError::BadCharacter));
        assert_eq!(Login::parse("@example.org", d), Err(LoginError::Malformed));
        assert_eq!(Login::parse("a@b@c", d), Err(LoginError::Malformed));
        assert_eq!(Login::parse(&"a".repeat(400), d), Err(LoginError::TooLong));
    }

    #[test]
    fn an_authorization_identity_must_name_the_same_account() {
        let d = Some("example.org");
        let with = |login: &str, authzid: Option<&str>| Credentials {
            login: login.to_owned(),
            authzid: authzid.map(str::to_owned),
            secret: Secret::from("pw"),
        };
        let alice = Login::parse("alice@example.org", None).unwrap();
        for (login, authzid) in [
            ("alice", None),
            ("alice", Some("alice@example.org")),
            ("alice@example.org", Some("alice")),
            ("Alice", Some("ALICE@Example.Org")),
            ("alice@EXAMPLE.org", Some("alice@example.org")),
        ] {
            assert_eq!(
                with(login, authzid).account(d),
                Ok(alice.clone()),
                "{login} {authzid:?}"
            );
        }
        for (login, authzid) in [
            ("alice", Some("bob")),
            ("alice", Some("alice@example.net")),
            ("bob@example.org", Some("alice")),
        ] {
            assert_eq!(
                with(login, authzid).account(d),
                Err(IdentityError::OtherAccount),
                "{login} {authzid:?}"
            );
        }
        // Without a default domain a bare name is no account, whichever side it is on.
        assert_eq!(
            with("alice@example.org", Some("alice")).account(None),
            Err(IdentityError::Login(LoginError::NoDomain))
        );
        assert!(with("alice", Some("a*b")).account(d).is_err());
    }

    #[test]
    fn services_round_trip_through_their_names() {
        for service in Service::ALL {
            assert_eq!(service.as_str().parse::<Service>().unwrap(), service);
        }
        assert!("webdav".parse::<Service>().is_err());
    }

    #[test]
    fn main_password_policy() {
        let mut state = AccountState {
            id: AccountId(1),
            login: Login::parse("a@b", None).unwrap(),
            generation: Generation(1),
            password_version: 1,
            two_factor: false,
            app_passwords_only: false,
            revision: 1,
            blocked: false,
            domain_id: None,
        };
        assert!(state.main_password_allowed());
        state.app_passwords_only = true;
        assert!(!state.main_password_allowed());
        state.app_passwords_only = false;
        state.two_factor = true;
        assert!(!state.main_password_allowed());
    }

    #[test]
    fn password_limits_read_what_people_type_and_refuse_the_rest() {
        let now = 1_700_000_000_000;
        let limits = PasswordLimits::parse(
            Some(" 2030-01-31 "),
            &[
                "192.0.2.77/24, 2001:db8::1/48",
                "198.51.100.7\n192.0.2.0/24",
            ],
            now,
        )
        .unwrap();
        assert_eq!(limits.expires_at, crate::clock::parse_expiry("2030-01-31"));
        let shown: Vec<String> = limits.networks.iter().map(ToString::to_string).collect();
        // Host bits cleared, single addresses as /32, duplicates once.
        assert_eq!(shown, ["192.0.2.0/24", "2001:db8::/48", "198.51.100.7/32"]);
        assert_eq!(
            limits.stored_networks().as_deref(),
            Some("192.0.2.0/24,2001:db8::/48,198.51.100.7/32")
        );
        assert_eq!(
            PasswordLimits::from_stored(limits.expires_at, limits.stored_networks().as_deref()),
            limits
        );
        assert_eq!(
            PasswordLimits::parse(Some(""), &[" "], now).unwrap(),
            PasswordLimits::default()
        );

        for (expires, networks) in [
            (Some("2001-01-01"), vec![]),
            (Some("next week"), vec![]),
            (None, vec!["192.0.2.0/33"]),
            (None, vec!["example.org"]),
            (None, vec!["10.0.0.0/8 ; 10.1.0.0/16"]),
        ] {
            let refused = PasswordLimits::parse(expires, &networks, now);
            assert!(refused.is_err(), "{expires:?} {networks:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("10.0.{i}.0/24")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(PasswordLimits::parse(None, &many, now).is_err());
    }

    #[test]
    fn password_limits_permit_by_time_and_network() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let now = 1_700_000_000_000;
        let open = PasswordLimits::default();
        assert!(open.permit(ip("203.0.113.9"), now));
        assert!(
            open.permit(None, now),
            "no networks: the address does not matter"
        );

        let limited = PasswordLimits::parse(None, &["192.0.2.0/24", "2001:db8::/32"], now).unwrap();
        assert!(limited.permit(ip("192.0.2.200"), now));
        assert!(limited.permit(ip("::ffff:192.0.2.1"), now), "IPv4-mapped");
        assert!(limited.permit(ip("2001:db8:ffff::1"), now));
        assert!(!limited.permit(ip("192.0.3.1"), now));
        assert!(!limited.permit(ip("2001:db9::1"), now));
        assert!(
            !limited.permit(None, now),
            "an unknown address is outside every network"
        );

        let expiring = PasswordLimits {
            expires_at: Some(now + 1),
            networks: Vec::new(),
        };
        assert!(expiring.permit(None, now));
        assert!(!expiring.permit(None, now + 1));
        assert!(expiring.expired(now + 1) && !expiring.expired(now));
        // A stored network that no longer parses limits to nothing.
        let broken = PasswordLimits::from_stored(None, Some("not-a-network"));
        assert!(!broken.permit(ip("192.0.2.1"), now));
    }
}
