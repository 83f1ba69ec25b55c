-- Keys that encrypt TLS session tickets, shared by every node so that a client resumes its TLS
-- session on whichever node it reaches. Each key is sealed with the deployment's secret key
-- (`[store] secret_key_file`), so a copy of the database alone opens no ticket. A key encrypts
-- from `not_before` until a newer key's `not_before`, and decrypts until it is pruned.
CREATE TABLE tls_ticket_keys (
    id         INTEGER PRIMARY KEY,
    not_before BIGINT NOT NULL,
    sealed     TEXT   NOT NULL
);
