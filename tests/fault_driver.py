"""Run a launcher script unchanged, with faults injected at the S3 wire (botocore events).

    FAULT_PLAN='{"pause_upload": "/tmp/flags"}' python tests/fault_driver.py launcher/local.py train ...

Used by the reliability and security tests, which need to act at an exact moment of a real
run (stop the S3 server while a checkpoint upload is on the wire) or to show the runner an
object listing that SeaweedFS itself refuses to hold. Everything else is the real launcher,
trainer and S3 server. Plans (JSON in FAULT_PLAN; both may be combined):

``pause_upload``: a folder. The first request that sends checkpoint bytes (PutObject,
    UploadPart) writes ``upload-started`` there and then waits until ``server-down`` appears
    (at most 300 s); then the request goes on, to whatever the test left of the server.
``inject_keys``: ``{"prefix": "data/", "keys": [...]}``. Each ListObjectsV2 answer whose
    request prefix starts with ``prefix`` gets these keys appended (size 4), as a store that
    keeps keys verbatim (AWS S3, OBS) would list them.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _wait_for(path: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def install(plan: dict) -> None:
    from cloud.storage.s3client import _botocore_session
    session = _botocore_session(None)
    lock = threading.Lock()
    state = {"uploads": 0}

    if "pause_upload" in plan:
        flags = Path(plan["pause_upload"])

        def on_upload(request, **_):
            url = request.url.split("?")[0]
            if "/checkpoints/" not in url or not url.endswith(".ckpt"):
                return None
            with lock:
                state["uploads"] += 1
                first = state["uploads"] == 1
            if first:
                (flags / "upload-started").write_text(url)
                _wait_for(flags / "server-down")
            return None
        for op in ("PutObject", "UploadPart"):
            session.register(f"before-send.s3.{op}", on_upload)

    if "inject_keys" in plan:
        prefix, keys = plan["inject_keys"]["prefix"], plan["inject_keys"]["keys"]

        def remember(params, context, **_):
            context["listed_prefix"] = params.get("Prefix", "")

        def inject(parsed, context, **_):
            if not context.get("listed_prefix", "").startswith(prefix):
                return
            template = (parsed.get("Contents") or [{}])[0]
            extra = [dict(template, Key=key, Size=4, ETag='"0"') for key in keys]
            parsed["Contents"] = list(parsed.get("Contents") or []) + extra
            parsed["KeyCount"] = len(parsed["Contents"])
        session.register("before-parameter-build.s3.ListObjectsV2", remember)
        session.register("after-call.s3.ListObjectsV2", inject)


def main() -> None:
    install(json.loads(os.environ.get("FAULT_PLAN", "{}")))
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python <script>` has it
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
