-- Coordination of replicas sharing this database.

-- One live fetch per account across replicas: a lease with an expiry, so a crashed holder's
-- lease lapses on its own.
CREATE TABLE fetch_leases (
    account    TEXT PRIMARY KEY,
    holder     TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- The last failed fetch of each account and the run of failures it belongs to, so replicas
-- waiting on a holder learn its failure instead of calling the upstream themselves.
CREATE TABLE fetch_failures (
    account              TEXT PRIMARY KEY,
    code                 TEXT        NOT NULL,
    message              TEXT        NOT NULL,
    upstream_status      INTEGER,
    failed_at            TIMESTAMPTZ NOT NULL,
    consecutive_failures INTEGER     NOT NULL
);
