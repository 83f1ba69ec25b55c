-- Hosted domains: a customer's domain connected by a platform account (its owner), confirmed by
-- a DNS TXT record, its mailboxes, additional administrators, API tokens; blocked accounts; and
-- the audit log.

-- A mailbox belongs to the domain row it was made under; platform accounts have none.
ALTER TABLE accounts ADD COLUMN domain_id BIGINT;
-- A blocked account logs in nowhere (gateway protocols, portal) until unblocked.
ALTER TABLE accounts ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;

CREATE TABLE domains (
    id           INTEGER PRIMARY KEY,
    name         TEXT   NOT NULL,
    owner_id     BIGINT NOT NULL REFERENCES accounts(id),
    -- The value the owner publishes in TXT at _portcullis-challenge.<name>: random, of this
    -- owner and this domain.
    token        TEXT   NOT NULL,
    confirmed_at BIGINT,
    created_at   BIGINT NOT NULL
);
-- One owner per confirmed domain; pending claims of several accounts may coexist.
CREATE UNIQUE INDEX domains_confirmed_name ON domains (name) WHERE confirmed_at IS NOT NULL;
CREATE UNIQUE INDEX domains_owner_name ON domains (owner_id, name);

CREATE TABLE domain_admins (
    domain_id  BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    added_at   BIGINT NOT NULL,
    PRIMARY KEY (domain_id, account_id)
);

-- Domain API tokens: SHA-256 digests only.
CREATE TABLE domain_tokens (
    id           INTEGER PRIMARY KEY,
    domain_id    BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    name         TEXT   NOT NULL,
    digest       TEXT   NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT,
    last_used_ip TEXT
);

-- Who did what, when, from where; never a secret. `account_id` and `domain` say whose log an
-- entry belongs to (the account holder's, the domain owner's).
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT   NOT NULL,
    ip         TEXT,
    account_id BIGINT,
    domain     TEXT,
    action     TEXT   NOT NULL,
    detail     TEXT   NOT NULL
);
CREATE INDEX audit_log_account ON audit_log (account_id);
CREATE INDEX audit_log_domain ON audit_log (domain);
