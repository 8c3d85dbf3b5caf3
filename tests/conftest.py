"""Shared fixtures. Unit tests need nothing; the others use the running native stack (`make test` starts it)."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

from cryptopipe.settings import get_settings
from ops.dag_run import environment
from ops.stack import NativeStack

from .helpers import make_demo


def pytest_collection_modifyitems(items):
    # The lifecycle tests stop and restart the stack, so they run after everything that uses it.
    items.sort(key=lambda item: item.get_closest_marker("lifecycle") is not None)


@pytest.fixture(scope="session")
def settings():
    return get_settings()


@pytest.fixture(scope="session")
def stack(settings):
    native = NativeStack(settings)
    down = [svc.name for svc in native.services if not svc.is_up()]
    if down:
        pytest.fail(f"the native stack is not up ({', '.join(down)} down): run `make up`, or `make test`")
    return native


@pytest.fixture
def unique():
    """A fresh name suffix, so tests never see each other's topics, tables or groups."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def airflow_env(settings, tmp_path_factory):
    """The environment for dag.test() runs: a migrated Airflow home of its own, the stack's connections."""
    return environment(settings, tmp_path_factory.mktemp("airflow"))


@pytest.fixture(scope="session")
def pipeline_data(stack):
    """The bundled tapes through the real pipeline (make demo is idempotent and quick the second time)."""
    result = make_demo()
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.fixture
def owner_cur(settings):
    """A cursor as the database owner, autocommitting."""
    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True
    yield owner.cursor()
    owner.close()
