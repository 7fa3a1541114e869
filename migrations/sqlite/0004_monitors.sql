-- Balance monitors (SPEC §8.2): one state per monitor and matched (account, wallet, currency),
-- written in the transaction of the figure it was decided on, with its event. value is the
-- latest observed figure as decimal TEXT (NULL: not reported); since and observed_at are unix
-- microseconds. A monitor removed from the config leaves its rows, which nothing reads.
CREATE TABLE monitor_states (
    monitor     TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    wallet      TEXT    NOT NULL,
    currency    TEXT    NOT NULL,
    provider    TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('ok', 'firing')),
    value       TEXT,
    since       INTEGER NOT NULL,
    observed_at INTEGER NOT NULL,
    PRIMARY KEY (monitor, account, wallet, currency)
);
CREATE INDEX monitor_states_account ON monitor_states (account);
