"""Build boto3 S3 clients for s3:// and obs:// URLs, and explain their errors.

Endpoint, first match wins:
  1. ``settings.endpoint``
  2. obs://: ``OBS_ENDPOINT``, then ``S3_ENDPOINT``;
     s3://:  ``S3_ENDPOINT``, then botocore's ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
  3. obs:// only: ``https://obs.<region>.myhuaweicloud.com`` from the region
  4. s3:// only: AWS itself.
  An endpoint without a scheme gets https, or http when ``S3_USE_HTTPS=0``
  (the MoXing convention).

Region: ``settings.region``, then ``OBS_REGION`` (obs://), then the region in an
``obs.<region>.myhuaweicloud.com`` endpoint, then botocore's own
(``AWS_REGION``, ``AWS_DEFAULT_REGION``, ~/.aws/config), else us-east-1.

Credentials, first complete pair wins:
  1. ``settings.access_key_id`` / ``secret_access_key`` / ``session_token``
  2. environment pairs, in this order for obs:// (AWS names last) and with the
     AWS names first for s3://:
       ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``
       ``OBS_ACCESS_KEY_ID`` / ``OBS_SECRET_ACCESS_KEY`` / ``OBS_SECURITY_TOKEN``
         (the names of Huawei's OBS SDK environment provider)
       ``ACCESS_KEY_ID`` / ``SECRET_ACCESS_KEY`` / ``SECURITY_TOKEN``
         (generic names some S3 tools read; no platform sets them for you)
  3. the rest of botocore's chain: ``settings.profile`` / ``AWS_PROFILE``,
     ~/.aws/credentials, container and instance metadata.
  Half a pair (an id without its secret) is an error naming the missing variable.
  ``settings.metadata_url`` (e.g. Huawei Cloud's
  ``http://169.254.169.254/openstack/latest/securitykey``) comes second, before the
  environment: the temporary keys of the node's IAM agency, refreshed before they expire
  (:mod:`cloud.storage.metadata_credentials`).

OBS gets virtual-hosted addressing and SigV4. All clients send and check
checksums only when an operation requires them (OBS and most S3-compatible
stores refuse boto3's default trailing checksums), retry with botocore's own
``standard``/``adaptive`` mode, and size their connection pool to the worker
count. Secrets never appear in a message: errors name where credentials came
from, never their value.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

import botocore.session
from botocore.config import Config
from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError,
                                 EndpointConnectionError, IncompleteReadError,
                                 NoCredentialsError, ReadTimeoutError,
                                 ResponseStreamingError)
from urllib3.exceptions import ProtocolError
from botocore.utils import parse_timestamp

from cloud.storage.errors import StorageError
from cloud.storage.settings import StorageSettings, to_settings
from cloud.storage.urls import StorageURL

log = logging.getLogger("cloud.storage.s3client")

CREDENTIAL_ENV = {
    "aws": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    "obs": ("OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_SECURITY_TOKEN"),
    "modelarts": ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SECURITY_TOKEN"),
}
# Failures while reading a response body, after botocore returned it: botocore
# does not retry these, the transfer manager does.
STREAMING_ERRORS = (IncompleteReadError, ReadTimeoutError, ResponseStreamingError,
                    ProtocolError, ConnectionError)
_OBS_HOST_RE = re.compile(r"^(?:[a-z0-9.\-]+\.)?obs\.([a-z0-9\-]+)\.myhuaweicloud\.(?:com|eu)$")


@dataclass
class S3Connection:
    """A client plus what error messages need to say where it points."""

    client: Any = field(repr=False)
    scheme: str
    endpoint: str
    region: str
    credential_source: str
    stall_timeout_s: float = 120.0
    max_attempts: int = 5

    def describe(self, bucket: str, key: str = "") -> str:
        where = f"{self.scheme}://{bucket}/{key}" if key else f"{self.scheme}://{bucket}"
        return f"{where} at {self.endpoint}"


@dataclass(frozen=True)
class _Credentials:
    source: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    metadata_url: str | None = None


def _fast_timestamp(value: Any) -> datetime:
    """Parse S3 timestamps with the standard library instead of dateutil, which
    took ~15% of the client CPU of a small GetObject when profiled."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
        try:
            return email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            pass
    return parse_timestamp(value)


_session_lock = threading.Lock()
_sessions: dict[str | None, botocore.session.Session] = {}


def _botocore_session(profile: str | None,
                      metadata_url: str | None = None) -> botocore.session.Session:
    """One shared botocore session per profile (or metadata service): creating one reloads
    the service models (~0.2 s), and create_client is not thread-safe."""
    with _session_lock:
        session = _sessions.get(metadata_url or profile)
        if session is None:
            session = botocore.session.get_session()
            if profile:
                session.set_config_variable("profile", profile)
            if metadata_url:  # first in the chain: refreshable temporary keys
                from cloud.storage.metadata_credentials import MetadataCredentialProvider
                session.get_component("credential_provider").insert_before(
                    "env", MetadataCredentialProvider(metadata_url))
            session.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=_fast_timestamp)
            _sessions[metadata_url or profile] = session
        return session


