"""pytest plugin (``tests/conftest.py`` lists it): a real S3 server (SeaweedFS) for the tests.

The session-scoped ``s3_server`` fixture starts one ``weed server`` on 127.0.0.1 with free
ports and fake credentials (launcher.seaweedfs), and stops it by pid at the end.
"""
from __future__ import annotations

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
