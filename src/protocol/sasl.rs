//! SASL PLAIN (RFC 4616) and LOGIN: the field parsers, and the one exchange ([`Exchange`])
//! that IMAP, submission, POP3 and XMPP run, each in its own framing.
//!
//! Only what a gateway needs: turn the client's bytes into a login, an optional authorization
//! identity and a secret, refusing anything malformed (NUL inside a field, an identity that is
//! not UTF-8). Whether an authorization identity names the login's own account is the
//! credential core's rule ([`Credentials::account`]), applied at the credential check.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub use crate::credentials::Credentials;
use crate::credentials::Secret;

/// Longest SASL field accepted, in bytes (RFC 4616 allows 255 octets per field; passwords and
/// logins longer than this are not ours).
pub const MAX_FIELD: usize = 1024;

/// Why a SASL response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("invalid base64")]
    Base64,
    #[error("malformed PLAIN response")]
    Malformed,
    #[error("login is not UTF-8")]
    NotUtf8,
    #[error("field too long")]
    TooLong,
}

/// The mechanisms a client may use, as they are offered.
pub const MECHANISMS: [&str; 2] = ["PLAIN", "LOGIN"];

/// Why an exchange ended without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("unrecognized mechanism")]
    UnknownMechanism,
    #[error("authentication cancelled")]
    Cancelled,
    #[error(transparent)]
    Invalid(#[from] SaslError),
}

/// What the protocol does next in an exchange.
#[derive(Debug)]
pub enum Next {
    /// Send the challenge (raw; the protocol encodes it in base64 in its own framing) and pass
    /// the client's reply to the exchange's [`Exchange::respond`].
    Challenge(Exchange, &'static [u8]),
    /// The exchange is complete.
    Done(Credentials),
}

/// One SASL exchange, PLAIN or LOGIN: the mechanism named, an optional initial response, then
/// challenges and responses until the credentials are complete. Pure: the protocol frames the
/// challenges (IMAP and POP3 `+ `, submission `334 `, XMPP `<challenge/>`) and decodes the
/// responses (see [`decode_response`]); the steps and the checks of each field are here, once.
#[derive(Debug)]
pub struct Exchange {
    step: Step,
}

#[derive(Debug)]
enum Step {
    Plain,
    LoginUser,
    LoginPassword(String),
}

/// LOGIN's challenges, as every client expects them (draft-murchison-sasl-login).
const USERNAME: &[u8] = b"Username:";
const PASSWORD: &[u8] = b"Password:";

impl Exchange {
    /// Starts an exchange for `mechanism` (any case). `initial` is the decoded initial response
    /// when the client sent one (RFC 4422 section 4: an empty one is `Some(&[])`).
    pub fn start(mechanism: &str, initial: Option<&[u8]>) -> Result<Next, ExchangeError> {
        let step = if mechanism.eq_ignore_ascii_case("PLAIN") {
            Step::Plain
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            Step::LoginUser
        } else {
            return Err(ExchangeError::UnknownMechanism);
        };
        let exchange = Self { step };
        match initial {
            Some(response) => exchange.respond(response),
            None => Ok(exchange.challenge()),
        }
    }

    /// The client's decoded response to the last challenge.
    pub fn respond(self, response: &[u8]) -> Result<Next, ExchangeError> {
        match self.step {
            Step::Plain => Ok(Next::Done(parse_plain(response)?)),
            Step::LoginUser => Ok(Self {
                step: Step::LoginPassword(parse_login_field(response)?),
            }
            .challenge()),
            Step::LoginPassword(login) => Ok(Next::Done(Credentials::new(
                login,
                parse_password_field(response)?,
            ))),
        }
    }

    fn challenge(self) -> Next {
        let challenge: &'static [u8] = match self.step {
            Step::Plain => b"",
            Step::LoginUser => USERNAME,
            Step::LoginPassword(_) => PASSWORD,
        };
        Next::Challenge(self, challenge)
    }
}

