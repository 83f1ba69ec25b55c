-- Client addresses (IPv4, or an IPv6 /64 as its network address) banned by the login gate after
-- too many distinct failed logins, or by an operator. Every node reads this list, so a ban made
-- on one node holds on all, and `portcullis bans lift` reaches them all.
CREATE TABLE bans (
    address    TEXT   PRIMARY KEY,
    until      BIGINT NOT NULL,
    failures   BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
