"""SIGTERM during training (Vertex AI's preemption or cancellation notice): the run commits a backup at the next
step boundary and exits 143 with one line; the same command again resumes from it and ends the run with every
epoch once in history.csv.

    python -m pytest -q tests/test_trainer_sigterm.py

One process, then two workers where only the non-chief task gets the signal (a preempted replica): both stop at
the same step and the chief's backup holds it. Tiny model on the generated fixture dataset, real processes.
"""

import json
import re
import signal
import time

from tests.test_trainer_multiworker import finish, killed_at_exit, rows, start, trainer_args, wait_for
from tests.test_trainer_startup import listeners
from trainer.jobdir import backup
from trainer.launch import free_ports
from trainer.training import cluster

STOPPED = re.compile(r"error: stopped by SIGTERM after step (\d+): backup written to (\S+); start the same "
                     r"command again to resume from it")


def epoch_committed(job, epoch: int):
    def done():
        state = backup.read_state(str(job / "backup"))
        return state is not None and state.epoch >= epoch
    return done


def stopped_line(code, err, job) -> int:
    """The step the run says it stopped after, checked against the backup it left."""
    assert code == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    match = STOPPED.fullmatch(err.strip().splitlines()[-1])
    assert match and match.group(2) == str(job / "backup"), err[-1000:]
    state = backup.read_state(str(job / "backup"))
    assert int(match.group(1)) == state.step > 0
    return state.step


def test_sigterm_writes_a_backup_and_the_same_command_resumes(tmp_path):
    job = tmp_path / "job"
    args = trainer_args(job, "--train.epochs=3", "--train.steps_per_epoch=20")
    with killed_at_exit([start(args)]) as (proc,):
        wait_for(epoch_committed(job, 1), 300, "epoch 1's backup", [proc])
        proc.send_signal(signal.SIGTERM)
        code, _out, err = finish(proc, timeout=120)
    step = stopped_line(code, err, job)
    assert not (job / ".lock").exists()

    with killed_at_exit([start(args)]) as (proc,):
        code, _out, err = finish(proc, timeout=900)
    assert code == 0, err[-3000:]
    assert f"resuming after epoch {step // 20}, step {step}" in err
    assert [r["epoch"] for r in rows(job)] == ["0", "1", "2"]
    assert json.load(open(job / "metrics.json"))["epochs_completed"] == 3


def test_sigterm_to_one_worker_stops_both_at_the_same_step(tmp_path):
    job = tmp_path / "job"
    args = trainer_args(job, "--train.epochs=2", "--train.steps_per_epoch=20")
    ports = free_ports(2)
    layout = {"worker": [f"localhost:{p}" for p in ports]}  # worker 0 is the chief
    with killed_at_exit([start(args, cluster.tf_config(layout, "worker", i)) for i in range(2)]) as procs:
        wait_for(epoch_committed(job, 1), 400, "epoch 1's backup", procs)
        # TensorFlow's gRPC server listens on every interface, whatever host TF_CONFIG names (README says so)
        assert listeners(ports[0]) in (None, ["0.0.0.0"], ["::"])
        time.sleep(0.3)
        procs[1].send_signal(signal.SIGTERM)
        (code0, _, err0), (code1, _, err1) = finish(procs[0], timeout=120), finish(procs[1], timeout=120)
    step = stopped_line(code0, err0, job)
    assert stopped_line(code1, err1, job) == step  # the same step, and the chief's backup it resumes from

    with killed_at_exit([start(args, cluster.tf_config(layout, "worker", i)) for i in range(2)]) as procs:
        results = [finish(p, timeout=900) for p in procs]
    for code, _out, err in results:
        assert code == 0, err[-3000:]
    assert [r["epoch"] for r in rows(job)] == ["0", "1"]
