-- Each account's upstream budget (SPEC §12), shared by replicas: the one-minute window in
-- progress (window_start, NULL before the first counted call, and the calls counted in it)
-- and the pause a provider asked for with 429 + Retry-After (paused_until, NULL when none).
CREATE TABLE upstream_budgets (
    account      TEXT PRIMARY KEY,
    window_start TIMESTAMPTZ,
    calls        BIGINT NOT NULL DEFAULT 0,
    paused_until TIMESTAMPTZ
);
