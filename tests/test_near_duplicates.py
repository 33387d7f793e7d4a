"""The scalable near-duplicate grouping (tfds_person_attrs/near_duplicates.py) under Beam's TestPipeline,
against the exact all-pairs method, on generated signatures with planted clusters.

    python -m pytest -q tests/test_near_duplicates.py
"""

from __future__ import annotations

import collections

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tfds_person_attrs import grouping
from tfds_person_attrs.images import SIGNATURE_SIZE, mirrored
from tfds_person_attrs.near_duplicates import ConnectedComponents, NearDuplicateGroups, star_edges


def _unit(v):
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def planted_signatures(n_background=400, n_clusters=30, seed=0):
    """Random signatures, plus clusters of a source with a mirror, two close copies and a chain of two."""
    rng = np.random.default_rng(seed)
    ids, sigs = [], []
    for i in range(n_background):
        ids.append(f"bg/{i:04d}")
        sigs.append(_unit(rng.standard_normal(SIGNATURE_SIZE)))
    for c in range(n_clusters):
        src = _unit(rng.standard_normal(SIGNATURE_SIZE))
        near = _unit(src + 0.25 * _unit(rng.standard_normal(SIGNATURE_SIZE)))
        members = [src, mirrored(src), near, _unit(src + 0.25 * _unit(rng.standard_normal(SIGNATURE_SIZE))),
                   _unit(near + 0.35 * _unit(rng.standard_normal(SIGNATURE_SIZE)))]
        for m, sig in enumerate(members):
            ids.append(f"c{c:02d}/{m}")
            sigs.append(sig)
    return ids, sigs


def multi_image_groups(groups: dict[str, str]) -> list[tuple[str, str]]:
    size = collections.Counter(groups.values())
    return sorted((i, g) for i, g in groups.items() if size[g] > 1)


def test_beam_grouping_finds_the_exact_groups_of_planted_clusters():
    ids, sigs = planted_signatures()
    exact = multi_image_groups(grouping.near_duplicate_groups(ids, sigs, 0.85))
    assert len({g for _, g in exact}) == 30 and all(i.startswith("c") for i, _ in exact)
    with TestPipeline() as p:
        groups = p | beam.Create(list(zip(ids, sigs))) | NearDuplicateGroups(0.85)
        assert_that(groups, equal_to(exact))


def test_components_left_apart_by_the_rounds_are_joined_exactly():
    """A chain of 12 pairs needs more rounds than one: the rest is settled by the union-find step."""
    chain = [(f"v{i:02d}", f"v{i + 1:02d}") for i in range(12)] + [("w1", "w2")]
    expected = [(f"v{i:02d}", "v00") for i in range(13)] + [("w1", "w1"), ("w2", "w1")]
    with TestPipeline() as p:
        labels = p | beam.Create(chain) | ConnectedComponents(rounds=1)  # pylint: disable=no-value-for-parameter
        assert_that(labels, equal_to(expected))


def test_a_cells_pairs_leave_it_as_star_edges_of_their_components():
    pairs = [("c", "d"), ("b", "c"), ("d", "b"), ("x", "y"), ("e", "b")]
    assert star_edges(pairs) == [("b", "c"), ("b", "d"), ("b", "e"), ("x", "y")]
    assert star_edges([]) == []
