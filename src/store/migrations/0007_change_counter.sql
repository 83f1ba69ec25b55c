-- The change feed's ids in commit order. Every transaction that records a change takes the next
-- number from this one row and holds the row locked until it commits, so a change with a higher
-- id never becomes visible before one with a lower id: a reader that has seen id N has seen
-- every change up to N, and its cursor never skips one. (A sequence does not give this on
-- PostgreSQL: numbers are handed out at insert, transactions commit in any order.)
CREATE TABLE change_counter (
    singleton BIGINT PRIMARY KEY CHECK (singleton = 1),
    last      BIGINT NOT NULL
);
INSERT INTO change_counter (singleton, last) SELECT 1, COALESCE(MAX(id), 0) FROM changes;
-- Writers delete changes past the retention by time.
CREATE INDEX changes_at ON changes (at);
