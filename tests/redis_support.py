"""The real Redis server tests share: where it is, and a key prefix of each test's own.

Needs Redis at ``TURNOUT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Without a server
the tests that ask for these fixtures skip, except under ``CI=true``, where they fail. Import
them into a test module as ``from .redis_support import prefix_fixture, redis_url_fixture``; tests
then ask for ``redis_url`` and ``prefix`` (the functions are named apart from the fixtures, so
the names a test takes do not shadow the imports).
"""

from __future__ import annotations

import os
import uuid

import pytest
import redis

REDIS_URL = os.environ.get("TURNOUT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session", name="redis_url")
def redis_url_fixture() -> str:
    """The test server's URL, once it answered a PING; skips (fails under CI=true) otherwise."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = (f"no Redis at {REDIS_URL} ({exc}); start one with `redis-server --daemonize yes` "
                   f"or point TURNOUT_TEST_REDIS_URL at one")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(name="prefix")
def prefix_fixture(redis_url: str):
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"turnout-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
