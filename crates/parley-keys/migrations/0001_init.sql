-- The key store: its own database, never the content database, so a backup of the content
-- carries no keys (docs/KEYS.md).

-- One row: the master key that wraps the keys, and a rotation under way.
CREATE TABLE key_store (
    key_store_id        SMALLINT PRIMARY KEY CHECK (key_store_id = 1),
    master_key_id       TEXT NOT NULL,
    -- 'rewrapping': keys are being wrapped under other_master_key_id too;
    -- 'retiring': the store switched from other_master_key_id, whose copies are being removed.
    rotation            TEXT NOT NULL CHECK (rotation IN ('none', 'rewrapping', 'retiring')),
    other_master_key_id TEXT,
    -- The master key the store last switched from: only its id, to name it when it is given.
    previous_master_key_id TEXT,
    CHECK ((rotation = 'none') = (other_master_key_id IS NULL))
);

-- One row per conversation that has a key: the key wrapped under a master key, and during a
-- rotation a second copy wrapped under the other one.
CREATE TABLE data_key (
    conversation_id     TEXT PRIMARY KEY,
    data_key_id         TEXT NOT NULL UNIQUE,
    created_at          BIGINT NOT NULL,
    master_key_id       TEXT NOT NULL,
    wrapped             BYTEA NOT NULL,
    other_master_key_id TEXT,
    other_wrapped       BYTEA,
    CHECK ((other_master_key_id IS NULL) = (other_wrapped IS NULL))
);
