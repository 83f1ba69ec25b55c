-- One-time backend-login tickets (XMPP), in the store so that a ticket minted by one gateway
-- node is redeemed by whichever node's auth server the backend asks. Digests only.
CREATE TABLE tickets (
    digest     TEXT   PRIMARY KEY,
    login      TEXT   NOT NULL,
    service    TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
