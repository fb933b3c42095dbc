"""pytest plugin (``tests/conftest.py`` lists it): a real S3 server (SeaweedFS) for the tests.

The session-scoped ``s3_server`` fixture starts one ``weed server`` on 127.0.0.1 with free
ports and fake credentials (launcher.seaweedfs), and stops it by pid at the end.
"""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from launcher.seaweedfs import S3Server, running_s3_server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One SeaweedFS for the whole test session."""
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session server."""
    return s3_server.make_bucket()


@pytest.fixture(scope="module")
def shared_bucket(s3_server) -> str:
    """One bucket for the module: SeaweedFS spends ~1 s on a new bucket's first write, a new
    prefix costs nothing."""
    return s3_server.make_bucket()


def fresh_prefix(bucket: str) -> str:
    """``s3://bucket/<unique>``: each test's own corner of the shared bucket."""
    return f"s3://{bucket}/{uuid.uuid4().hex[:12]}"
