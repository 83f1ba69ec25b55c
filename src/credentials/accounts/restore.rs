//! The profile and restoring access.
//!
//! An account's owner may register a phone number and a backup email (each stored only once a
//! code sent to it comes back) and a security question with its answer (argon2-hashed, compared
//! case- and space-insensitively). Someone who cannot sign in proves they hold one of them:
//! a 6-digit code sent to the phone or the email (single use, 10 minutes, 5 tries), or the
//! answer. Success sets a new main password and bumps the generation ("access restored"),
//! ending every app password, every relayed session and every web session.
//!
//! Nothing here tells a stranger whether an account, a phone or an email exists: a code is sent
//! only when the typed address is the account's, but the answer is the same either way; a login
//! with no account or no question gets a decoy question picked by a keyed digest of the login
//! (stable, so asking twice shows the same one), and every wrong answer costs one argon2
//! verification. Two-factor authentication stays on through a restore: the new password still
//! needs a code or a recovery code to sign in.

use super::{AccountError, AccountService, MAX_PASSWORD_BYTES, check_password, password_change};
use crate::credentials::hashing::hex;
use crate::credentials::model::{AccountState, GenerationBump, now_ms};
use crate::credentials::secret::Secret;
use crate::store::{CodeCheck, NewCode, Profile};

/// The security questions an owner picks from (a fixed list, so a decoy looks like any other).
pub const QUESTIONS: &[&str] = &[
    "What was the name of your first pet?",
    "In which city did your parents meet?",
    "What was the name of your first school?",
    "What is the name of the street you grew up on?",
    "What was your childhood nickname?",
    "What was the first concert you went to?",
];

/// How long a sent code is valid.
const CODE_MS: i64 = 10 * 60 * 1000;
/// Wrong tries a sent code allows.
const CODE_TRIES: i64 = 5;
/// Longest profile name, in characters.
const MAX_NAME: usize = 100;

/// Where a code goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Phone,
}

impl Channel {
    fn purpose(self, restore: bool) -> &'static str {
        match (self, restore) {
            (Channel::Email, false) => "confirm-email",
            (Channel::Phone, false) => "confirm-phone",
            (Channel::Email, true) => "restore-email",
            (Channel::Phone, true) => "restore-phone",
        }
    }

    /// The canonical form of a typed address, or why it is not one.
    pub fn normalize(self, typed: &str) -> Result<String, AccountError> {
        let typed = typed.trim();
        match self {
            Channel::Email => {
                let (local, domain) = typed.rsplit_once('@').ok_or_else(|| {
                    AccountError::BadInput("That is not an email address.".into())
                })?;
                if local.is_empty()
                    || domain.is_empty()
                    || !domain.contains('.')
                    || typed.len() > 254
                    || typed.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(AccountError::BadInput(
                        "That is not an email address.".into(),
                    ));
                }
                Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
            }
            Channel::Phone => {
                let digits: String = typed
                    .chars()
                    .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
                    .collect();
                let number = digits.strip_prefix('+').unwrap_or("");
                if !(8..=15).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(AccountError::BadInput(
                        "Give the phone number in international form, like +44 20 7946 0958."
                            .into(),
                    ));
                }
                Ok(format!("+{number}"))
            }
        }
    }
}

/// How someone restoring access proves who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proof {
    Email,
    Phone,
    Question,
}

impl Proof {
    pub fn channel(self) -> Option<Channel> {
        match self {
            Proof::Email => Some(Channel::Email),
            Proof::Phone => Some(Channel::Phone),
            Proof::Question => None,
        }
    }
}

impl std::str::FromStr for Proof {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Self, AccountError> {
        match s {
            "email" => Ok(Proof::Email),
            "phone" => Ok(Proof::Phone),
            "question" => Ok(Proof::Question),
            _ => Err(AccountError::BadInput(
                "Choose how to restore access.".into(),
            )),
        }
    }
}

/// How long a restore may take from its first page to its last.
const RESTORE_MS: i64 = 15 * 60 * 1000;

/// A code to deliver: where, and the code (never stored, only its digest).
#[derive(Debug)]
pub struct CodeToSend {
    pub channel: Channel,
    pub target: String,
    pub code: Secret,
}

/// An answer as compared: case and spaces do not matter.
fn normalize_answer(answer: &str) -> String {
    answer
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

fn clean_name(name: &str) -> Result<String, AccountError> {
    let name = name.trim();
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(AccountError::BadInput(format!(
            "Names are at most {MAX_NAME} printable characters."
        )));
    }
    Ok(name.to_owned())
}

