# One image for every cloud step: the Vertex AI training job, the Kubeflow pipeline steps and the Dataflow
# launcher all run the same `python -m ...` commands as a laptop does.
#   docker build -t person-attrs .
#   docker run --gpus all person-attrs python -m trainer.task --data_dir gs://B/data --job_dir gs://B/jobs/r1 --config hvc
# The base is pinned by tag; for bit-for-bit rebuilds pin its digest too (tensorflow/tensorflow:2.21.0-gpu@sha256:...).
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /app

# Dependencies in their own layer, keyed only on the files that name them, so a code edit rebuilds in seconds.
# setup.py alone (no packages yet) installs every pinned dependency of the `gcp` extra.
COPY setup.py requirements.txt requirements-dev.txt constraints.txt MANIFEST.in ./
RUN pip install -c constraints.txt ".[gcp]"

# The code. --no-deps: the layer above already holds the exact pins; this only adds the project's packages.
COPY . .
RUN pip install --no-deps . && python -c "import pipeline.kubeflow, trainer.vertex"

# No ENTRYPOINT: Vertex AI, KFP and `docker run` all pass the full command.
CMD ["python", "-m", "trainer.task", "--help"]
