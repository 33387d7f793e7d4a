"""Fixtures shared by the test files, and which hvc data this run uses (printed in pytest's header).

    python -m pytest -q -n 2 --dist loadfile tests tfds_person_attrs

The hvc data is the real ../shared/data/hvc_data.zip when it sits beside the checkout (as in CI), else a
generated stand-in of the same layout (tests/data_fixtures.py); tests that need the real data itself skip,
naming the missing file. Built datasets are made once per test process by the project's own Beam build.
"""

from __future__ import annotations

import pytest

from tests import data_fixtures, trainer_fixtures


def pytest_report_header(config):
    if data_fixtures.REAL_ZIP.exists():
        return f"hvc data: the real {data_fixtures.REAL_ZIP}"
    return (f"hvc data: a generated stand-in ({data_fixtures.REAL_ZIP} not found; the tests that need the real "
            "data are skipped)")


@pytest.fixture(scope="session")
def hvc_zip():
    """hvc_data.zip: the real one, or the generated stand-in."""
    return data_fixtures.hvc_zip()


@pytest.fixture(scope="session")
def hvc_data_dir():
    """A DATA_DIR holding person_attrs/hvc/1.0.0, built from 80 generated demo images."""
    return trainer_fixtures.fixture_data_dir("hvc")


@pytest.fixture(scope="session")
def multi_data_dir():
    """A DATA_DIR holding person_attrs/multi_demo/1.0.0: the demo images under a schema with a multi-label head."""
    return trainer_fixtures.fixture_data_dir(trainer_fixtures.MULTI_SCHEMA.name)