impl AccountService {
    /// The account's profile.
    pub async fn profile(&self, account: &AccountState) -> Result<Profile, AccountError> {
        Ok(self.store.profile(account.id).await?)
    }

    /// Sets the first and last name.
    pub async fn set_names(
        &self,
        account: &AccountState,
        first: &str,
        last: &str,
    ) -> Result<(), AccountError> {
        let mut profile = self.store.profile(account.id).await?;
        profile.first_name = clean_name(first)?;
        profile.last_name = clean_name(last)?;
        Ok(self.store.set_profile(account.id, &profile).await?)
    }

    /// Sets the security question (one of [`QUESTIONS`]) and its answer.
    pub async fn set_question(
        &self,
        account: &AccountState,
        question: &str,
        answer: &str,
    ) -> Result<(), AccountError> {
        let Some(question) = QUESTIONS.iter().find(|q| **q == question) else {
            return Err(AccountError::BadInput(
                "Choose one of the questions.".into(),
            ));
        };
        let answer = normalize_answer(answer);
        if answer.chars().count() < 3 || answer.len() > MAX_PASSWORD_BYTES {
            return Err(AccountError::BadInput(
                "The answer needs at least 3 letters or digits.".into(),
            ));
        }
        let hash = self.hasher.hash(&Secret::from(answer.as_str())).await?;
        let mut profile = self.store.profile(account.id).await?;
        profile.question = Some((*question).to_owned());
        profile.answer_hash = Some(hash);
        Ok(self.store.set_profile(account.id, &profile).await?)
    }

    /// Removes the phone, the email, or (with `None`) the security question.
    pub async fn remove_contact(
        &self,
        account: &AccountState,
        channel: Option<Channel>,
    ) -> Result<(), AccountError> {
        let mut profile = self.store.profile(account.id).await?;
        match channel {
            Some(Channel::Email) => profile.email = None,
            Some(Channel::Phone) => profile.phone = None,
            None => {
                profile.question = None;
                profile.answer_hash = None;
            }
        }
        Ok(self.store.set_profile(account.id, &profile).await?)
    }

