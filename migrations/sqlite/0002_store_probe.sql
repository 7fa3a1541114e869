-- Where /readyz writes (and removes) one page to learn whether the file takes writes again
-- after a write failed, e.g. on a full disk. Always empty between probes.
CREATE TABLE store_probe (
    id     INTEGER PRIMARY KEY,
    filler BLOB NOT NULL
);
