"""Drives a running parley with the official tavus CLI and with the exact requests of the LiveKit
and Pipecat plugins, as an app ported to parley would.

Reads TAVUS_PUBLIC_API_BASE_URL and TAVUS_API_KEY like the clients themselves; serves a document
for parley to fetch from a local HTTP server. Exits non-zero on failure.
"""

import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import asyncio

import httpx
from tavus_mcp.sdk.client.http import TavusClient
from tavus_mcp.sdk.errors import TavusApiError

BASE = os.environ["TAVUS_PUBLIC_API_BASE_URL"].rstrip("/")
KEY = os.environ["TAVUS_API_KEY"]
MARKER = "parley-clients-smoke-document"
passed, failed = 0, 0


def check(name, condition, detail=""):
    global passed, failed
    if condition:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {str(detail)[:2000]}")


def tavus(*args):
    """Runs a tavus CLI command; returns (exit code, output, parsed JSON or None)."""
    env = dict(os.environ, COLUMNS="400", TERM="dumb", NO_COLOR="1")
    out = subprocess.run(["tavus", *args], capture_output=True, text=True, env=env, timeout=120)
    text = out.stdout
    parsed = None
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if starts:
        try:
            parsed = json.loads(text[min(starts):])
        except ValueError:
            parsed = None
    return out.returncode, text + out.stderr, parsed


def api(method, path, body=None):
    r = httpx.request(method, f"{BASE}{path}", headers={"x-api-key": KEY}, json=body, timeout=30)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, None


def serve_document():
    """A local web server with one text document on it; returns its URL."""
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "handbook.txt"), "w") as f:
        f.write(f"{MARKER}: refunds are due within 30 days.\n" * 20)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=folder, **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/handbook.txt"


