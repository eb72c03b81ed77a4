-- Webhook outbox, call timers and room participants.

ALTER TABLE account ADD COLUMN webhook_secret TEXT;  -- signs deliveries when set

ALTER TABLE conversation ADD COLUMN max_call_duration INTEGER NOT NULL DEFAULT 3600;
ALTER TABLE conversation ADD COLUMN participant_left_timeout INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversation ADD COLUMN participant_absent_timeout INTEGER NOT NULL DEFAULT 300;
ALTER TABLE conversation ADD COLUMN participants_present INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversation ADD COLUMN participant_joined_at INTEGER;  -- first join
ALTER TABLE conversation ADD COLUMN participant_left_at INTEGER;    -- last time the room emptied

CREATE TABLE participant (
    participant_id  TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversation (conversation_id),
    joined_at       INTEGER NOT NULL,
    left_at         INTEGER
) STRICT;

CREATE INDEX participant_conversation ON participant (conversation_id);

-- One row per webhook to send, written in the same transaction as its event.
CREATE TABLE delivery (
    delivery_seq    INTEGER PRIMARY KEY AUTOINCREMENT,  -- order within a conversation
    delivery_id     TEXT NOT NULL UNIQUE,               -- sent as X-Parley-Delivery-Id
    conversation_id TEXT NOT NULL,
    account_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    carries_content INTEGER NOT NULL,                   -- erased by a hard delete even if unsent
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    retry_from      INTEGER NOT NULL,                   -- start of the retry window
    locked_until    INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
) STRICT;

CREATE INDEX delivery_due ON delivery (next_attempt_at) WHERE status = 'pending';
CREATE INDEX delivery_conversation ON delivery (conversation_id, delivery_seq);
