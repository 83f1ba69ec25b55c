-- Accounts, app passwords and the change feed.
-- Written in the SQL that SQLite and PostgreSQL share: BIGINT ids and timestamps (Unix
-- milliseconds), INTEGER 0/1 flags, TEXT everywhere else.

CREATE TABLE accounts (
    id                 INTEGER PRIMARY KEY,
    login              TEXT    NOT NULL UNIQUE,
    password_hash      TEXT    NOT NULL,
    password_version   BIGINT  NOT NULL DEFAULT 1,
    two_factor         INTEGER NOT NULL DEFAULT 0,
    app_passwords_only INTEGER NOT NULL DEFAULT 1,
    generation         BIGINT  NOT NULL DEFAULT 1,
    -- Bumped by every change to the account or its app passwords, so a reader can tell which
    -- of two snapshots is newer.
    revision           BIGINT  NOT NULL DEFAULT 1,
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL
);

CREATE TABLE app_passwords (
    id                 INTEGER PRIMARY KEY,
    account_id         BIGINT  NOT NULL REFERENCES accounts (id),
    service            TEXT    NOT NULL,
    name               TEXT    NOT NULL,
    -- SHA-256 of the normalised secret: the stored form and the O(1) lookup key.
    digest             TEXT    NOT NULL UNIQUE,
    generation         BIGINT  NOT NULL,
    created_at         BIGINT  NOT NULL,
    revoked_at         BIGINT,
    last_used_at       BIGINT,
    last_used_ip       TEXT,
    last_used_protocol TEXT
);

CREATE INDEX app_passwords_by_account ON app_passwords (account_id);

-- One row per credential-relevant change, written in the same transaction as the change.
-- Running gateways read it to learn what other processes (the CLI, other nodes) changed.
CREATE TABLE changes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BIGINT  NOT NULL,
    kind       TEXT    NOT NULL,
    at         BIGINT  NOT NULL
);
