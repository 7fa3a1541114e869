-- Events (SPEC §8.1), each written in the same transaction as the change it reports. The
-- feed position is seq: writes to SQLite are serialized (BEGIN IMMEDIATE), so seq order is
-- commit order. timestamp is unix microseconds; data is the event's JSON text, as written.
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    type      TEXT    NOT NULL,
    account   TEXT    NOT NULL,
    timestamp INTEGER NOT NULL,
    data      TEXT    NOT NULL
);
CREATE INDEX events_account ON events (account, seq);
CREATE INDEX events_timestamp ON events (timestamp);