/// Decodes a response line of the text protocols (IMAP, submission, POP3): `*` cancels
/// (RFC 4422 section 3.5), `=` is an empty initial response (RFC 4954), anything else is base64.
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, ExchangeError> {
    match line.trim_ascii_end() {
        b"*" => Err(ExchangeError::Cancelled),
        b"=" => Ok(Vec::new()),
        text => Ok(decode_base64(text)?),
    }
}

/// Decodes base64 as SASL sends it (RFC 4648, padding required, no line breaks).
pub fn decode_base64(text: &[u8]) -> Result<Vec<u8>, SaslError> {
    let text = text.trim_ascii_end();
    if text.len() > 4 * MAX_FIELD {
        return Err(SaslError::TooLong);
    }
    STANDARD.decode(text).map_err(|_| SaslError::Base64)
}

pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Parses a decoded PLAIN message: `[authzid] NUL authcid NUL passwd`.
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut fields = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() || passwd.is_empty() {
        return Err(SaslError::Malformed);
    }
    if authcid.len() > MAX_FIELD || passwd.len() > MAX_FIELD || authzid.len() > MAX_FIELD {
        return Err(SaslError::TooLong);
    }
    let login = std::str::from_utf8(authcid).map_err(|_| SaslError::NotUtf8)?;
    let authzid = std::str::from_utf8(authzid).map_err(|_| SaslError::NotUtf8)?;
    Ok(Credentials {
        login: login.to_owned(),
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        secret: Secret::new(passwd.to_vec()),
    })
}

/// Checks one decoded field of the LOGIN mechanism (or of IMAP's LOGIN command).
pub fn parse_login_field(field: &[u8]) -> Result<String, SaslError> {
    if field.is_empty() || field.contains(&0) {
        return Err(SaslError::Malformed);
    }
    if field.len() > MAX_FIELD {
        return Err(SaslError::TooLong);
    }
    std::str::from_utf8(field)
        .map(str::to_owned)
        .map_err(|_| SaslError::NotUtf8)
}

/// Checks a password field of the LOGIN mechanism.
pub fn parse_password_field(field: &[u8]) -> Result<Secret, SaslError> {
    if field.is_empty() || field.contains(&0) {
        return Err(SaslError::Malformed);
    }
    if field.len() > MAX_FIELD {
        return Err(SaslError::TooLong);
    }
    Ok(Secret::new(field.to_vec()))
}

