"""A small client of ModelArts' v2 training-job API, through Huawei Cloud's official Python SDK.

Calls (all in huaweicloudsdkmodelarts.v1's ModelArtsClient, SDK 3.1.219), paths under
/v2/{project_id}:

  create   POST  /training-jobs                                   CreateTrainingJobRequest
  show     GET   /training-jobs/{id}                              ShowTrainingJobDetailsRequest
  logs     GET   /training-jobs/{id}/tasks/{task}/logs/preview    ShowTrainingJobLogsPreviewRequest
  full log GET   /training-jobs/{id}/tasks/{task}/logs/url        (ShowObsUrlOfTrainingJobLogs; not
                 in SDK 3.1.219: sent through the SDK's signed _call_api) -> {"obs_url"}, a
                 temporary OBS link to the whole log, read with plain HTTP GETs (Range)
  stop     POST  /training-jobs/{id}/actions                      StopTrainingJobRequest
                 {"action_type": "terminate"}
  flavors  GET   /training-job-flavors                            ShowTrainingJobFlavorsRequest

Requests are signed with the SDK's AK/SK signer (SDK-HMAC-SHA256: X-Sdk-Date, Authorization
"SDK-HMAC-SHA256 Access=..., SignedHeaders=..., Signature=..."). The job definition is sent as
plain JSON (a dict), not as the SDK's model objects, which would drop fields their 3.1.219
models lack (the output channel's prefetch_to_local).

Settings, first match wins:
  credentials  HUAWEICLOUD_SDK_AK / HUAWEICLOUD_SDK_SK (+ HUAWEICLOUD_SDK_SECURITY_TOKEN), the SDK's
               own names; then the OBS names this project uses (cloud.storage.s3client):
               OBS_ACCESS_KEY_ID / OBS_SECRET_ACCESS_KEY (+ OBS_SECURITY_TOKEN), then
               ACCESS_KEY_ID / SECRET_ACCESS_KEY (+ SECURITY_TOKEN).
  project id   --project_id, HUAWEICLOUD_PROJECT_ID, HUAWEICLOUD_SDK_PROJECT_ID.
  endpoint     --endpoint, MODELARTS_ENDPOINT, else https://modelarts.<region>.myhuaweicloud.com
               with the region from --region, HUAWEICLOUD_REGION, HUAWEICLOUD_SDK_REGION or
               OBS_REGION.

Errors are ModelArtsApiError: one line naming the call, the API's error code and message and the
fix; never a key (messages are scrubbed of the AK/SK/token as a last guard).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

CREDENTIAL_ENV = (
    ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_SECURITY_TOKEN"),
    ("OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_SECURITY_TOKEN"),
    ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SECURITY_TOKEN"),
)
PROJECT_ENV = ("HUAWEICLOUD_PROJECT_ID", "HUAWEICLOUD_SDK_PROJECT_ID")
REGION_ENV = ("HUAWEICLOUD_REGION", "HUAWEICLOUD_SDK_REGION", "OBS_REGION")
ENDPOINT_ENV = "MODELARTS_ENDPOINT"

# status.phase (SDK model Status): the job's first-level state.
TERMINAL_PHASES = ("Completed", "Failed", "Terminated", "Abnormal")
FAILED_PHASES = ("Failed", "Terminated", "Abnormal")
_PROJECT_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_REGION = re.compile(r"^[a-z0-9-]{2,40}$")


class ModelArtsApiError(RuntimeError):
    """A ModelArts call failed or cannot be made; one line with the fix. `transient`: worth
    retrying (connection trouble, 429, 5xx)."""

    def __init__(self, message: str, *, transient: bool = False, status: Optional[int] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ApiSettings:
    endpoint: str
    project_id: str
    ak: str = field(repr=False)
    sk: str = field(repr=False)
    security_token: Optional[str] = field(default=None, repr=False)
    credential_source: str = ""
    timeout_s: float = 30.0

    def secrets(self) -> list[str]:
        return [s for s in (self.ak, self.sk, self.security_token) if s]


def _first(env: Mapping[str, str], names) -> Optional[str]:
    return next((env[n] for n in names if env.get(n)), None)


def resolve_settings(*, endpoint: Optional[str] = None, region: Optional[str] = None,
                     project_id: Optional[str] = None, env: Mapping[str, str] = os.environ,
                     timeout_s: float = 30.0) -> ApiSettings:
    """API settings from the arguments and the environment (see the module doc)."""
    ak = sk = token = None
    source = ""
    for ak_name, sk_name, token_name in CREDENTIAL_ENV:
        if env.get(ak_name) and env.get(sk_name):
            ak, sk, token = env[ak_name], env[sk_name], env.get(token_name) or None
            source = f"environment {ak_name}"
            break
        if env.get(ak_name) or env.get(sk_name):
            have, missing = (ak_name, sk_name) if env.get(ak_name) else (sk_name, ak_name)
            raise ModelArtsApiError(f"{have} is set but {missing} is not: set both (the access "
                                    f"key pair of the account that runs the job)")
    if not ak:
        raise ModelArtsApiError("no Huawei Cloud credentials: export HUAWEICLOUD_SDK_AK and "
                                "HUAWEICLOUD_SDK_SK (an access key of an IAM user allowed to use "
                                "ModelArts)")
    project_id = project_id or _first(env, PROJECT_ENV)
    if not project_id:
        raise ModelArtsApiError("no project id: pass --project_id or export HUAWEICLOUD_PROJECT_ID "
                                "(console: My Credentials > API Credentials, the region's project)")
    if not _PROJECT_ID.match(project_id):
        raise ModelArtsApiError(f"project id {project_id!r} is malformed: copy it from My "
                                f"Credentials > API Credentials")
    endpoint = endpoint or env.get(ENDPOINT_ENV)
    if not endpoint:
        region = region or _first(env, REGION_ENV)
        if not region:
            raise ModelArtsApiError("no ModelArts endpoint: pass --region (e.g. cn-north-4) or "
                                    "--endpoint, or export HUAWEICLOUD_REGION")
        if not _REGION.match(region):
            raise ModelArtsApiError(f"region {region!r} is malformed (e.g. cn-north-4)")
        endpoint = f"https://modelarts.{region}.myhuaweicloud.com"
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    if not endpoint.startswith(("https://", "http://")):
        raise ModelArtsApiError(f"endpoint {endpoint!r}: expected https://HOST")
    return ApiSettings(endpoint.rstrip("/"), project_id, ak, sk, token, source, timeout_s)


@dataclass
class JobStatus:
    """What `show` returns that the launcher uses."""

    id: str
    name: str
    phase: str
    secondary_phase: Optional[str] = None
    tasks: list = field(default_factory=list)
    duration_ms: Optional[int] = None

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def failed(self) -> bool:
        return self.phase in FAILED_PHASES

    def describe(self) -> str:
        detail = f" ({self.secondary_phase})" if self.secondary_phase and \
            self.secondary_phase != self.phase else ""
        took = f", {self.duration_ms / 1000:.0f} s" if self.duration_ms else ""
        return f"{self.phase}{detail}{took}"


@dataclass
class LogPreview:
    """The tail of a task's log: `content` is the last `current_size` bytes of `full_size`."""

    content: str
    current_size: int
    full_size: int


