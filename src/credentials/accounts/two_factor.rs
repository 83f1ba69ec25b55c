//! Two-factor authentication: TOTP (RFC 6238: HMAC-SHA-1, 30-second steps, 6 digits, what
//! authenticator apps use) and one-time recovery codes.
//!
//! - Enrolment is two steps. [`AccountService::begin_two_factor`] makes a seed and hands it
//!   back sealed in a signed token (nothing is stored yet); the page shows it as a QR code and as
//!   text. [`AccountService::enable_two_factor`] takes the token back with a code from the app:
//!   only a right code turns 2FA on, stores the seed (sealed, bound to the account) and a fresh
//!   set of recovery codes (digests), and bumps the generation.
//! - A code is accepted at most one step away from the server's clock, and never twice: the
//!   step of the last accepted code is stored, and a code of that step or an earlier one is
//!   refused (the update is conditional, so two requests racing with one code cannot both pass).
//! - A recovery code stands in for a TOTP code once.
//! - Turning 2FA off asks for a code; it removes the seed and the recovery codes and bumps the
//!   generation. An operator can turn it off without one (`account two-factor LOGIN off`), for
//!   an owner who lost the app and the codes.

use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Totp};

use super::{AccountError, AccountService, Outcome, two_factor_change};
use crate::credentials::hashing::hex;
use crate::credentials::model::{AccountState, Login, now_ms};
use crate::credentials::secret::Secret;

/// How many recovery codes a user gets.
pub const RECOVERY_CODES: usize = 10;

/// How long an enrolment may take, from showing the QR code to the confirming code.
const ENROLMENT_MS: i64 = 15 * 60 * 1000;

/// Letters of recovery codes: no 0/o, 1/l/i that people misread.
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A seed being enrolled: what the page shows and the token that brings it back.
#[derive(Debug)]
pub struct Enrolment {
    /// The seed in base32, for typing into an app.
    pub secret: Secret,
    /// The `otpauth://` URI the QR code holds.
    pub uri: Secret,
    /// The QR code as an SVG document.
    pub qr_svg: String,
    /// Signed and sealed: hands the seed back to [`AccountService::enable_two_factor`].
    pub token: String,
}

/// 2FA turned on: the recovery codes, shown once.
#[derive(Debug)]
pub struct TwoFactorOn {
    pub recovery_codes: Vec<Secret>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct EnrolmentClaims {
    account: i64,
    sealed: String,
}

fn totp(seed: &[u8], issuer: &str, login: &Login) -> Result<Totp, AccountError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_skew(1)
        .with_secret(seed.to_vec())
        .with_issuer(Some(issuer))
        .with_account_name(login.as_str())
        .build()
        .map_err(|e| AccountError::BadInput(format!("two-factor set-up failed: {e}")))
}

