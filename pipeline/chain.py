"""The end-to-end chain, defined once: preprocess -> train -> evaluate, each the project's own `python -m` command.

    python -c "from pipeline import chain; print(chain.train('out/data', 'out/run', 'demo').command)"

`create_pipeline(steps, ...)` says what runs and what feeds what, as the TFX template's `create_pipeline`
does; a runner says how: pipeline/demo.py runs each step as a subprocess on this machine, pipeline/kubeflow.py
makes each one a Kubeflow Pipelines task. Both build their command lines with the functions below, whose
arguments may be KFP placeholders (an artifact's `.uri`) as well as plain paths.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class Step:
    """One step's command: `python -m MODULE ARGS`."""

    module: str
    args: list[Any]

    @property
    def argv(self) -> list[Any]:
        """The arguments after `python`."""
        return ["-m", self.module, *self.args]

    @property
    def command(self) -> str:
        """As a user types it (for plain-string arguments)."""
        return shlex.join(["python", *map(str, self.argv)])

    def run(self) -> None:
        """Runs the command with this interpreter (a step's only job inside a Kubeflow task); a failure exits
        with the command's own exit code, after one line naming the command."""
        code = subprocess.run([sys.executable, *map(str, self.argv)]).returncode
        if code:
            print(f"error: `{self.command}` failed with exit code {code}; its output is above", file=sys.stderr,
                  flush=True)
            raise SystemExit(code)


def preprocess(manual_dir, data_dir, dataset_config=None, beam_args=()) -> Step:
    """Build the TFDS dataset from the CSV + images with Beam (`beam_args`: Beam pipeline options)."""
    config = [] if dataset_config is None else ["--config", dataset_config]
    return Step("pipeline.preprocess", ["--manual_dir", manual_dir, "--data_dir", data_dir, *config, *beam_args])


def train(data_dir, job_dir, config, *overrides) -> Step:
    """Train a preset or YAML config (`config`), with dotted `--section.field=value` overrides."""
    return Step("trainer.task", ["--data_dir", data_dir, "--job_dir", job_dir, "--config", config, *overrides])


def evaluate(model, data_dir, split, out, embed=False) -> Step:
    """Score a trained job dir (or exported model) on a split; metrics.json and the HTML report go to `out`
    (`embed`: with its images inlined too, so index.html works on its own)."""
    return Step("trainer.evaluate", ["--model", model, "--data_dir", data_dir, "--split", split, "--out", out,
                                     *(["--embed"] if embed else [])])


class Steps(Protocol):
    """What a runner provides: each method runs its step and returns the output the next steps read."""

    def preprocess(self, manual_dir: Any, dataset_config: Any) -> Any: ...

    def train(self, data: Any, config: Any, overrides: Any) -> Any: ...

    def evaluate(self, model: Any, data: Any, split: Any) -> Any: ...


def create_pipeline(steps: Steps, manual_dir, dataset_config, train_config, train_overrides,
                    eval_split) -> dict[str, Any]:
    """The chain: the dataset feeds training and evaluation, the trained model feeds evaluation.

    Returns each step's output (`data`, `model`, `report`) for what a runner adds after it.
    """
    data = steps.preprocess(manual_dir=manual_dir, dataset_config=dataset_config)
    model = steps.train(data=data, config=train_config, overrides=train_overrides)
    report = steps.evaluate(model=model, data=data, split=eval_split)
    return {"data": data, "model": model, "report": report}
