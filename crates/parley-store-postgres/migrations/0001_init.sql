-- parley's schema on PostgreSQL: the SQLite schema (its 0001 and 0002) in one step, same names.
-- Timestamps are microseconds since the Unix epoch (UTC). JSON is TEXT, not JSONB, so the bytes
-- a client sent (request_json) and a receiver is sent (payload) are kept exactly.

CREATE TABLE account (
    account_id     TEXT PRIMARY KEY,  -- the account's name
    max_concurrent BIGINT,            -- NULL: the server's default cap
    retention_days BIGINT,            -- NULL: the server's default retention
    created_at     BIGINT NOT NULL,
    webhook_secret TEXT               -- signs deliveries when set
);

CREATE TABLE api_key (
    key_id     TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES account (account_id),
    key_hash   TEXT NOT NULL UNIQUE,  -- SHA-256 of the key; the key itself is never stored
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE conversation (
    conversation_id            TEXT PRIMARY KEY,
    account_id                 TEXT NOT NULL REFERENCES account (account_id),
    status                     TEXT NOT NULL CHECK (status IN ('active', 'ended')),
    conversation_name          TEXT,
    callback_url               TEXT,
    replica_id                 TEXT NOT NULL,
    persona_id                 TEXT NOT NULL,
    conversational_context     TEXT,
    custom_greeting            TEXT,
    test_mode                  BOOLEAN NOT NULL,
    enable_recording           BOOLEAN NOT NULL,
    meeting_token              TEXT,
    request_json               TEXT NOT NULL,  -- every documented create field, as sent
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL,
    joined_at                  BIGINT,
    ended_at                   BIGINT,
    shutdown_reason            TEXT,
    deleted_at                 BIGINT,         -- set by a soft delete
    max_call_duration          BIGINT NOT NULL DEFAULT 3600,
    participant_left_timeout   BIGINT NOT NULL DEFAULT 0,
    participant_absent_timeout BIGINT NOT NULL DEFAULT 300,
    participants_present       BIGINT NOT NULL DEFAULT 0,
    participant_joined_at      BIGINT,         -- first join
    participant_left_at        BIGINT          -- last time the room emptied
);

CREATE INDEX conversation_listing ON conversation (account_id, deleted_at, created_at DESC);
CREATE INDEX conversation_active ON conversation (account_id) WHERE status = 'active' AND NOT test_mode;

CREATE TABLE event (
    event_id        BIGSERIAL PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversation (conversation_id),
    event_type      TEXT NOT NULL,
    message_type    TEXT NOT NULL,
    occurred_at     BIGINT NOT NULL,
    properties      TEXT NOT NULL
);

CREATE INDEX event_conversation ON event (conversation_id, event_id);

CREATE TABLE asset (
    conversation_id TEXT NOT NULL REFERENCES conversation (conversation_id),
    name            TEXT NOT NULL,
    blob_key        TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    size            BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, name)
);

CREATE TABLE participant (
    participant_id  TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversation (conversation_id),
    joined_at       BIGINT NOT NULL,
    left_at         BIGINT
);

CREATE INDEX participant_conversation ON participant (conversation_id);

-- What remains of a hard-deleted conversation: no content, only that it was erased.
CREATE TABLE erasure_receipt (
    conversation_id TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    erased_at       BIGINT NOT NULL,
    reason          TEXT NOT NULL,
    events          BIGINT NOT NULL,
    assets          BIGINT NOT NULL,
    asset_bytes     BIGINT NOT NULL
);

-- Durable background work; a row is removed only when its work is done.
CREATE TABLE job (
    job_id          BIGSERIAL PRIMARY KEY,
    kind            TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    not_before      BIGINT,
    run_at          BIGINT NOT NULL,
    locked_until    BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      BIGINT NOT NULL
);

CREATE INDEX job_due ON job (run_at);
CREATE INDEX job_conversation ON job (conversation_id);

-- One row per webhook to send, written in the same transaction as its event.
CREATE TABLE delivery (
    delivery_seq    BIGSERIAL PRIMARY KEY,      -- order within a conversation
    delivery_id     TEXT NOT NULL UNIQUE,       -- sent as X-Parley-Delivery-Id
    conversation_id TEXT NOT NULL,
    account_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    carries_content BOOLEAN NOT NULL,           -- erased by a hard delete even if unsent
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    retry_from      BIGINT NOT NULL,            -- start of the retry window
    locked_until    BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    finished_at     BIGINT
);

CREATE INDEX delivery_due ON delivery (next_attempt_at) WHERE status = 'pending';
CREATE INDEX delivery_conversation ON delivery (conversation_id, delivery_seq);
