"""Temporary OBS keys of a node's agency, from Huawei Cloud's instance metadata service.

An ECS/BMS node (a ModelArts dedicated-pool node among them) with an IAM agency attached
answers ``GET http://169.254.169.254/openstack/latest/securitykey`` with
``{"credential": {"access", "secret", "securitytoken", "expires_at"}}``: keys that expire
(15 minutes by default) and must be used as one set (Huawei Cloud ECS docs, "Obtaining
Metadata": securitykey; HuaweiCloudBrazilTeam/hwc-iam-agency README). A job that reaches OBS
itself then needs no long-lived keys anywhere. botocore's RefreshableCredentials fetches a new
set before the old one expires; this module only says where to get it.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from botocore.credentials import CredentialProvider, RefreshableCredentials

from cloud.storage.errors import StorageError

HUAWEI_METADATA_URL = "http://169.254.169.254/openstack/latest/securitykey"
METHOD = "huaweicloud-metadata"


def fetch_security_key(url: str, timeout_s: float = 5.0) -> dict:
    """One set of temporary keys, in botocore's metadata form (access_key, secret_key, token,
    expiry_time). The keys never appear in an error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (fixed URL)
            body = json.loads(response.read().decode("utf-8"))
        credential = body["credential"]
        return {"access_key": credential["access"], "secret_key": credential["secret"],
                "token": credential["securitytoken"], "expiry_time": credential["expires_at"]}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StorageError(f"no temporary keys from the metadata service at {url} ({reason}): "
                           f"attach an IAM agency with OBS access to the node, or set "
                           f"OBS_ACCESS_KEY_ID/OBS_SECRET_ACCESS_KEY") from None
    except (ValueError, KeyError, TypeError):
        raise StorageError(f"the metadata service at {url} answered without credential.access/"
                           f"secret/securitytoken/expires_at: is it Huawei Cloud's securitykey "
                           f"endpoint?") from None


class MetadataCredentialProvider(CredentialProvider):
    """A botocore credential provider whose keys refresh themselves from ``url``."""

    METHOD = METHOD
    CANONICAL_NAME = "HuaweiCloudMetadata"

    def __init__(self, url: str = HUAWEI_METADATA_URL):
        super().__init__()
        self.url = url

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(
            metadata=fetch_security_key(self.url), refresh_using=self._refresh, method=METHOD)

    def _refresh(self) -> dict:
        return fetch_security_key(self.url)
