"""The trainer. The commands (`python -m trainer.<command>`) are the modules at this level: task, launch,
evaluate, report, lr_find, label_audit, export, predict and vertex, with config.py (the typed config) and cli.py
(their output and errors). What they are built from is in one sub-package per concern: input, model, objective,
optim, training, jobdir and evaluation (docs/architecture.md, "Where the code is: one picture").

    python -m trainer.task --help
"""

from tfds_person_attrs.cli import quiet_library_startup

# Before any module of the package imports TensorFlow or tqdm: their start-up settings are read only then.
quiet_library_startup()
