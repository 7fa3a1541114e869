-- Events (SPEC §8.1), each written in the same transaction as the change it reports. The
-- feed position is seq, drawn from events_seq only under the transaction-level advisory lock
-- tally_events (taken as a transaction's last lock, right before its events are inserted, and
-- held until it commits): writers of events commit one after the other, so seq order is commit
-- order, and a reader never sees an event before every event with a lower seq is visible.
-- data is the event's JSON text, as written (jsonb would reorder its keys).
CREATE SEQUENCE events_seq;
CREATE TABLE events (
    seq       BIGINT PRIMARY KEY,
    type      TEXT        NOT NULL,
    account   TEXT        NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    data      TEXT        NOT NULL
);
CREATE INDEX events_account ON events (account, seq);
CREATE INDEX events_timestamp ON events (timestamp);

-- When each account's circuit first opened in its current run of failures (opened_at moves
-- at each failed probe; this stays): account.recovered's unhealthy_since. NULL while closed.
ALTER TABLE fetch_failures ADD COLUMN unhealthy_since TIMESTAMPTZ;