    fn code_digest(
        &self,
        account: &AccountState,
        purpose: &str,
        code: &str,
    ) -> Result<String, AccountError> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let input = format!("{}\0{purpose}\0{code}", account.id.0);
        Ok(hex(&self.keys()?.digest("one-time-code", input.as_bytes())))
    }

    async fn new_code(
        &self,
        account: &AccountState,
        channel: Channel,
        target: &str,
        restore: bool,
    ) -> Result<CodeToSend, AccountError> {
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        let purpose = channel.purpose(restore);
        let digest = self.code_digest(account, purpose, &code)?;
        self.store
            .create_code(&NewCode {
                account_id: account.id,
                purpose,
                target,
                digest: &digest,
                expires_at: now_ms() + CODE_MS,
                tries: CODE_TRIES,
            })
            .await?;
        Ok(CodeToSend {
            channel,
            target: target.to_owned(),
            code: Secret::from(code.as_str()),
        })
    }

    /// Starts adding a phone or a backup email: the code to send there.
    pub async fn start_confirm(
        &self,
        account: &AccountState,
        channel: Channel,
        typed: &str,
    ) -> Result<CodeToSend, AccountError> {
        let target = channel.normalize(typed)?;
        self.new_code(account, channel, &target, false).await
    }

    /// Finishes adding a phone or a backup email with the code sent there.
    pub async fn finish_confirm(
        &self,
        account: &AccountState,
        channel: Channel,
        code: &str,
    ) -> Result<String, AccountError> {
        let purpose = channel.purpose(false);
        let digest = self.code_digest(account, purpose, code)?;
        let CodeCheck::Accepted { target } = self
            .store
            .check_code(account.id, purpose, &digest, now_ms())
            .await?
        else {
            return Err(AccountError::WrongCode);
        };
        let mut profile = self.store.profile(account.id).await?;
        match channel {
            Channel::Email => profile.email = Some(target.clone()),
            Channel::Phone => profile.phone = Some(target.clone()),
        }
        self.store.set_profile(account.id, &profile).await?;
        Ok(target)
    }

    /// The account a restore names, if any (`None` for anything else, said to nobody).
    async fn restoring(&self, typed_login: &str) -> Result<Option<AccountState>, AccountError> {
        let Ok(login) = self.login(typed_login) else {
            return Ok(None);
        };
        Ok(self
            .store
            .account_by_login(&login)
            .await?
            .map(|(account, _)| account))
    }

    /// "Can't sign in?" by phone or email: a code to send when `typed` is the account's
    /// confirmed address; `None` otherwise (the page says the same either way).
    pub async fn start_restore(
        &self,
        typed_login: &str,
        channel: Channel,
        typed: &str,
    ) -> Result<Option<CodeToSend>, AccountError> {
        self.keys()?;
        let (Some(account), Ok(target)) =
            (self.restoring(typed_login).await?, channel.normalize(typed))
        else {
            return Ok(None);
        };
        let profile = self.store.profile(account.id).await?;
        let registered = match channel {
            Channel::Email => profile.email,
            Channel::Phone => profile.phone,
        };
        // The code goes to the address as registered, whatever the typed one's case.
        let Some(registered) = registered.filter(|r| r.eq_ignore_ascii_case(&target)) else {
            return Ok(None);
        };
        Ok(Some(
            self.new_code(&account, channel, &registered, true).await?,
        ))
    }

    /// Restores access with a code sent by [`AccountService::start_restore`].
    pub async fn restore_with_code(
        &self,
        typed_login: &str,
        channel: Channel,
        code: &str,
        new_password: &Secret,
    ) -> Result<(), AccountError> {
        check_password(new_password)?;
        let Some(account) = self.restoring(typed_login).await? else {
            return Err(AccountError::WrongCode);
        };
        let purpose = channel.purpose(true);
        let digest = self.code_digest(&account, purpose, code)?;
        match self
            .store
            .check_code(account.id, purpose, &digest, now_ms())
            .await?
        {
            CodeCheck::Accepted { .. } => self.restore(&account, new_password).await,
            CodeCheck::Refused => Err(AccountError::WrongCode),
        }
    }

    /// The question to ask someone restoring `typed_login`: the account's own, or a decoy that
    /// no answer opens when there is no such account or it has no question.
    pub async fn restore_question(&self, typed_login: &str) -> Result<String, AccountError> {
        let keys = self.keys()?;
        if let Some(account) = self.restoring(typed_login).await?
            && let Some(question) = self.store.profile(account.id).await?.question
        {
            return Ok(question);
        }
        let key = typed_login.trim().to_lowercase();
        let pick = keys.digest("decoy-question", key.as_bytes());
        Ok(QUESTIONS[usize::from(pick[0]) % QUESTIONS.len()].to_owned())
    }

    /// Restores access with the security question's answer.
    pub async fn restore_with_answer(
        &self,
        typed_login: &str,
        answer: &str,
        new_password: &Secret,
    ) -> Result<(), AccountError> {
        check_password(new_password)?;
        let answer = Secret::from(normalize_answer(answer).as_str());
        if answer.expose().len() > MAX_PASSWORD_BYTES {
            return Err(AccountError::WrongCode);
        }
        let account = self.restoring(typed_login).await?;
        let hash = match &account {
            Some(account) => self.store.profile(account.id).await?.answer_hash,
            None => None,
        };
        let (Some(account), Some(hash)) = (account, hash) else {
            self.decoy_verify(&answer).await;
            return Err(AccountError::WrongCode);
        };
        if !self.hasher.verify(&answer, &hash).await.unwrap_or(false) {
            return Err(AccountError::WrongCode);
        }
        self.restore(&account, new_password).await
    }

    /// A token carrying a restore (the login as typed, the proof) to its last page.
    pub fn restore_token(&self, typed_login: &str, proof: Proof) -> Result<String, AccountError> {
        let login: String = typed_login.trim().chars().take(320).collect();
        Ok(self
            .keys()?
            .sign("restore", &(login, proof), now_ms() + RESTORE_MS))
    }

    /// What a restore token carries; `WrongCode` when it expired or was not ours.
    pub fn restore_claims(&self, token: &str) -> Result<(String, Proof), AccountError> {
        self.keys()?
            .verify("restore", token, now_ms())
            .ok_or(AccountError::WrongCode)
    }

    /// Access restored: the new password, the generation bumped, every web session ended.
    async fn restore(&self, account: &AccountState, password: &Secret) -> Result<(), AccountError> {
        let hash = self.hasher.hash(password).await?;
        self.decide(&account.login, |current| {
            let mut change = password_change(current, hash.clone());
            change.bump = Some(GenerationBump::AccessRestored);
            change.kind = "restore";
            Ok(Some(change))
        })
        .await?;
        self.store.end_web_sessions(account.id).await?;
        tracing::info!(login = %account.login, "access restored");
        Ok(())
    }
}
