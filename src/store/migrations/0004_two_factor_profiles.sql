-- Two-factor authentication, profiles and one-time codes.
-- The TOTP seed is sealed with the deployment's secret key (XChaCha20-Poly1305, the account id
-- as associated data): the database alone does not give it. The last accepted time step makes
-- every code single-use.
ALTER TABLE accounts ADD COLUMN totp_seed TEXT;
ALTER TABLE accounts ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT 0;

-- Recovery codes: SHA-256 digests only (each code has 50 random bits); a used one keeps its row
-- with used_at set, so the page can say how many are left.
CREATE TABLE recovery_codes (
    id         INTEGER PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    digest     TEXT   NOT NULL,
    used_at    BIGINT
);
CREATE INDEX recovery_codes_account ON recovery_codes (account_id);

-- What the account's owner says about themselves, and how they get back in: a phone number and
-- a backup email (each stored only once confirmed by a code), a security question with its
-- answer argon2-hashed.
CREATE TABLE profiles (
    account_id  BIGINT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    first_name  TEXT NOT NULL DEFAULT '',
    last_name   TEXT NOT NULL DEFAULT '',
    phone       TEXT,
    email       TEXT,
    question    TEXT,
    answer_hash TEXT,
    updated_at  BIGINT NOT NULL
);

-- Codes sent to a phone or an email: to confirm one being added, or to restore access. Only a
-- keyed digest of the code is stored; a code is single use, expires, and allows a few tries.
CREATE TABLE one_time_codes (
    id         INTEGER PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    purpose    TEXT   NOT NULL,
    target     TEXT   NOT NULL,
    digest     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    tries_left INTEGER NOT NULL,
    used_at    BIGINT
);
CREATE INDEX one_time_codes_account ON one_time_codes (account_id, purpose);