def cli_flows():
    rc, out, _ = tavus("doctor")
    check("tavus doctor", rc == 0 and "Network check passed" in out, out)

    rc, out, got = tavus("quickstart", "--system-prompt", "You are the smoke test's PAL.", "--name", "smoke quickstart")
    pal_id = (got or {}).get("pal", {}).get("pal_id")
    check("tavus quickstart creates a PAL on a stock face", rc == 0 and pal_id and got.get("face_id"), out)

    rc, out, got = tavus("face", "list", "--stock", "--json")
    check("tavus face list --stock", rc == 0 and "face_id" in out, out)

    rc, out, _ = tavus("pal", "list")
    check("tavus pal list", rc == 0, out)
    if pal_id:
        rc, out, got = tavus("pal", "get", pal_id)
        check("tavus pal get", rc == 0 and got and got.get("pal_id") == pal_id and got.get("pal_name") == "smoke quickstart", out)
        rc, out, _ = tavus("pal", "options", pal_id)
        check("tavus pal options", rc == 0, out)
        rc, out, got = tavus("pal", "skills", "attach", pal_id, "internet_search", "--config", '{"max_results": 3}')
        check("tavus pal skills attach", rc == 0 and (got or {}).get("config") == {"max_results": 3}, out)
        rc, out, got = tavus("pal", "skills", "patch", pal_id, "internet_search", "--config", '{"safe": true}')
        check("tavus pal skills patch", rc == 0 and (got or {}).get("config") == {"max_results": 3, "safe": True}, out)
        rc, out, _ = tavus("pal", "skills", "list", pal_id)
        check("tavus pal skills list", rc == 0 and "internet_search" in out, out)
        rc, out, _ = tavus("pal", "skills", "detach", pal_id, "internet_search")
        check("tavus pal skills detach", rc == 0, out)
        rc, out, _ = tavus("skill", "get", "memory")
        check("tavus skill get", rc == 0 and "memory" in out, out)

    rc, out, got = tavus("pal", "create", "--system-prompt", "Say hello.", "--name", "smoke pal", "--face-id", "r90bbd427f71")
    made = (got or {}).get("pal_id")
    check("tavus pal create", rc == 0 and made, out)
    if made:
        rc, out, _ = tavus("pal", "delete", made)
        check("tavus pal delete", rc == 0, out)
        status, body = api("GET", f"/pals/{made}")
        check("a deleted PAL is gone", status == 400, (status, body))

    for resource in ["tools", "voices", "skills", "guardrails", "objectives", "documents"]:
        rc, out, _ = tavus("resource", "list", resource)
        check(f"tavus resource list {resource}", rc == 0, out)

    url = serve_document()
    rc, out, got = tavus("document", "create", "--url", url, "--name", "smoke handbook", "--tag", "smoke")
    doc_id = (got or {}).get("document_id")
    check("tavus document create", rc == 0 and doc_id, out)
    if doc_id:
        status = None
        for _ in range(100):
            rc, out, got = tavus("document", "get", doc_id)
            status = (got or {}).get("status")
            if status in ("ready", "error"):
                break
            time.sleep(0.2)
        check("the document is fetched and ready", status == "ready", out)
        rc, out, _ = tavus("document", "list")
        check("tavus document list", rc == 0 and doc_id in out, out)
        status, body = api("DELETE", f"/documents/{doc_id}")
        check("a document deletes", status == 204, (status, body))

    rc, out, got = tavus("guardrail", "create", "--name", "no_medical_advice", "--prompt", "Never give medical advice.", "--tag", "smoke")
    guardrail = (got or {}).get("uuid") or (got or {}).get("guardrails_id")
    check("tavus guardrail create", rc == 0 and guardrail, out)
    rc, out, _ = tavus("guardrail", "list")
    check("tavus guardrail list", rc == 0, out)
    if guardrail:
        rc, out, got = tavus("guardrail", "get", guardrail)
        check("tavus guardrail get", rc == 0 and "no_medical_advice" in out, out)
        rc, out, _ = tavus("guardrail", "delete", guardrail)
        check("tavus guardrail delete", rc == 0, out)

    objectives = {
        "name": "smoke_intake",
        "data": [
            {"objective_name": "ask_name", "objective_prompt": "Ask for the caller's name.", "next_required_objective": "ask_reason"},
            {"objective_name": "ask_reason", "objective_prompt": "Ask why they called."},
        ],
        "allow_loops": False,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(objectives, f)
    rc, out, _ = tavus("objective", "validate", "--file", f.name)
    check("tavus objective validate", rc == 0, out)
    rc, out, got = tavus("objective", "create", "--file", f.name)
    objective = (got or {}).get("objectives_id")
    check("tavus objective create", rc == 0 and objective, out)
    rc, out, _ = tavus("objective", "list")
    check("tavus objective list", rc == 0, out)
    if objective:
        rc, out, _ = tavus("objective", "get", objective)
        check("tavus objective get", rc == 0 and "ask_name" in out, out)
        rc, out, _ = tavus("objective", "delete", objective)
        check("tavus objective delete", rc == 0, out)


async def sdk_flows():
    """What the CLI has no command for, through the SDK the CLI is built on: faces and documents."""
    async with TavusClient.from_env() as tavus:
        face = await tavus.faces.create({
            "face_name": "smoke face", "train_video_url": "https://example.com/training.mp4",
        })
        face_id = face.get("face_id")
        check("sdk faces.create", bool(face_id) and face.get("status") == "started", face)
        got = await tavus.faces.get(face_id)
        check("sdk faces.get", got.get("face_name") == "smoke face", got)
        await tavus.faces.delete(face_id)
        try:
            await tavus.faces.get(face_id)
            check("sdk faces.get after delete is an error", False)
        except TavusApiError as e:
            check("sdk faces.get after delete is 400", e.status_code == 400, (e.status_code, e.body))
        doc = await tavus.documents.create_from_url(serve_document(), document_name="sdk doc")
        doc_id = doc.get("document_id")
        check("sdk documents.create_from_url", bool(doc_id), doc)
        check("sdk documents.delete", await tavus.documents.delete(doc_id) is None)


def rest_quickstart():
    # The documented REST quickstart: a persona, a stock replica, a conversation with both.
    status, persona = api("POST", "/personas", {
        "persona_name": "Quickstart", "system_prompt": "You are a helpful guide.", "context": "A demo.",
    })
    check("quickstart: create a persona", status == 200 and persona.get("persona_id"), (status, persona))
    status, replicas = api("GET", "/replicas?replica_type=system")
    replica = (replicas.get("data") or [{}])[0].get("replica_id") if status == 200 else None
    check("quickstart: list stock replicas", bool(replica), (status, replicas))
    status, c = api("POST", "/conversations", {"persona_id": persona.get("persona_id"), "replica_id": replica})
    check("quickstart: create a conversation with both", status == 200 and c.get("conversation_url"), (status, c))
    if status == 200:
        api("POST", f"/conversations/{c['conversation_id']}/end")
    # The React quickstart: the hosted API's "Stock Demo Persona", and no replica.
    status, c = api("POST", "/conversations", {"persona_id": "p9a95912"})
    check("react quickstart: the stock demo persona", status == 200 and c.get("conversation_url"), (status, c))
    if status == 200:
        api("POST", f"/conversations/{c['conversation_id']}/end")
    # The MCP server's health check.
    status, body = api("GET", "/pals?limit=1&page=0")
    check("mcp health check", status == 200 and "data" in body, (status, body))


def livekit_flow():
    # livekit-plugins-tavus `create_pal`, then `create_conversation` with the PAL and a face.
    status, pal = api("POST", "/pals", {
        "pal_name": "lk_pal_smoke", "default_face_id": "r4067604db72", "pipeline_mode": "echo",
        "layers": {"transport": {"transport_type": "livekit"}},
    })
    check("livekit create_pal", status == 200 and pal.get("pal_id"), (status, pal))
    status, persona = api("POST", "/personas", {
        "persona_name": "lk_persona_smoke", "pipeline_mode": "echo",
        "layers": {"transport": {"transport_type": "livekit"}},
    })
    check("livekit create_persona", status == 200 and persona.get("persona_id"), (status, persona))
    status, c = api("POST", "/conversations", {
        "pal_id": pal.get("pal_id"), "face_id": "r4067604db72", "conversation_name": "lk_conversation_smoke",
        "properties": {"livekit_ws_url": "wss://example.livekit.cloud", "livekit_room_token": "token"},
    })
    check("livekit create_conversation with its PAL", status == 200 and c.get("conversation_id"), (status, c))
    if status == 200:
        api("POST", f"/conversations/{c['conversation_id']}/end")


def pipecat_flow():
    # pipecat's transport: create with its default persona, then `get_persona_name`.
    status, c = api("POST", "/conversations", {"replica_id": "r90bbd427f71", "persona_id": "pipecat0"})
    check("pipecat create_conversation with pipecat0", status == 200 and c.get("conversation_url"), (status, c))
    status, p = api("GET", "/personas/pipecat0")
    check("pipecat get_persona_name", status == 200 and isinstance(p.get("persona_name"), str), (status, p))
    if c and c.get("conversation_id"):
        api("POST", f"/conversations/{c['conversation_id']}/end")


cli_flows()
asyncio.run(sdk_flows())
rest_quickstart()
livekit_flow()
pipecat_flow()
print(f"clients smoke: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
