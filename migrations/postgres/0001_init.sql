-- Balance figures stored as change points: one row per distinct set of figures of an
-- (account, wallet, currency); an unchanged figure only moves last_confirmed_at.
-- NUMERIC without a typmod keeps the scale the provider sent ("13.00" stays 13.00).
CREATE TABLE balance_points (
    id                BIGSERIAL PRIMARY KEY,
    account           TEXT        NOT NULL,
    provider          TEXT        NOT NULL,
    wallet            TEXT        NOT NULL,
    currency          TEXT        NOT NULL,
    available         NUMERIC,
    pending           NUMERIC,
    reserved          NUMERIC,
    total             NUMERIC,
    blocked           BOOLEAN     NOT NULL,
    first_seen_at     TIMESTAMPTZ NOT NULL,
    last_confirmed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX balance_points_series ON balance_points (account, wallet, currency, first_seen_at);
CREATE INDEX balance_points_account_time ON balance_points (account, first_seen_at);

-- The latest successful fetch of each account: its time (which the rows of that fetch carry
-- as last_confirmed_at) and the provider's raw answer, for include=raw.
CREATE TABLE account_snapshots (
    account    TEXT PRIMARY KEY,
    provider   TEXT        NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    raw        TEXT
);

-- The current state of each payout seen, and every observed transition.
CREATE TABLE payouts (
    account         TEXT        NOT NULL,
    payout_id       TEXT        NOT NULL,
    provider        TEXT        NOT NULL,
    reference       TEXT,
    status          TEXT        NOT NULL,
    provider_status TEXT        NOT NULL,
    is_final        BOOLEAN     NOT NULL,
    amount          NUMERIC,
    currency        TEXT,
    fee             NUMERIC,
    failure_code    TEXT,
    failure_message TEXT,
    created_at      TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ,
    fetched_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account, payout_id)
);
CREATE INDEX payouts_reference ON payouts (account, reference);

CREATE TABLE payout_transitions (
    id              BIGSERIAL PRIMARY KEY,
    account         TEXT        NOT NULL,
    payout_id       TEXT        NOT NULL,
    observed_at     TIMESTAMPTZ NOT NULL,
    provider_status TEXT        NOT NULL,
    status          TEXT        NOT NULL,
    source          TEXT        NOT NULL
);
CREATE INDEX payout_transitions_payout ON payout_transitions (account, payout_id, id);
