-- The circuit breaker of each account, shared by replicas: the run of failures is counted
-- in consecutive_failures; opened_at is when the circuit (re)opened, NULL while it is closed.
ALTER TABLE fetch_failures ADD COLUMN opened_at TIMESTAMPTZ;
