-- parley's embedded schema. Timestamps are microseconds since the Unix epoch (UTC).

CREATE TABLE account (
    account_id     TEXT PRIMARY KEY,  -- the account's name
    max_concurrent INTEGER,           -- NULL: the server's default cap
    retention_days INTEGER,           -- NULL: the server's default retention
    created_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE api_key (
    key_id     TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES account (account_id),
    key_hash   TEXT NOT NULL UNIQUE,  -- SHA-256 of the key; the key itself is never stored
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE TABLE conversation (
    conversation_id        TEXT PRIMARY KEY,
    account_id             TEXT NOT NULL REFERENCES account (account_id),
    status                 TEXT NOT NULL CHECK (status IN ('active', 'ended')),
    conversation_name      TEXT,
    callback_url           TEXT,
    replica_id             TEXT NOT NULL,
    persona_id             TEXT NOT NULL,
    conversational_context TEXT,
    custom_greeting        TEXT,
    test_mode              INTEGER NOT NULL,
    enable_recording       INTEGER NOT NULL,
    meeting_token          TEXT,
    request_json           TEXT NOT NULL,  -- every documented create field, as sent
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    joined_at              INTEGER,
    ended_at               INTEGER,
    shutdown_reason        TEXT,
    deleted_at             INTEGER        -- set by a soft delete
) STRICT;

CREATE INDEX conversation_listing ON conversation (account_id, deleted_at, created_at DESC);
CREATE INDEX conversation_active ON conversation (account_id) WHERE status = 'active' AND test_mode = 0;

CREATE TABLE event (
    event_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversation (conversation_id),
    event_type      TEXT NOT NULL,
    message_type    TEXT NOT NULL,
    occurred_at     INTEGER NOT NULL,
    properties      TEXT NOT NULL
) STRICT;

CREATE INDEX event_conversation ON event (conversation_id, event_id);

CREATE TABLE asset (
    conversation_id TEXT NOT NULL REFERENCES conversation (conversation_id),
    name            TEXT NOT NULL,
    blob_key        TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    size            INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, name)
) STRICT;

-- What remains of a hard-deleted conversation: no content, only that it was erased.
CREATE TABLE erasure_receipt (
    conversation_id TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    erased_at       INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    events          INTEGER NOT NULL,
    assets          INTEGER NOT NULL,
    asset_bytes     INTEGER NOT NULL
) STRICT;

-- Durable background work; a row is removed only when its work is done.
CREATE TABLE job (
    job_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    not_before      INTEGER,
    run_at          INTEGER NOT NULL,
    locked_until    INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      INTEGER NOT NULL
) STRICT;

CREATE INDEX job_due ON job (run_at);
CREATE INDEX job_conversation ON job (conversation_id);
