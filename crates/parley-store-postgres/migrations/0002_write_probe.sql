-- One row, rewritten only after a write failed for lack of space, to learn when writes work again
-- (SQLite's 0003).
CREATE TABLE write_probe (
    write_probe_id BIGINT PRIMARY KEY CHECK (write_probe_id = 1),
    probed_at      BIGINT NOT NULL
);
