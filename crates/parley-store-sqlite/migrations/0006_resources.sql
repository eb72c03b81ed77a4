-- Personas, replicas, documents, guardrails and objectives. Their fields are in `body`, sealed
-- under the resource's own data key (owned by `row_id`); only what is queried on is in the clear.
CREATE TABLE resource (
    row_id       TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES account (account_id),
    kind         TEXT NOT NULL,
    resource_id  TEXT NOT NULL,
    status       TEXT NOT NULL,
    body         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    blob_key     TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    deleted_at   INTEGER,
    work_at      INTEGER,
    locked_until INTEGER,
    attempts     INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX resource_wire_id ON resource (account_id, kind, resource_id);
CREATE INDEX resource_listing ON resource (account_id, kind, deleted_at, created_at DESC);
CREATE INDEX resource_work ON resource (work_at) WHERE work_at IS NOT NULL;

-- A hard-deleted resource whose key and blobs are still to be destroyed: written with the
-- delete, removed once they are gone.
CREATE TABLE resource_purge (
    row_id     TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
