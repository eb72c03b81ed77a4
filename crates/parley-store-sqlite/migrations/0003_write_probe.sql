-- One row, rewritten only after a write failed for lack of space, to learn when writes work again.
CREATE TABLE write_probe (
    write_probe_id INTEGER PRIMARY KEY CHECK (write_probe_id = 1),
    probed_at      INTEGER NOT NULL
) STRICT;
