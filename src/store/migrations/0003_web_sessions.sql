-- Web sessions of the account portal. Only a digest of the session token is stored: the token
-- itself lives in the browser's cookie.
CREATE TABLE web_sessions (
    id            INTEGER PRIMARY KEY,
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    digest        TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    signed_in_at  BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    remember      INTEGER NOT NULL,
    ip            TEXT NOT NULL,
    user_agent    TEXT NOT NULL
);
CREATE INDEX web_sessions_account ON web_sessions (account_id);