/// Builds a PLAIN message (for logging in to a backend).
pub fn plain_message(authzid: &str, authcid: &str, password: &Secret) -> Secret {
    let mut out = Vec::with_capacity(authzid.len() + authcid.len() + password.expose().len() + 2);
    out.extend_from_slice(authzid.as_bytes());
    out.push(0);
    out.extend_from_slice(authcid.as_bytes());
    out.push(0);
    out.extend_from_slice(password.expose());
    Secret::new(encode_base64(&out).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(next: Result<Next, ExchangeError>) -> Credentials {
        match next.unwrap() {
            Next::Done(credentials) => credentials,
            Next::Challenge(_, c) => panic!("challenge {c:?}, not credentials"),
        }
    }

    fn challenged(next: Result<Next, ExchangeError>, expected: &[u8]) -> Exchange {
        match next.unwrap() {
            Next::Challenge(exchange, c) if c == expected => exchange,
            other => panic!("{other:?}, not the challenge {expected:?}"),
        }
    }

    #[test]
    fn exchanges_plain_and_login_with_and_without_initial_responses() {
        let plain = b"\0alice\0secret pass";
        let c = done(Exchange::start("plain", Some(plain)));
        assert_eq!(
            (c.login.as_str(), c.secret.expose()),
            ("alice", &b"secret pass"[..])
        );

        let e = challenged(Exchange::start("PLAIN", None), b"");
        assert_eq!(done(e.respond(plain)).login, "alice");

        let e = challenged(Exchange::start("LOGIN", None), b"Username:");
        let e = challenged(e.respond(b"alice"), b"Password:");
        let c = done(e.respond(b"pw"));
        assert_eq!(
            (c.login.as_str(), c.secret.expose(), c.authzid),
            ("alice", &b"pw"[..], None)
        );

        let e = challenged(Exchange::start("login", Some(b"bob")), b"Password:");
        assert_eq!(done(e.respond(b"pw")).login, "bob");
    }

    #[test]
    fn exchanges_refuse_what_they_should() {
        assert_eq!(
            Exchange::start("CRAM-MD5", None).unwrap_err(),
            ExchangeError::UnknownMechanism
        );
        // An empty initial response is a response, and an empty PLAIN message is malformed.
        assert_eq!(
            Exchange::start("PLAIN", Some(b"")).unwrap_err(),
            ExchangeError::Invalid(SaslError::Malformed)
        );
        let e = challenged(Exchange::start("LOGIN", None), b"Username:");
        assert_eq!(
            e.respond(b"al\0ice").unwrap_err(),
            ExchangeError::Invalid(SaslError::Malformed)
        );
        let e = challenged(Exchange::start("LOGIN", Some(b"alice")), b"Password:");
        assert_eq!(
            e.respond(b"").unwrap_err(),
            ExchangeError::Invalid(SaslError::Malformed)
        );
        assert_eq!(decode_response(b"*").unwrap_err(), ExchangeError::Cancelled);
        assert_eq!(decode_response(b"=").unwrap(), b"");
        assert_eq!(decode_response(b"YWxpY2U=\r").unwrap(), b"alice");
        assert_eq!(
            decode_response(b"not base64!").unwrap_err(),
            ExchangeError::Invalid(SaslError::Base64)
        );
    }

    #[test]
    fn rfc4616_examples() {
        // RFC 4616 section 4: "\0tim\0tanstaaftanstaaf" and "Ursel\0Kurt\0xipj3plmq".
        let c = parse_plain(b"\0tim\0tanstaaftanstaaf").unwrap();
        assert_eq!(c.login, "tim");
        assert_eq!(c.secret.expose(), b"tanstaaftanstaaf");
        assert_eq!(c.authzid, None);
        // The authorization identity is carried to the credential check, which decides it.
        let other = parse_plain(b"Ursel\0Kurt\0xipj3plmq").unwrap();
        assert_eq!(
            (other.login.as_str(), other.authzid.as_deref()),
            ("Kurt", Some("Ursel"))
        );
        assert_eq!(
            parse_plain(b"\xff\0tim\0pw").unwrap_err(),
            SaslError::NotUtf8
        );
    }

    #[test]
    fn malformed_plain_messages() {
        for bad in [
            &b""[..],
            b"\0",
            b"\0\0",
            b"\0tim\0",
            b"\0\0pw",
            b"a\0b\0c\0d",
            b"tim\0pw",
        ] {
            assert!(parse_plain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_plain(b"\0\xff\xfe\0pw").unwrap_err(),
            SaslError::NotUtf8
        );
        let long = [b"\0".as_slice(), &[b'a'; 2000], b"\0pw"].concat();
        assert_eq!(parse_plain(&long).unwrap_err(), SaslError::TooLong);
    }

    #[test]
    fn base64_round_trip_and_rejects() {
        assert_eq!(
            decode_base64(b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm").unwrap(),
            b"\0tim\0tanstaaftanstaaf"
        );
        assert_eq!(decode_base64(b"dGVzdA==\r\n").unwrap(), b"test");
        assert_eq!(decode_base64(b"dGVzdA").unwrap_err(), SaslError::Base64);
        assert_eq!(decode_base64(b"!!!!").unwrap_err(), SaslError::Base64);
        let msg = plain_message("alice", "portcullis", &Secret::from("pw"));
        assert_eq!(
            decode_base64(msg.expose()).unwrap(),
            b"alice\0portcullis\0pw"
        );
    }

    #[test]
    fn login_fields() {
        assert_eq!(parse_login_field(b"alice").unwrap(), "alice");
        assert_eq!(
            parse_login_field(b"al\0ice").unwrap_err(),
            SaslError::Malformed
        );
        assert_eq!(parse_login_field(b"\xff").unwrap_err(), SaslError::NotUtf8);
        assert!(parse_password_field(b"p\0w").is_err());
    }
}