/// The digits of a TOTP code as typed (spaces allowed), if it is one.
fn totp_digits(typed: &str) -> Option<String> {
    let digits: String = typed.chars().filter(|c| !c.is_whitespace()).collect();
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// The stored form of a recovery code as typed (case, spaces and dashes do not matter).
pub fn recovery_digest(typed: &str) -> String {
    let normal: String = typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mut hasher = Sha256::new();
    hasher.update(b"portcullis recovery-code v1\0");
    hasher.update(normal.as_bytes());
    hex(&hasher.finalize())
}

/// A new recovery code: ten letters (50 bits), shown as `xxxxx-xxxxx`.
fn recovery_code() -> Secret {
    let letters: Vec<u8> = (0..10)
        .map(|_| RECOVERY_ALPHABET[rand::random_range(0..RECOVERY_ALPHABET.len())])
        .collect();
    let mut shown = letters[..5].to_vec();
    shown.push(b'-');
    shown.extend_from_slice(&letters[5..]);
    Secret::new(shown)
}

fn seed_context(account: &AccountState) -> String {
    format!("totp:{}", account.id.0)
}

fn enrolment_context(account: &AccountState) -> String {
    format!("totp-enrolment:{}", account.id.0)
}

fn qr_svg(uri: &str) -> Result<String, AccountError> {
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| AccountError::BadInput(format!("QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(220, 220)
        .quiet_zone(true)
        .build())
}

impl AccountService {
    /// Starts enrolling `account` in 2FA: a new seed, nothing stored yet.
    pub fn begin_two_factor(&self, account: &AccountState) -> Result<Enrolment, AccountError> {
        if account.two_factor {
            return Err(AccountError::TwoFactorAlreadyOn);
        }
        let seed: [u8; 20] = rand::random();
        let keys = self.keys()?;
        let claims = EnrolmentClaims {
            account: account.id.0,
            sealed: keys.seal(&seed, &enrolment_context(account)),
        };
        let token = keys.sign("totp-enrolment", &claims, now_ms() + ENROLMENT_MS);
        self.enrolment(account, &token)
    }

    /// The enrolment a token names, to show again (after a wrong code).
    pub fn enrolment(
        &self,
        account: &AccountState,
        token: &str,
    ) -> Result<Enrolment, AccountError> {
        let seed = self.enrolment_seed(account, token)?;
        let totp = totp(seed.expose(), &self.issuer, &account.login)?;
        let uri = totp
            .to_url()
            .map_err(|e| AccountError::BadInput(format!("two-factor set-up failed: {e}")))?;
        Ok(Enrolment {
            secret: Secret::from(totp.secret().to_base32().as_str()),
            qr_svg: qr_svg(&uri)?,
            uri: Secret::from(uri.as_str()),
            token: token.to_owned(),
        })
    }

    fn enrolment_seed(&self, account: &AccountState, token: &str) -> Result<Secret, AccountError> {
        let keys = self.keys()?;
        let claims: EnrolmentClaims = keys
            .verify("totp-enrolment", token, now_ms())
            .ok_or(AccountError::EnrolmentExpired)?;
        if claims.account != account.id.0 {
            return Err(AccountError::EnrolmentExpired);
        }
        keys.open(&claims.sealed, &enrolment_context(account))
            .ok_or(AccountError::EnrolmentExpired)
    }

    /// Finishes an enrolment with a code from the app: 2FA goes on (the generation moves on,
    /// the option is forced on) with the seed and new recovery codes.
    pub async fn enable_two_factor(
        &self,
        login: &Login,
        token: &str,
        code: &str,
    ) -> Result<TwoFactorOn, AccountError> {
        let account = self.account(login).await?;
        let seed = self.enrolment_seed(&account, token)?;
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let step = totp_digits(code)
            .and_then(|digits| {
                totp(seed.expose(), &self.issuer, login)
                    .ok()?
                    .check(&digits, now)
            })
            .ok_or(AccountError::WrongCode)?;
        self.turn_on(&account, &seed, i64::try_from(step).unwrap_or(0))
            .await
    }

    /// An operator turns 2FA on for an owner (the CLI): the seed is returned for the owner's
    /// app, with the recovery codes.
    pub async fn enable_two_factor_for(
        &self,
        login: &Login,
    ) -> Result<(Enrolment, TwoFactorOn), AccountError> {
        let account = self.account(login).await?;
        let enrolment = self.begin_two_factor(&account)?;
        let seed = self.enrolment_seed(&account, &enrolment.token)?;
        let on = self.turn_on(&account, &seed, 0).await?;
        Ok((enrolment, on))
    }

    async fn turn_on(
        &self,
        account: &AccountState,
        seed: &Secret,
        step: i64,
    ) -> Result<TwoFactorOn, AccountError> {
        let keys = self.keys()?;
        let sealed = keys.seal(seed.expose(), &seed_context(account));
        let codes: Vec<Secret> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let digests: Vec<String> = codes
            .iter()
            .map(|c| recovery_digest(&String::from_utf8_lossy(c.expose())))
            .collect();
        let outcome = self
            .decide(&account.login, |current| {
                let Some(mut change) = two_factor_change(current, true) else {
                    return Err(AccountError::TwoFactorAlreadyOn);
                };
                change.totp = Some(Some((sealed.clone(), step)));
                change.recovery_codes = Some(digests.clone());
                Ok(Some(change))
            })
            .await?;
        debug_assert!(matches!(outcome, Outcome::Changed(Some(_))));
        Ok(TwoFactorOn {
            recovery_codes: codes,
        })
    }

    /// Turns 2FA off, given a code (or a recovery code).
    pub async fn disable_two_factor(
        &self,
        login: &Login,
        code: &str,
    ) -> Result<Outcome, AccountError> {
        let account = self.account(login).await?;
        if !account.two_factor {
            return Ok(Outcome::Unchanged);
        }
        if !self.verify_second_factor(&account, code).await? {
            return Err(AccountError::WrongCode);
        }
        self.reset_two_factor(login).await
    }

    /// Turns 2FA off without a code: for the operator (`account two-factor LOGIN off`).
    pub async fn reset_two_factor(&self, login: &Login) -> Result<Outcome, AccountError> {
        self.decide(login, |account| Ok(two_factor_change(account, false)))
            .await
    }

    /// Whether `code` is a TOTP code of the account's seed not used before, or one of its
    /// unused recovery codes; either way it is used up.
    pub async fn verify_second_factor(
        &self,
        account: &AccountState,
        code: &str,
    ) -> Result<bool, AccountError> {
        if code.len() > 64 {
            return Ok(false);
        }
        let Some(stored) = self.store.second_factor(account.id).await? else {
            return Ok(false);
        };
        let Some(digits) = totp_digits(code) else {
            return Ok(self
                .store
                .use_recovery_code(account.id, &recovery_digest(code))
                .await?);
        };
        let keys = self.keys()?;
        let Some(seed) = keys.open(&stored.sealed_seed, &seed_context(account)) else {
            tracing::error!(login = %account.login, "the TOTP seed does not open with this secret key");
            return Ok(false);
        };
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let Some(step) = totp(seed.expose(), &self.issuer, &account.login)?.check(&digits, now)
        else {
            return Ok(false);
        };
        let step = i64::try_from(step).unwrap_or(0);
        if step <= stored.last_step {
            return Ok(false);
        }
        Ok(self.store.accept_totp_step(account.id, step).await?)
    }

    /// Recovery codes the account has left (0 without 2FA).
    pub async fn recovery_codes_left(&self, account: &AccountState) -> Result<i64, AccountError> {
        Ok(self
            .store
            .second_factor(account.id)
            .await?
            .map_or(0, |s| s.recovery_codes_left))
    }
}

/// How long the second step of a sign-in may wait for its code.
const SECOND_STEP_MS: i64 = 5 * 60 * 1000;

#[derive(serde::Serialize, serde::Deserialize)]
struct SecondStep {
    account: i64,
    password_version: i64,
    remember: bool,
}

impl AccountService {
    /// The main password was right and the account has 2FA: a token that carries the sign-in
    /// to its second step (bound to this password: a change in between voids it).
    pub fn second_step_token(
        &self,
        account: &AccountState,
        remember: bool,
    ) -> Result<String, AccountError> {
        let claims = SecondStep {
            account: account.id.0,
            password_version: account.password_version,
            remember,
        };
        Ok(self
            .keys()?
            .sign("sign-in-second-step", &claims, now_ms() + SECOND_STEP_MS))
    }

    /// The account a second-step token names (valid or not yet checked for its code), to count
    /// wrong codes per account.
    pub fn second_step_account(&self, token: &str) -> Option<i64> {
        let claims: SecondStep =
            self.keys
                .as_deref()?
                .verify("sign-in-second-step", token, now_ms())?;
        Some(claims.account)
    }

    /// The second step of a sign-in: the account and "remember me" when `code` is right.
    /// A token that is expired, forged or outlived its password is `BadCredentials`.
    pub async fn second_step(
        &self,
        token: &str,
        code: &str,
    ) -> Result<(AccountState, bool), AccountError> {
        let claims: SecondStep = self
            .keys()?
            .verify("sign-in-second-step", token, now_ms())
            .ok_or(AccountError::BadCredentials)?;
        let Some((account, _)) = self
            .store
            .account_snapshot(crate::credentials::model::AccountId(claims.account))
            .await?
        else {
            return Err(AccountError::BadCredentials);
        };
        if account.password_version != claims.password_version || !account.two_factor {
            return Err(AccountError::BadCredentials);
        }
        if !self.verify_second_factor(&account, code).await? {
            return Err(AccountError::WrongCode);
        }
        Ok((account, claims.remember))
    }
}

/// The code an authenticator app shows for `seed` (base32) at `unix_secs`: for tests and the
/// bench, which play the app.
pub fn code_at(seed_base32: &str, unix_secs: u64) -> Option<String> {
    let seed = totp_rs::Secret::try_from_base32(seed_base32).ok()?.to_vec();
    let totp = Builder::new()
        .with_secret(seed)
        .with_account_name("x")
        .build()
        .ok()?;
    Some(totp.generate(unix_secs).to_string())
}

#[cfg(test)]
impl AccountService {
    /// Tests that only need 2FA on or off (its generation and option rules), not the app.
    pub(crate) async fn set_two_factor(
        &self,
        login: &Login,
        on: bool,
    ) -> Result<Outcome, AccountError> {
        if !on {
            return self.reset_two_factor(login).await;
        }
        match self.enable_two_factor_for(login).await {
            Ok(_) => Ok(Outcome::Changed(Some(
                self.account(login).await?.generation,
            ))),
            Err(AccountError::TwoFactorAlreadyOn) => Ok(Outcome::Unchanged),
            Err(e) => Err(e),
        }
    }
}
