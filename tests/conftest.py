"""Fixtures shared by the test files, and which hvc data this run uses (printed in pytest's header).

    python -m pytest -q -n 2 --dist loadfile tests tfds_person_attrs

The hvc data is the real ../shared/data/hvc_data.zip when it sits beside the checkout (as in CI), else a
generated stand-in of the same layout (tests/data_fixtures.py); tests that need the real data itself skip,
naming the missing file. Built datasets are made once per test process by the project's own Beam build.
"""

from __future__ import annotations

import pytest

# First, as every command does: the quiet start-up settings (TF_CPP_MIN_LOG_LEVEL=3 among them) in this process
# and in the commands the tests start from it, before any test module imports Keras, whose import of JAX would
# set TensorFlow's C++ log level to 1 and let its warnings into the commands' stderr.
import trainer  # noqa: F401, I001
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


# The files that start several processes or train several models, longest first: handed out first under
# `-n 2 --dist loadfile` (the README's test command), so that short files fill the end of the run instead of
# one worker finishing a long file alone. The order: `--durations=80` of a full run.
LONGEST_FIRST = ("test_trainer_resume.py", "test_trainer_train.py", "test_trainer_loop.py", "test_cloud_local.py",
                 "test_trainer_regularisers.py", "test_label_audit.py", "test_trainer_multiworker.py",
                 "test_end_to_end.py", "test_cloud_kfp.py", "test_trainer_distribute.py", "test_backend_agnostic.py",
                 "test_cli.py", "test_cloud_jobdir.py", "test_build_transform.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every file keeps its own order
