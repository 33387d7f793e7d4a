"""The dataset build (Beam + TFDS), the demo chain and the Kubeflow pipeline (see README.md)."""

from tfds_person_attrs.cli import quiet_library_startup

# Before any module of the package imports TensorFlow or tqdm: their start-up settings are read only then.
quiet_library_startup()
