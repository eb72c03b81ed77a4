#!/usr/bin/env python3
"""Seeds parley with conversations through its HTTP API, for bench/run.sh.

Each conversation is created with recording enabled and then ended, so the end call
produces its recording (the WAV blob and its asset row). The ids go to OUT, one a line.

usage: seed.py HOST:PORT API_KEY COUNT CONCURRENCY OUT
"""

import http.client
import json
import sys
import threading
import time

BODY = json.dumps(
    {
        "conversation_name": "bench",
        "conversational_context": "A conversation created by bench/seed.py to be read and deleted.",
        "properties": {"enable_recording": True},
    }
)


def main() -> int:
    addr, key, count, concurrency, out = sys.argv[1:6]
    count, concurrency = max(1, int(count)), max(1, int(concurrency))
    host, port = addr.rsplit(":", 1)
    headers = {"x-api-key": key, "content-type": "application/json"}
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(count))

    def call(conn, method, path, body=None):
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
        return json.loads(data)

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                if errors or next(next_index, None) is None:
                    return
            try:
                created = call(conn, "POST", "/v2/conversations", BODY)
                cid = created["conversation_id"]
                ended = call(conn, "POST", f"/v2/conversations/{cid}/end")
                if ended.get("status") != "ended":
                    raise RuntimeError(f"end of {cid} answered {ended}")
            except Exception as e:  # noqa: BLE001 - report the first failure and stop
                with lock:
                    errors.append(str(e))
                return
            with lock:
                ids.append(cid)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(min(concurrency, count))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    if errors:
        print(f"seed.py: {errors[0]}", file=sys.stderr)
        return 1
    # The last one must have its recording, or the hard deletes would erase less than meant.
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("GET", f"/v2/conversations/{ids[-1]}/recording", headers=headers)
    resp = conn.getresponse()
    recording = resp.read()
    if resp.status != 200 or not recording:
        print(f"seed.py: {ids[-1]} has no recording: {resp.status} {recording[:200]!r}", file=sys.stderr)
        return 1
    with open(out, "w") as f:
        f.write("".join(i + "\n" for i in ids))
    print(
        f"seed.py: {len(ids)} conversations created and ended in {elapsed:.1f} s "
        f"({len(ids) / elapsed:.0f}/s, {concurrency} connections); "
        f"recordings of {len(recording)} bytes",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
