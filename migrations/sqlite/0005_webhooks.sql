-- Webhook deliveries (SPEC §8.3): the store is the outbox. One delivery per (event, webhook)
-- the event is for, written in the event's own transaction; times are unix microseconds.
-- status: pending | succeeded | failed. attempts counts the attempts since it was (re)queued
-- (the place in the retry schedule); generation moves on at each re-queue, so that an attempt
-- in flight meanwhile records itself without undoing the re-queue. A claim (claimed_by, claimed_until) marks an attempt in
-- flight; one left by a process that died is taken over once claimed_until has passed.
CREATE TABLE webhook_deliveries (
    event_seq       INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    webhook         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    generation      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    claimed_by      TEXT,
    claimed_until   INTEGER,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (event_seq, webhook)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook, status, next_attempt_at);

-- Every attempt, kept with its delivery (and pruned with its event).
CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq   INTEGER NOT NULL,
    webhook     TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    succeeded   INTEGER NOT NULL,
    FOREIGN KEY (event_seq, webhook) REFERENCES webhook_deliveries (event_seq, webhook) ON DELETE CASCADE
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (event_seq, webhook);
CREATE INDEX webhook_attempts_webhook ON webhook_attempts (webhook, succeeded, id);

-- A webhook disabled by a 410 Gone, until POST /webhooks/{id}/recover.
CREATE TABLE webhook_states (
    webhook     TEXT PRIMARY KEY,
    disabled_at INTEGER
);