_HINTS = {
    401: "check HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK (a valid access key pair) and the machine's "
         "clock",
    403: "the key's IAM user lacks ModelArts permissions in this project (or the project id "
         "belongs to another account/region)",
    404: "check the job id, the project id and the region",
    429: "too many requests: wait and retry",
}


class ModelArtsApi:
    """One SDK client for one project and endpoint."""

    def __init__(self, settings: ApiSettings):
        from huaweicloudsdkcore.auth.credentials import BasicCredentials
        from huaweicloudsdkcore.http.http_config import HttpConfig
        from huaweicloudsdkmodelarts.v1 import ModelArtsClient

        self.settings = settings
        credentials = BasicCredentials(settings.ak, settings.sk, settings.project_id)
        if settings.security_token:
            credentials = credentials.with_security_token(settings.security_token)
        config = HttpConfig.get_default_config()
        config.timeout = (min(10.0, settings.timeout_s), settings.timeout_s)
        config.retry_times = 0  # the launcher decides what to retry (watch loops)
        self._client = (ModelArtsClient.new_builder().with_credentials(credentials)
                        .with_endpoints([settings.endpoint]).with_http_config(config).build())

    # --- calls ---------------------------------------------------------------------------------

    def create_job(self, body: dict) -> JobStatus:
        from huaweicloudsdkmodelarts.v1 import CreateTrainingJobRequest
        response = self._call("create the training job",
                              lambda: self._client.create_training_job(
                                  CreateTrainingJobRequest(body=body)))
        return self._status(response, "create the training job")

    def show_job(self, job_id: str) -> JobStatus:
        from huaweicloudsdkmodelarts.v1 import ShowTrainingJobDetailsRequest
        what = f"read job {job_id}"
        response = self._call(what, lambda: self._client.show_training_job_details(
            ShowTrainingJobDetailsRequest(training_job_id=job_id)))
        return self._status(response, what)

    def log_preview(self, job_id: str, task: str) -> LogPreview:
        from huaweicloudsdkmodelarts.v1 import ShowTrainingJobLogsPreviewRequest
        response = self._call(f"read the log of job {job_id} task {task}",
                              lambda: self._client.show_training_job_logs_preview(
                                  ShowTrainingJobLogsPreviewRequest(training_job_id=job_id,
                                                                    task_id=task)))
        content = response.content or ""
        current = int(response.current_size if response.current_size is not None
                      else len(content.encode()))
        full = int(response.full_size if response.full_size is not None else current)
        return LogPreview(content, current, full)

    def log_url(self, job_id: str, task: str) -> str:
        """A temporary (about 5 minutes) OBS link to the task's whole log: the preview holds at
        most 5 MB. API reference "Querying the Logs of a Specified Task in a Training Job (OBS
        Link)": GET .../tasks/{task_id}/logs/url, Content-Type text/plain for a preview link
        (application/octet-stream, the download link, would make the SDK send a stream body),
        answer {"obs_url": ...}."""
        import json
        what = f"get the full-log link of job {job_id} task {task}"
        http_info = {"method": "GET",
                     "resource_path": "/v2/{project_id}/training-jobs/{training_job_id}/tasks/"
                                      "{task_id}/logs/url",
                     "request_type": "ShowObsUrlOfTrainingJobLogsRequest",
                     # the SDK has no model for the answer: any model parses it, raw_content is read
                     "response_type": "ShowTrainingJobLogsPreviewResponse",
                     "cname": None, "collection_formats": {},
                     "path_params": {"training_job_id": job_id, "task_id": task},
                     "query_params": [], "header_params": {"Content-Type": "text/plain"},
                     "post_params": {}, "body": None, "response_headers": []}
        response = self._call(what, lambda: self._client._call_api(**http_info))
        try:
            url = json.loads(response.raw_content or b"{}").get("obs_url")
        except ValueError:
            url = None
        if not url:
            raise ModelArtsApiError(f"ModelArts API: {what}: the answer has no obs_url")
        return url

    def read_log(self, url: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a full log behind a temporary OBS link (no signing: the link
        carries its own)."""
        import urllib.error
        import urllib.request
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-{end - 1}"})
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as answer:
                data = answer.read()
                if answer.status == 200:  # the whole object: Range not honoured
                    data = data[start:end]
        except (urllib.error.URLError, OSError) as exc:
            raise ModelArtsApiError(f"cannot read the full log (its temporary OBS link): "
                                    f"{self._scrub(str(exc))[:200]}", transient=True) from None
        return data

    def stop_job(self, job_id: str) -> JobStatus:
        from huaweicloudsdkmodelarts.v1 import JobActionType, StopTrainingJobRequest
        what = f"stop job {job_id}"
        response = self._call(what, lambda: self._client.stop_training_job(
            StopTrainingJobRequest(training_job_id=job_id,
                                   body=JobActionType(action_type="terminate"))))
        return self._status(response, what)

    def flavors(self, flavor_type: Optional[str] = None) -> list[dict]:
        from huaweicloudsdkmodelarts.v1 import ShowTrainingJobFlavorsRequest
        response = self._call("list the training flavours",
                              lambda: self._client.show_training_job_flavors(
                                  ShowTrainingJobFlavorsRequest(flavor_type=flavor_type)))
        return [{"flavor_id": f.flavor_id, "flavor_name": f.flavor_name, "max_num": f.max_num,
                 "flavor_type": f.flavor_type} for f in (response.flavors or [])]

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing is best effort
            pass

    # --- plumbing ------------------------------------------------------------------------------

    def _status(self, response: Any, what: str) -> JobStatus:
        metadata, status = response.metadata, response.status
        if metadata is None or not metadata.id or status is None or not status.phase:
            raise ModelArtsApiError(f"ModelArts API: {what}: the answer has no job id or phase "
                                    f"(is {self.settings.endpoint} ModelArts' endpoint?)")
        return JobStatus(id=metadata.id, name=metadata.name or "", phase=status.phase,
                         secondary_phase=status.secondary_phase, tasks=list(status.tasks or []),
                         duration_ms=status.duration)

    def _scrub(self, text: str) -> str:
        for secret in self.settings.secrets():
            text = text.replace(secret, "***")
        return " ".join(str(text).split())

    def _call(self, what: str, fn):
        from huaweicloudsdkcore.exceptions import exceptions as sdk
        try:
            return fn()
        except sdk.ServiceResponseException as exc:
            status = int(exc.status_code)
            code = exc.error_code or str(status)
            message = self._scrub(exc.error_msg or "")[:300]
            hint = _HINTS.get(status)
            if hint is None:
                hint = ("ModelArts had a problem: retry later" if status >= 500 else
                        "the request was refused as it is: fix what the message names")
            request = f", request id {exc.request_id}" if exc.request_id else ""
            raise ModelArtsApiError(
                f"ModelArts API: cannot {what}: HTTP {status} {code}: {message}{request} ({hint})",
                transient=status >= 500 or status == 429, status=status, code=code) from None
        except (sdk.ConnectionException, sdk.RequestTimeoutException) as exc:
            raise ModelArtsApiError(
                f"ModelArts API: cannot {what}: no answer from {self.settings.endpoint} "
                f"({type(exc).__name__}; check --endpoint/--region and the network)",
                transient=True) from None
        except sdk.SdkException as exc:
            raise ModelArtsApiError(f"ModelArts API: cannot {what}: "
                                    f"{self._scrub(str(exc))[:300]}") from None
