"""trainer.launch: real processes, prefixed output, stop-all on failure, and the same tasks as trainer.vertex.

    python -m pytest -q tests/test_trainer_launch.py

The tasks here are `tests.launch_probe` (no TensorFlow), so these tests take seconds; the launcher running
real trainer tasks is tested in test_trainer_multiworker.py.
"""

import json
import subprocess
import sys
import time

import pytest

from trainer import launch, vertex

TRAINER_ARGS = ["--data_dir", "gs://b/data", "--job_dir", "gs://b/jobs/r1", "--config", "hvc", "--train.epochs=3"]


def launcher(*args, timeout=60):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "trainer.launch", *args], capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


def test_one_failing_task_stops_the_others_and_sets_the_exit_status():
    proc, took = launcher("--workers", "3", "--grace", "2", "--module", "tests.launch_probe", "--",
                          "worker:1", "7", "100")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 7
    assert took < 30  # the two healthy tasks would sleep 100 s: they were stopped
    for name in ("chief:0", "worker:0", "worker:1"):
        assert f"[{name}] hello from {name}, 2 worker(s)" in lines
    assert any(line.startswith("[launch] worker:1 exited with status 7; stopping") for line in lines)
    assert not any("done" in line for line in lines)


def test_all_tasks_succeed():
    proc, _ = launcher("--workers", "2", "--module", "tests.launch_probe", "--", "none:0", "0", "0.5")
    assert proc.returncode == 0, proc.stdout
    assert sorted(line for line in proc.stdout.splitlines() if "done" in line) == [
        "[chief:0] chief:0 done", "[worker:0] worker:0 done"]


def test_bad_worker_count_is_one_line():
    proc, _ = launcher("--workers", "0", "--", "--config", "smoke")
    assert proc.returncode == 2 and "--workers: must be at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_vertex_replicas_start_the_tasks_the_launcher_starts(capsys, replicas):
    assert vertex.main(["--image", "img", "--data_dir", "gs://b/data", "--job_dir", "gs://b/jobs/r1",
                        "--replica_count", str(replicas), "--dry_run", "--", *TRAINER_ARGS[4:]]) == 0
    on_vertex = vertex.cluster_tasks(json.loads(capsys.readouterr().out)["jobSpec"])
    local = launch.plan(replicas, TRAINER_ARGS)
    assert [(t["name"], t["argv"]) for t in on_vertex] == [(t["name"], t["argv"]) for t in local]
    clusters = [json.loads(t["tf_config"])["cluster"] for t in local]
    assert all(c == clusters[0] for c in clusters)  # every task sees the same cluster
    assert {k: len(v) for k, v in clusters[0].items()} == {"chief": 1, **({"worker": replicas - 1} if replicas > 1
                                                                          else {})}
    assert len({a for addresses in clusters[0].values() for a in addresses}) == replicas  # distinct free ports
