-- Balance monitors (SPEC §8.2): one state per monitor and matched (account, wallet, currency),
-- written in the transaction of the figure it was decided on, with its event. A writer first
-- inserts the row if missing (state 'new', never committed as such) and then locks it
-- (SELECT ... FOR UPDATE), so replicas recording the same figure decide one after the other
-- and a crossing fires once. value is the latest observed figure (NULL: not reported).
CREATE TABLE monitor_states (
    monitor     TEXT        NOT NULL,
    account     TEXT        NOT NULL,
    wallet      TEXT        NOT NULL,
    currency    TEXT        NOT NULL,
    provider    TEXT        NOT NULL,
    state       TEXT        NOT NULL CHECK (state IN ('new', 'ok', 'firing')),
    value       NUMERIC,
    since       TIMESTAMPTZ,
    observed_at TIMESTAMPTZ,
    PRIMARY KEY (monitor, account, wallet, currency)
);
CREATE INDEX monitor_states_account ON monitor_states (account);
