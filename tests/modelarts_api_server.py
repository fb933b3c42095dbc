"""A stand-in for ModelArts' v2 training-job API, for tests: a real HTTP server on 127.0.0.1.

It is NOT ModelArts. It implements the few calls launcher/modelarts/jobs.py makes, with the paths,
bodies and answers of the API reference, and checks every request the way the API gateway does:
the AK/SK signature is recomputed here, independently of the SDK's signer, from the canonical
request described in Huawei's API signing guide; a bad one gets the gateway's error JSON
(error_code/error_msg). Error codes the reference does not give for a case (unknown flavour,
malformed body, unknown job) are this stand-in's own, in the same JSON shape.

  GET  /v2/{project_id}/training-job-flavors                       -> {"total_count", "flavors"}
  POST /v2/{project_id}/training-jobs                               -> 201, the job
  GET  /v2/{project_id}/training-jobs/{id}                          -> the job (one step further)
  GET  /v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/preview -> {"content", "current_size",
                                                                       "full_size"}
  GET  /v2/{project_id}/training-jobs/{id}/tasks/{task}/logs/url    -> {"obs_url"}: a temporary
                                                                       link to the whole log
  POST /v2/{project_id}/training-jobs/{id}/actions {"action_type": "terminate"} -> the job
  GET  /obs-log/{id}?AWSAccessKeyId=..&Signature=..  the whole log behind that link (no API
       signature: the link carries its own; honours Range, as OBS does)

The preview holds at most PREVIEW_LIMIT bytes (5 MB), the last ones: `content` is the last
`current_size` of `full_size` bytes.

A job follows `script`: each status read moves it one step, (phase, text appended to its log).

Sources:
* Signing: https://support.huaweicloud.com/devg-apisign/api-sign-algorithm-001.md
  (API签名认证机制: CanonicalRequest = method, URI ending in "/", sorted query, "name:value"
  lines of the signed headers in lower case, SignedHeaders, hex SHA-256 of the body; StringToSign =
  "SDK-HMAC-SHA256" + X-Sdk-Date + hex SHA-256 of CanonicalRequest; signature = hex
  HMAC-SHA256(SK, StringToSign); header "SDK-HMAC-SHA256 Access=AK, SignedHeaders=..,
  Signature=.."), and the gateway's 401 {"error_code": "APIGW.0301", "error_msg": "Incorrect IAM
  authentication information: verify aksk signature fail"} quoted from Huawei's APIG error list.
* Logs: https://support.huaweicloud.com/intl/en-us/api-modelarts/ShowTrainingJobLogsPreview.html
  (content, current_size, full_size) and https://support.huaweicloud.com/intl/en-us/api-modelarts/
  ShowObsUrlOfTrainingJobLogs.html (GET .../logs/url, Content-Type text/plain or
  application/octet-stream, answer {"obs_url": "...?AWSAccessKeyId=..."}, valid 5 minutes); the
  5 MB preview limit from PLATFORM_NOTES.md ("Log preview returns at most 5 MB").
* Calls and fields: https://support.huaweicloud.com/intl/en-us/api-modelarts/CreateTrainingJob.html
  (POST /v2/{project_id}/training-jobs; kind, metadata.name 1-64 of [A-Za-z0-9_-], algorithm
  code_dir+boot_file / engine / parameters / inputs / outputs, spec.resource), and the request and
  response models of huaweicloudsdkmodelarts 3.1.219 (PyPI): Status.phase values Creating,
  Pending, Running, Failed, Completed, Terminating, Terminated, Abnormal; logs preview's content,
  current_size, full_size; JobActionType.action_type "terminate"; flavours' flavor_id.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlsplit

NAME = re.compile(r"^[A-Za-z0-9_-]+$")
JOB_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
AUTH = re.compile(r"^SDK-HMAC-SHA256 Access=([^,]+), SignedHeaders=([^,]+), "
                  r"Signature=([0-9a-f]{64})$")
MAX_SKEW = dt.timedelta(minutes=15)
PREVIEW_LIMIT = 5 * 1024 * 1024

RAW = object()  # marks a raw-bytes answer in handle()'s result

COMPLETED = [("Creating", ""), ("Pending", ""), ("Running", "step 1 loss 6.9\nstep 2 lo"),
             ("Running", "ss 6.8\nstep 3 loss 6.7\n"), ("Running", "epoch 1 top1 0.1\n"),
             ("Completed", "training done\n")]
FAILED = [("Creating", ""), ("Running", "step 1 loss 6.9\n"),
          ("Failed", "Traceback (most recent call last):\nRuntimeError: boom\n")]


@dataclass
class Job:
    id: str
    body: dict
    script: list
    step: int = -1
    log: str = ""
    phase: str = "Creating"

    def advance(self) -> None:
        if self.phase in ("Terminated",) or self.step + 1 >= len(self.script):
            return
        self.step += 1
        self.phase, text = self.script[self.step]
        self.log += text

    def answer(self) -> dict:
        return {"kind": "job",
                "metadata": {"id": self.id, "name": self.body["metadata"]["name"]},
                "status": {"phase": self.phase, "secondary_phase": self.phase,
                           "duration": 1000 * max(self.step, 0), "tasks": ["worker-0"]},
                "algorithm": self.body.get("algorithm"), "spec": self.body.get("spec")}


@dataclass
class ModelArtsStandIn:
    ak: str
    sk: str
    project_id: str
    flavors: list = field(default_factory=lambda: ["modelarts.vm.cpu.8u", "modelarts.kat1.8xlarge"])
    script: list = field(default_factory=lambda: list(COMPLETED))
    requests: list = field(default_factory=list)     # (method, path, headers, body, raw body)
    rejected: list = field(default_factory=list)     # (path, error_code) of refused ones
    jobs: dict = field(default_factory=dict)
    fail_next: list = field(default_factory=list)    # (status, code, msg) to answer next, in order
    log_links: int = 0                               # full-log links handed out
    log_bytes_read: int = 0                          # bytes read through them
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # --- signature, computed from the guide ----------------------------------------------------

    def expected_signature(self, method: str, path: str, query: str, headers: dict,
                           signed: list[str], body: bytes) -> str:
        segments = unquote(path).split("/")
        uri = "/".join(quote(s, safe="-_.~") for s in segments)
        if not uri.endswith("/"):
            uri += "/"
        pairs = sorted(parse_qsl(query, keep_blank_values=True))
        canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                                   for k, v in pairs)
        lowered = {k.lower(): v.strip() for k, v in headers.items()}
        canonical_headers = "".join(f"{name}:{lowered.get(name, '')}\n" for name in signed)
        canonical = "\n".join([method, uri, canonical_query, canonical_headers, ";".join(signed),
                               hashlib.sha256(body).hexdigest()])
        to_sign = "\n".join(["SDK-HMAC-SHA256", headers.get("X-Sdk-Date", ""),
                             hashlib.sha256(canonical.encode()).hexdigest()])
        return hmac.new(self.sk.encode(), to_sign.encode(), hashlib.sha256).hexdigest()

    def check_signature(self, method, path, query, headers, body) -> str | None:
        """None when the request is signed with our AK/SK, else why not."""
        match = AUTH.match(headers.get("Authorization", ""))
        if not match:
            return "no SDK-HMAC-SHA256 Authorization header"
        access, signed_text, signature = match.groups()
        signed = signed_text.split(";")
        if signed != sorted(signed) or "host" not in signed or "x-sdk-date" not in signed:
            return "SignedHeaders must be sorted and include host and x-sdk-date"
        try:
            when = dt.datetime.strptime(headers.get("X-Sdk-Date", ""), "%Y%m%dT%H%M%SZ")
        except ValueError:
            return "bad X-Sdk-Date"
        if abs(dt.datetime.utcnow() - when) > MAX_SKEW:
            return "signature expired"
        if access != self.ak:
            return "unknown access key"
        expected = self.expected_signature(method, path, query, headers, signed, body)
        if not hmac.compare_digest(expected, signature):
            return "verify aksk signature fail"
        return None

    # --- the calls -----------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict, body: bytes):
        parts = urlsplit(raw_path)
        if method == "GET" and parts.path.startswith("/obs-log/"):
            return self.full_log(parts.path.rsplit("/", 1)[1], headers)
        parsed = json.loads(body) if body else None
        with self.lock:
            self.requests.append((method, parts.path, headers, parsed, body))
        why = self.check_signature(method, parts.path, parts.query, headers, body)
        if why:
            return 401, "APIGW.0301", f"Incorrect IAM authentication information: {why}"
        if self.fail_next:
            return self.fail_next.pop(0)
        prefix = f"/v2/{self.project_id}/"
        if not parts.path.startswith(prefix) or headers.get("X-Project-Id") != self.project_id:
            return 403, "ModelArts.0203", "project id does not match the credentials"
        route = parts.path[len(prefix):].strip("/").split("/")
        if method == "GET" and route == ["training-job-flavors"]:
            return 200, {"total_count": len(self.flavors),
                         "flavors": [{"flavor_id": f, "flavor_name": f, "max_num": 1,
                                      "flavor_type": "CPU"} for f in self.flavors]}
        if route[:1] != ["training-jobs"]:
            return 404, "ModelArts.0404", f"no such API: {method} {parts.path}"
        if method == "POST" and len(route) == 1:
            problem = self.check_job(parsed)
            if problem:
                return 400, "ModelArts.2701", problem
            job = Job(uuid.uuid4().hex, parsed, list(self.script))
            with self.lock:
                self.jobs[job.id] = job
            return 201, job.answer()
        job = self.jobs.get(route[1]) if len(route) > 1 else None
        if job is None:
            return 404, "ModelArts.2762", f"training job {'/'.join(route[1:2])} not found"
        if method == "GET" and len(route) == 2:
            job.advance()
            return 200, job.answer()
        if method == "GET" and route[2:3] == ["tasks"] and route[4:] == ["logs", "preview"]:
            if route[3] != "worker-0":
                return 400, "ModelArts.2763", f"task {route[3]} not found"
            data = job.log.encode()
            tail = data[-PREVIEW_LIMIT:]
            while tail and (tail[0] & 0xC0) == 0x80:  # start on a whole character
                tail = tail[1:]
            return 200, {"content": tail.decode(), "current_size": len(tail),
                         "full_size": len(data)}
        if method == "GET" and route[2:3] == ["tasks"] and route[4:] == ["logs", "url"]:
            if route[3] != "worker-0":
                return 400, "ModelArts.2763", f"task {route[3]} not found"
            with self.lock:
                self.log_links += 1
            return 200, {"obs_url": f"{self.endpoint}/obs-log/{job.id}?AWSAccessKeyId=AK"
                                    f"&Expires=300&Signature=stand-in"}
        if method == "POST" and route[2:] == ["actions"]:
            if parsed != {"action_type": "terminate"}:
                return 400, "ModelArts.2701", "action_type must be terminate"
            if job.phase not in ("Completed", "Failed", "Abnormal", "Terminated"):
                job.phase = "Terminated"
            return 200, job.answer()
        return 404, "ModelArts.0404", f"no such API: {method} {parts.path}"

    def full_log(self, job_id: str, headers: dict):
        """The object behind the temporary link: bytes, with Range as OBS answers it."""
        job = self.jobs.get(job_id)
        if job is None:
            return 404, "NoSuchKey", "no such log"
        data = job.log.encode()
        match = re.match(r"bytes=(\d+)-(\d*)$", headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else len(data)
            with self.lock:
                self.log_bytes_read += len(data[start:end])
            return 206, RAW, data[start:end]
        with self.lock:
            self.log_bytes_read += len(data)
        return 200, RAW, data

    def check_job(self, body) -> str | None:
        """What the API refuses in a job definition (the fields this project sends)."""
        if not isinstance(body, dict) or body.get("kind") != "job":
            return "kind must be job"
        if not JOB_NAME.match(str(body.get("metadata", {}).get("name", ""))):
            return "metadata.name must be 1-64 letters, digits, '-' or '_'"
        algorithm = body.get("algorithm") or {}
        engine = algorithm.get("engine") or {}
        if engine.get("image_url"):
            if not algorithm.get("command"):
                return "a custom image needs algorithm.command"
        elif not (algorithm.get("code_dir") and algorithm.get("boot_file")
                  and engine.get("engine_name") and engine.get("engine_version")):
            return "algorithm needs code_dir, boot_file and engine_name/engine_version"
        elif not algorithm["boot_file"].startswith(algorithm["code_dir"]):
            return "boot_file must be inside code_dir"
        for parameter in algorithm.get("parameters") or []:
            if not NAME.match(str(parameter.get("name", ""))):
                return f"invalid parameter name {parameter.get('name')!r}"
        for channel in (algorithm.get("inputs") or []) + (algorithm.get("outputs") or []):
            url = channel.get("remote", {}).get("obs", {}).get("obs_url", "")
            if not re.match(r"^/[a-z0-9][a-z0-9.-]{1,62}/", url):
                return f"{channel.get('name')}: obs_url must look like /bucket/path/"
        resource = (body.get("spec") or {}).get("resource") or {}
        if resource.get("flavor_id") not in self.flavors:
            return f"flavor {resource.get('flavor_id')} not found"
        if not isinstance(resource.get("node_count"), int) or resource["node_count"] < 1:
            return "node_count must be a positive integer"
        return None

    # --- serving -------------------------------------------------------------------------------

    def start(self) -> "ModelArtsStandIn":
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, *payload = stand_in.handle(self.command, self.path, dict(self.headers),
                                                   body)
                if len(payload) == 2 and payload[0] is RAW:  # bytes, not JSON
                    self.send_response(status)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(payload[1])))
                    self.end_headers()
                    self.wfile.write(payload[1])
                    return
                if len(payload) == 2:   # an error: (status, code, message)
                    code, message = payload
                    answer = {"error_code": code, "error_msg": message}
                    with stand_in.lock:
                        stand_in.rejected.append((self.path, code))
                else:
                    answer = payload[0]
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Request-Id", uuid.uuid4().hex)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="modelarts-stand-in")
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.server = None
