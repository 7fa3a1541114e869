-- Balance figures stored as change points: one row per distinct set of figures of an
-- (account, wallet, currency); an unchanged figure only moves last_confirmed_at.
-- Amounts are decimal TEXT (SQLite's NUMERIC affinity would round through f64).
-- Times are unix microseconds, UTC.
CREATE TABLE balance_points (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    account           TEXT    NOT NULL,
    provider          TEXT    NOT NULL,
    wallet            TEXT    NOT NULL,
    currency          TEXT    NOT NULL,
    available         TEXT,
    pending           TEXT,
    reserved          TEXT,
    total             TEXT,
    blocked           INTEGER NOT NULL,
    first_seen_at     INTEGER NOT NULL,
    last_confirmed_at INTEGER NOT NULL
);
CREATE INDEX balance_points_series ON balance_points (account, wallet, currency, first_seen_at);
CREATE INDEX balance_points_account_time ON balance_points (account, first_seen_at);

-- The latest successful fetch of each account: its time (which the rows of that fetch carry
-- as last_confirmed_at) and the provider's raw answer, for include=raw.
CREATE TABLE account_snapshots (
    account    TEXT PRIMARY KEY,
    provider   TEXT    NOT NULL,
    fetched_at INTEGER NOT NULL,
    raw        TEXT
);

-- The current state of each payout seen, and every observed transition.
CREATE TABLE payouts (
    account         TEXT    NOT NULL,
    payout_id       TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    reference       TEXT,
    status          TEXT    NOT NULL,
    provider_status TEXT    NOT NULL,
    is_final        INTEGER NOT NULL,
    amount          TEXT,
    currency        TEXT,
    fee             TEXT,
    failure_code    TEXT,
    failure_message TEXT,
    created_at      INTEGER,
    updated_at      INTEGER,
    fetched_at      INTEGER NOT NULL,
    PRIMARY KEY (account, payout_id)
);
CREATE INDEX payouts_reference ON payouts (account, reference);

CREATE TABLE payout_transitions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account         TEXT    NOT NULL,
    payout_id       TEXT    NOT NULL,
    observed_at     INTEGER NOT NULL,
    provider_status TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    source          TEXT    NOT NULL
);
CREATE INDEX payout_transitions_payout ON payout_transitions (account, payout_id, id);
