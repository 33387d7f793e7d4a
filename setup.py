"""person-attrs: a distributed training pipeline for multi-attribute person classification.

    pip install -e ".[dev]" -c constraints.txt
"""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements(name):
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setuptools.setup(
    name="person-attrs",
    version="0.1.0",
    description="Beam + TFDS data pipeline and multi-output Wide ResNet trainer for person attributes.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["pipeline*", "tfds_person_attrs*", "trainer*"]),
    package_data={"tfds_person_attrs": ["person_attrs/*.md", "person_attrs/*.tsv", "person_attrs/dummy_data/**/*"],
                  "trainer.evaluation": ["templates/*.html"], "trainer": ["configs/*.yaml"]},
    include_package_data=True,
    install_requires=_requirements("requirements.txt"),
    extras_require={
        "gcp": ["apache-beam[gcp]==2.77.0", "google-cloud-aiplatform==1.165.1"],
        # `python -m trainer.label_audit`: confident learning over out-of-fold predictions
        "audit": ["cleanlab==2.9.0"],
        "dev": _requirements("requirements-dev.txt"),
    },
)
