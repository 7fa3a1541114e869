-- The payout watch (SPEC §9.1): one row per watched payout, keyed by the id it is looked up
-- by (the provider's id, or the id given to POST /payouts/{id}/watch until it is found).
-- Times are unix microseconds. checks counts the lookups made (the place in the schedule).
-- A claim (claimed_by, claimed_until) marks a lookup in flight; one left by a process that
-- died is taken over once claimed_until has passed. A watch ends (its row is deleted) when the
-- payout is final or watch_until has passed.
CREATE TABLE payout_watches (
    account          TEXT    NOT NULL,
    payout_id        TEXT    NOT NULL,
    first_watched_at INTEGER NOT NULL,
    watch_until      INTEGER NOT NULL,
    next_check_at    INTEGER NOT NULL,
    checks           INTEGER NOT NULL DEFAULT 0,
    claimed_by       TEXT,
    claimed_until    INTEGER,
    PRIMARY KEY (account, payout_id)
);
CREATE INDEX payout_watches_due ON payout_watches (next_check_at);

-- Callback receipts (SPEC §9.2): every callback to a configured account, kept as long as
-- events. outcome: applied | duplicate | trigger | rejected.
CREATE TABLE callback_receipts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    account     TEXT    NOT NULL,
    provider    TEXT    NOT NULL,
    verified    INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    payout_id   TEXT,
    status      TEXT,
    error       TEXT
);
CREATE INDEX callback_receipts_account ON callback_receipts (account, id);
CREATE INDEX callback_receipts_received ON callback_receipts (received_at);
