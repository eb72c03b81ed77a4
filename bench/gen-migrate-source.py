"""Makes an embedded store of N ended test-mode conversations, to time `parley migrate-store`.

    python3 bench/gen-migrate-source.py target/release/parley 1000000 /tmp/source
    parley migrate-store --from sqlite:///tmp/source/parley.db --to postgres://… --to-blob-url …

The schema comes from parley itself (`parley keys create` on an empty folder); the rows are
inserted directly, since a million creates through the API would take far longer than the copy.
"""

import random
import shutil
import sqlite3
import subprocess
import sys

parley, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
shutil.rmtree(out, ignore_errors=True)
subprocess.run([parley, "keys", "create", "--account", "default", "--data-dir", out],
               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
db = sqlite3.connect(f"{out}/parley.db")
t0 = 1_750_000_000_000_000
rows = (
    (f"c{random.getrandbits(64):016x}", "default", "ended", f"call {i}", None, "r79e1c033f",
     "p5317866", "context " * 8, None, 1, 0, None, '{"test_mode":true}', t0 + i, t0 + i, None,
     t0 + i, "end_conversation_endpoint_hit", None, 3600, 0, 300, 0, None, None)
    for i in range(n)
)
db.executemany(f"INSERT INTO conversation VALUES ({','.join('?' * 25)})", rows)
db.commit()
print(f"{n} conversations in {out}/parley.db")
