"""Drives a running parley with the official Tavus Python SDK (tavus-cli), as a user would.

Reads TAVUS_PUBLIC_API_BASE_URL and TAVUS_API_KEY like the SDK itself. Exits non-zero on failure.
"""

import asyncio
import json
import subprocess
import sys

from tavus_mcp.sdk.client.http import TavusClient
from tavus_mcp.sdk.errors import TavusApiError

passed, failed = 0, 0


def check(name, condition, detail=""):
    global passed, failed
    if condition:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


async def main():
    async with TavusClient.from_env() as tavus:
        c = await tavus.conversations.create(
            {"persona_id": "pdced222244b", "replica_id": "rfe12d8b9597", "conversation_name": "sdk smoke"}
        )
        cid = c["conversation_id"]
        check("create returns an id and a url", cid.startswith("c") and c["conversation_url"].endswith(cid), c)
        got = await tavus.conversations.get(cid)
        check("get", got["status"] == "active" and got["conversation_name"] == "sdk smoke", got)
        listed = await tavus.conversations.list(limit=100, page=1)
        check("list", any(x["conversation_id"] == cid for x in listed["data"]) and listed["total_count"] >= 1, listed)
        everything = await tavus.conversations.list_all()
        check("list_all pages through total_count", any(x["conversation_id"] == cid for x in everything["data"]), everything)
        ended = await tavus.conversations.end(cid)
        check("end", ended == {"conversation_id": cid, "status": "ended"}, ended)
        check("delete returns None on 204", await tavus.conversations.delete(cid) is None)
        try:
            await tavus.conversations.get(cid)
            check("get after delete is an error", False)
        except TavusApiError as e:
            check("get after delete is 400 Invalid conversation_id",
                  e.status_code == 400 and e.body == {"error": "Invalid conversation_id"}, (e.status_code, e.body))

    out = subprocess.run(
        ["tavus", "conversation", "create", "--pal-id", "pdac61133ac5", "--face-id", "r90bbd427f71", "--name", "cli smoke"],
        capture_output=True, text=True,
    )
    check("tavus conversation create (CLI)", out.returncode == 0 and "cli smoke" in out.stdout, out.stdout + out.stderr)
    if out.returncode == 0:
        cid = json.loads(out.stdout[out.stdout.index("{"):])["conversation_id"]
        out = subprocess.run(["tavus", "conversation", "end", cid], capture_output=True, text=True)
        check("tavus conversation end (CLI)", out.returncode == 0, out.stdout + out.stderr)


asyncio.run(main())
print(f"sdk smoke: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