def resolve_endpoint(scheme: str, settings: StorageSettings,
                     env: Mapping[str, str] = os.environ) -> str | None:
    """The endpoint URL for ``scheme`` (see module doc), None for AWS."""
    names = ("OBS_ENDPOINT", "S3_ENDPOINT") if scheme == "obs" else \
        ("S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    endpoint = settings.endpoint or next((env[n] for n in names if env.get(n)), None)
    if not endpoint and scheme == "obs":
        region = settings.region or env.get("OBS_REGION")
        if not region:
            raise StorageError("obs:// needs an endpoint: set OBS_ENDPOINT=https://obs.<region>"
                               ".myhuaweicloud.com (or OBS_REGION, or storage endpoint in the config)")
        endpoint = f"https://obs.{region}.myhuaweicloud.com"
    if endpoint and "://" not in endpoint:
        endpoint = ("http://" if env.get("S3_USE_HTTPS") == "0" else "https://") + endpoint
    return endpoint.rstrip("/") if endpoint else None


def resolve_region(scheme: str, endpoint: str | None, settings: StorageSettings,
                   session: botocore.session.Session,
                   env: Mapping[str, str] = os.environ) -> str:
    if settings.region:
        return settings.region
    if scheme == "obs" and env.get("OBS_REGION"):
        return env["OBS_REGION"]
    if endpoint:
        host = re.sub(r"^[a-z]+://", "", endpoint).split("/")[0].split(":")[0]
        match = _OBS_HOST_RE.match(host)
        if match:
            return match.group(1)
    return session.get_config_variable("region") or "us-east-1"


def resolve_credentials(scheme: str, settings: StorageSettings,
                        env: Mapping[str, str] = os.environ) -> _Credentials:
    """Explicit or environment credentials; source "chain" leaves it to botocore."""
    if settings.access_key_id or settings.secret_access_key:
        if not (settings.access_key_id and settings.secret_access_key):
            raise StorageError("storage settings give only half of the credentials: set both "
                               "access_key_id and secret_access_key")
        return _Credentials("storage settings", settings.access_key_id,
                            settings.secret_access_key, settings.session_token)
    if settings.metadata_url:
        return _Credentials(f"the metadata service at {settings.metadata_url} (temporary keys)",
                            metadata_url=settings.metadata_url)
    order = ("obs", "modelarts", "aws") if scheme == "obs" else ("aws", "obs", "modelarts")
    for name in order:
        id_var, secret_var, token_var = CREDENTIAL_ENV[name]
        key_id, secret = env.get(id_var), env.get(secret_var)
        if key_id and secret:
            return _Credentials(f"environment {id_var}", key_id, secret, env.get(token_var) or None)
        if key_id or secret:
            missing = secret_var if key_id else id_var
            present = id_var if key_id else secret_var
            raise StorageError(f"{present} is set but {missing} is not: set both, or unset {present}")
    return _Credentials("botocore credential chain (AWS profile, config files, instance metadata)")


def connect(url: StorageURL, settings: StorageSettings | Mapping | None = None) -> S3Connection:
    """A configured client for the store behind ``url`` (bucket not contacted)."""
    settings = to_settings(settings)
    creds = resolve_credentials(url.scheme, settings)
    session = _botocore_session(settings.profile, creds.metadata_url)
    endpoint = resolve_endpoint(url.scheme, settings)
    region = resolve_region(url.scheme, endpoint, settings, session)
    if creds.metadata_url:
        session.get_credentials()  # fetched now: an unreachable service is one clear error
    style = settings.addressing_style or (
        "virtual" if url.scheme == "obs" else "path" if endpoint else "auto")
    config = Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": style},
        # total_max_attempts counts the first try; botocore's "max_attempts" key
        # would count only retries.
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        # A batch runs up to ``workers`` small GETs plus ``workers`` manager
        # threads on this client; a smaller pool would drop and reopen connections.
        max_pool_connections=2 * settings.workers + 4,
        connect_timeout=min(settings.connect_timeout_s, settings.attempt_timeout_s),
        read_timeout=settings.attempt_timeout_s,  # bounded by storage.stall_timeout_s
        tcp_keepalive=True,
        # Our calls are fixed in code; validating each against the model costs
        # a few percent of a small GetObject's client CPU, per file staged.
        parameter_validation=False,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    with _session_lock:
        client = session.create_client(
            "s3", endpoint_url=endpoint, config=config, verify=settings.verify_ssl,
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            aws_session_token=creds.session_token)
    shown = endpoint or client.meta.endpoint_url
    client.meta.events.register("needs-retry.s3", StallReporter(shown, settings))
    log.debug("S3 client for %s: endpoint %s, region %s, addressing %s, credentials from %s",
              url, shown, region, style, creds.source)
    return S3Connection(client, url.scheme, shown, region, creds.source, settings.stall_timeout_s,
                        settings.max_attempts)


class StallReporter:
    """botocore `needs-retry` handler: an attempt that got no answer (timeout, connection
    lost) is a warning line while the request waits, so a stalled store shows up at once and
    every storage.stall_timeout_s / max_attempts seconds, not after minutes of silence. It
    never decides the retry (returns None)."""

    def __init__(self, endpoint: str, settings: StorageSettings):
        self.endpoint, self.settings = endpoint, settings

    def __call__(self, attempts=None, caught_exception=None, operation=None, **_):
        if caught_exception is None or not isinstance(
                caught_exception, (ReadTimeoutError, ConnectTimeoutError, EndpointConnectionError,
                                   ConnectionError, BotoCoreError)):
            return None
        s = self.settings
        name = getattr(operation, "name", "request")
        log.warning("%s: no answer from %s for %.0f s (%s, attempt %s of %s): the store is stalled "
                    "or unreachable; giving up after about %.0f s (storage.stall_timeout_s)",
                    name, self.endpoint, s.attempt_timeout_s, type(caught_exception).__name__,
                    attempts, s.max_attempts, s.stall_timeout_s)
        return None


_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken", "TokenRefreshRequired", "InvalidSecurity",
                    "AuthorizationHeaderMalformed"}


