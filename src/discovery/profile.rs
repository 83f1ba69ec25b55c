//! The Apple configuration profile (`.mobileconfig`) offered right after an app password is
//! made: one payload for that password's service (`com.apple.mail.managed`,
//! `com.apple.caldav.account` or `com.apple.carddav.account`) with the servers of the
//! [`Directory`] and the password inside, so an iPhone or a Mac sets the account up in one
//! step. It is built for the download and never stored; the profile is not signed, so the
//! device calls it unverified.

use plist::{Dictionary, Value};

use super::{Directory, Endpoint, Kind};
use crate::credentials::{Secret, Service};

/// Who the profile is for.
pub struct Owner<'a> {
    /// The account's address, as mail programs show it.
    pub email: &'a str,
    /// The user name the programs log in with.
    pub login: &'a str,
    /// The app password's name ("iPhone").
    pub name: &'a str,
    pub secret: &'a Secret,
}

/// The servers a profile names.
enum Servers<'a> {
    Mail {
        incoming: &'a Endpoint,
        /// `EmailTypeIMAP` or `EmailTypePOP`.
        account_type: &'static str,
        outgoing: &'a Endpoint,
    },
    Dav {
        endpoint: &'a Endpoint,
        /// `CalDAV` or `CardDAV`, the payload's key prefix.
        prefix: &'static str,
        payload_type: &'static str,
    },
}

/// What a profile of `service` would name: `None` when Apple devices have no payload for the
/// service (disk, chat) or no listener serves it.
fn servers(directory: &Directory, service: Service) -> Option<Servers<'_>> {
    match service {
        Service::Mail => {
            let (incoming, account_type) = directory
                .best(Kind::Imap)
                .map(|e| (e, "EmailTypeIMAP"))
                .or_else(|| directory.best(Kind::Pop3).map(|e| (e, "EmailTypePOP")))?;
            Some(Servers::Mail {
                incoming,
                account_type,
                outgoing: directory.best(Kind::Submission)?,
            })
        }
        Service::Calendar => Some(Servers::Dav {
            endpoint: directory.best(Kind::CalDav)?,
            prefix: "CalDAV",
            payload_type: "com.apple.caldav.account",
        }),
        Service::Contacts => Some(Servers::Dav {
            endpoint: directory.best(Kind::CardDav)?,
            prefix: "CardDAV",
            payload_type: "com.apple.carddav.account",
        }),
        Service::Disk | Service::Xmpp => None,
    }
}

/// Whether an app password of `service` comes with a profile.
pub fn offered(directory: &Directory, service: Service) -> bool {
    servers(directory, service).is_some()
}

/// The profile (an XML property list) for an app password of `service`, or `None` when there
/// is none (see [`offered`]).
pub fn profile(directory: &Directory, service: Service, owner: &Owner<'_>) -> Option<Vec<u8>> {
    let servers = servers(directory, service)?;
    let password = String::from_utf8_lossy(owner.secret.expose()).into_owned();
    let description = format!("{} ({})", directory.display_name, owner.name);
    let base = reverse_dns(directory.host());
    let mut payload = Dictionary::new();
    let payload_type = match servers {
        Servers::Mail {
            incoming,
            account_type,
            outgoing,
        } => {
            for (key, value) in [
                ("EmailAccountDescription", string(&description)),
                ("EmailAccountType", string(account_type)),
                ("EmailAddress", string(owner.email)),
                (
                    "IncomingMailServerAuthentication",
                    string("EmailAuthPassword"),
                ),
                ("IncomingMailServerHostName", string(&incoming.host)),
                ("IncomingMailServerPortNumber", integer(incoming.port)),
                // Apple's "SSL" is TLS: from the first byte on 993, by STARTTLS on 143.
                ("IncomingMailServerUseSSL", Value::Boolean(true)),
                ("IncomingMailServerUsername", string(owner.login)),
                ("IncomingPassword", string(&password)),
                (
                    "OutgoingMailServerAuthentication",
                    string("EmailAuthPassword"),
                ),
                ("OutgoingMailServerHostName", string(&outgoing.host)),
                ("OutgoingMailServerPortNumber", integer(outgoing.port)),
                ("OutgoingMailServerUseSSL", Value::Boolean(true)),
                ("OutgoingMailServerUsername", string(owner.login)),
                ("OutgoingPassword", string(&password)),
                (
                    "OutgoingPasswordSameAsIncomingPassword",
                    Value::Boolean(true),
                ),
            ] {
                payload.insert(key.to_owned(), value);
            }
            "com.apple.mail.managed"
        }
        Servers::Dav {
            endpoint,
            prefix,
            payload_type,
        } => {
            for (key, value) in [
                ("AccountDescription", string(&description)),
                ("HostName", string(&endpoint.host)),
                ("Port", integer(endpoint.port)),
                // Where the client starts its discovery (current-user-principal).
                ("PrincipalURL", string(&endpoint.url())),
                ("UseSSL", Value::Boolean(true)),
                ("Username", string(owner.login)),
                ("Password", string(&password)),
            ] {
                payload.insert(format!("{prefix}{key}"), value);
            }
            payload_type
        }
    };
    let payload_uuid = uuid();
    for (key, value) in [
        ("PayloadType", string(payload_type)),
        ("PayloadVersion", integer(1)),
        (
            "PayloadIdentifier",
            string(&format!("{base}.{}.{payload_uuid}", service.as_str())),
        ),
        ("PayloadUUID", string(&payload_uuid)),
        ("PayloadDisplayName", string(&description)),
    ] {
        payload.insert(key.to_owned(), value);
    }
    let profile_uuid = uuid();
    let mut top = Dictionary::new();
    for (key, value) in [
        (
            "PayloadContent",
            Value::Array(vec![Value::Dictionary(payload)]),
        ),
        ("PayloadDisplayName", string(&description)),
        (
            "PayloadDescription",
            string(&format!(
                "Sets up {} for {} with an app password made for this device.",
                service.as_str(),
                owner.email
            )),
        ),
        (
            "PayloadIdentifier",
            string(&format!("{base}.{profile_uuid}")),
        ),
        ("PayloadRemovalDisallowed", Value::Boolean(false)),
        ("PayloadType", string("Configuration")),
        ("PayloadUUID", string(&profile_uuid)),
        ("PayloadVersion", integer(1)),
    ] {
        top.insert(key.to_owned(), value);
    }
    let mut out = Vec::new();
    Value::Dictionary(top).to_writer_xml(&mut out).ok()?;
    Some(out)
}