def explain(exc: BaseException, conn: S3Connection, bucket: str, key: str = "") -> StorageError:
    """Turn a botocore failure into a one-line StorageError with the fix."""
    where = conn.describe(bucket, key)
    if isinstance(exc, StorageError):
        return exc
    last = getattr(exc, "last_exception", None)  # s3transfer's RetriesExceededError
    if last is not None:
        return StorageError(f"{explain(last, conn, bucket, key)} (gave up after retries)")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        if code in _BAD_CREDENTIALS:
            msg = (f"{where} refused the credentials ({code}); they came from "
                   f"{conn.credential_source}: check the access key id and secret key "
                   f"and that they belong to this endpoint")
        elif code in ("NoSuchBucket",) or (code == "404" and not key):
            msg = (f"bucket {bucket!r} does not exist at {conn.endpoint} ({code}): "
                   f"create it or fix the bucket name in the URL")
        elif code in ("NoSuchKey", "404", "NotFound"):
            msg = f"object {where} does not exist ({code})"
        elif code == "KeyTooLongError":
            msg = (f"{where}: the object key is {len(key.encode())} bytes, longer than the store "
                   f"allows (S3: 1024) (KeyTooLongError); shorten the URL's prefix")
        elif code in ("AccessDenied", "403", "AllAccessDisabled"):
            msg = (f"access denied to {where} ({code}); credentials came from "
                   f"{conn.credential_source}: check the keys, or grant them access to this bucket")
        else:
            detail = " ".join(str(err.get("Message") or exc).split())
            msg = f"{where}: {code}: {detail}"
        return StorageError(msg)
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"no credentials for {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                            f"or OBS_ACCESS_KEY_ID/OBS_SECRET_ACCESS_KEY (or ACCESS_KEY_ID/SECRET_ACCESS_KEY)")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return StorageError(f"cannot reach {conn.endpoint} for {where} after "
                            f"retries: check the endpoint (settings, S3_ENDPOINT, OBS_ENDPOINT) "
                            f"and the network")
    if isinstance(exc, ReadTimeoutError):
        return StorageError(f"{where}: the store stopped answering (no data for "
                            f"{conn.stall_timeout_s:.0f} s over {conn.max_attempts} attempts; "
                            f"storage.stall_timeout_s): check that the store is up and reachable, "
                            f"then run again")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{where}: {' '.join(str(exc).split())}")
    return StorageError(f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}")


def explain_if_known(exc: BaseException, conn: S3Connection, bucket: str,
                     key: str = "") -> BaseException:
    """``explain(exc)`` for botocore and transfer failures; other errors unchanged
    (a local OSError such as a full disk already says what is wrong)."""
    from s3transfer.exceptions import RetriesExceededError
    known = (ClientError, BotoCoreError, RetriesExceededError, ConnectionError)
    return explain(exc, conn, bucket, key) if isinstance(exc, known) else exc


@contextmanager
def explained(conn: S3Connection, bucket: str, key: str = "") -> Iterator[None]:
    """Re-raise botocore/transfer failures inside as explained StorageErrors."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        translated = explain_if_known(exc, conn, bucket, key)
        if translated is exc:
            raise
        raise translated from exc