fn string(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn integer(n: u16) -> Value {
    Value::Integer(u64::from(n).into())
}

/// `mail.example.org` → `org.example.mail`: payload identifiers are reverse-DNS.
fn reverse_dns(host: &str) -> String {
    host.rsplit('.').collect::<Vec<_>>().join(".")
}

/// A random (version 4) UUID, upper case as Apple writes them.
fn uuid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = crate::credentials::hashing::hex(&bytes).to_uppercase();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(secret: &Secret) -> Owner<'_> {
        Owner {
            email: "alice@example.org",
            login: "alice@example.org",
            name: "iPhone",
            secret,
        }
    }

    #[test]
    fn mail_and_calendar_profiles_hold_the_servers_and_the_password() {
        let directory = super::super::tests::directory();
        let secret = Secret::from("abcd efgh ijkl mnop");
        let mail = profile(&directory, Service::Mail, &owner(&secret)).unwrap();
        let parsed = Value::from_reader_xml(mail.as_slice()).unwrap();
        let top = parsed.as_dictionary().unwrap();
        assert_eq!(top["PayloadType"].as_string(), Some("Configuration"));
        let payload = top["PayloadContent"].as_array().unwrap()[0]
            .as_dictionary()
            .unwrap();
        assert_eq!(
            payload["PayloadType"].as_string(),
            Some("com.apple.mail.managed")
        );
        assert_eq!(
            payload["IncomingMailServerHostName"].as_string(),
            Some("mail.example.org")
        );
        assert_eq!(
            payload["IncomingMailServerPortNumber"].as_unsigned_integer(),
            Some(993)
        );
        assert_eq!(
            payload["OutgoingMailServerHostName"].as_string(),
            Some("smtp.example.org")
        );
        assert_eq!(
            payload["IncomingPassword"].as_string(),
            Some("abcd efgh ijkl mnop")
        );
        let uuid = payload["PayloadUUID"].as_string().unwrap();
        assert_eq!((uuid.len(), &uuid[14..15]), (36, "4"));
        assert_ne!(Some(uuid), top["PayloadUUID"].as_string());

        let calendar = profile(&directory, Service::Calendar, &owner(&secret)).unwrap();
        let parsed = Value::from_reader_xml(calendar.as_slice()).unwrap();
        let payload = parsed.as_dictionary().unwrap()["PayloadContent"]
            .as_array()
            .unwrap()[0]
            .as_dictionary()
            .unwrap()
            .clone();
        assert_eq!(
            payload["CalDAVPrincipalURL"].as_string(),
            Some("https://mail.example.org/cal/")
        );
        assert_eq!(payload["CalDAVPort"].as_unsigned_integer(), Some(443));
        // No listener serves contacts in this configuration; disk has no Apple payload.
        assert!(profile(&directory, Service::Contacts, &owner(&secret)).is_none());
        assert!(profile(&directory, Service::Disk, &owner(&secret)).is_none());
    }
}
