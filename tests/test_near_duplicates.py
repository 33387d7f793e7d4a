"""The build's near-duplicate grouping (tfds_person_attrs/near_duplicates.py) under Beam's TestPipeline,
exact (all pairs) and blocked, against the exact method in one process, on generated signatures with planted
clusters.

    python -m pytest -q tests/test_near_duplicates.py
"""

from __future__ import annotations

import collections

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tfds_person_attrs import grouping, near_duplicates
from tfds_person_attrs.grouping import star_edges
from tfds_person_attrs.images import SIGNATURE_SIZE, mirrored
from tfds_person_attrs.near_duplicates import (
    EXACT_MAX_IMAGES,
    FLIPS,
    TABLE_TAGS,
    TABLES,
    Components,
    NearDuplicateGroups,
    batch_key,
    bits_for,
    shard_packs,
)


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


def close_pairs(n_pairs: int, cosine: float, seed=0):
    """Pairs of random signatures at exactly this cosine: near-duplicates just above a threshold below it."""
    rng = np.random.default_rng(seed)
    src = _unit(rng.standard_normal((n_pairs, SIGNATURE_SIZE)))
    away = rng.standard_normal((n_pairs, SIGNATURE_SIZE))
    away = _unit(away - (away * src).sum(axis=1, keepdims=True) * src)
    sigs = np.concatenate([src, cosine * src + np.sqrt(1 - cosine**2) * away])
    return [f"a{i:03d}" for i in range(n_pairs)] + [f"b{i:03d}" for i in range(n_pairs)], list(sigs)


def test_beam_grouping_finds_the_exact_groups_of_planted_clusters():
    """All pairs at this size, over the signatures of several batches gathered in one cell."""
    ids, sigs = planted_signatures()
    exact = multi_image_groups(grouping.near_duplicate_groups(ids, sigs, 0.85))
    assert len({g for _, g in exact}) == 30 and all(i.startswith("c") for i, _ in exact)
    with TestPipeline() as p:
        groups = p | beam.Create(list(zip(ids, sigs))) | NearDuplicateGroups(0.85, batch_size=64)
        assert_that(groups, equal_to(exact))


def test_up_to_the_bound_every_pair_just_above_the_threshold_is_found_that_the_blocked_search_misses():
    """80 pairs at cosine 0.87 with a threshold of 0.86: the build (all pairs at this size) joins all 80, as the
    exact method does; the blocked search used past EXACT_MAX_IMAGES misses some (about 1 in 8)."""
    ids, sigs = close_pairs(80, 0.87)
    exact = multi_image_groups(grouping.near_duplicate_groups(ids, sigs, 0.86))
    assert exact == sorted([(f"a{i:03d}", f"a{i:03d}") for i in range(80)] + [(f"b{i:03d}", f"a{i:03d}")
                                                                               for i in range(80)])

    def misses_some(found):
        assert 0 < len(found) < len(exact) and set(found) < set(exact)

    with TestPipeline() as p:
        signatures = p | beam.Create(list(zip(ids, sigs)))
        assert_that(signatures | "Build" >> NearDuplicateGroups(0.86), equal_to(exact), label="CheckBuild")
        blocked = signatures | "Blocked" >> NearDuplicateGroups(0.86, exact_max_images=0)
        assert_that(blocked, misses_some, label="CheckBlocked")


def test_the_bound_between_all_pairs_and_the_blocked_search():
    assert bits_for(7000) == bits_for(EXACT_MAX_IMAGES) == 0
    assert bits_for(EXACT_MAX_IMAGES + 1) == 12 and bits_for(1_000_000) == 14
    assert bits_for(7000, exact_max_images=0) == 12


@pytest.mark.parametrize("small_cell, run", [(0, 1), (2, 5), (32, 128)], ids=["cells_alone", "short_runs", "default"])
def test_how_the_work_is_cut_into_batches_and_shards_does_not_change_the_groups(monkeypatch, small_cell, run):
    """The blocked search: batches of 64 images (so a cluster's members are named by different batches), shards
    from one cell each to one per table, matrix products of a few candidate pairs, and cells verified alone or
    in runs of neighbours give the exact groups."""
    monkeypatch.setattr(near_duplicates, "_BLOCK", 4)
    monkeypatch.setattr(near_duplicates, "_SMALL_CELL", small_cell)
    monkeypatch.setattr(near_duplicates, "_RUN", run)
    ids, sigs = planted_signatures(n_background=300, n_clusters=20, seed=1)
    exact = multi_image_groups(grouping.near_duplicate_groups(ids, sigs, 0.85))
    assert len({g for _, g in exact}) == 20
    with TestPipeline() as p:
        signatures = p | beam.Create(list(zip(ids, sigs)))
        for shard_bits in (0, 20):
            groups = signatures | f"Group{shard_bits}" >> NearDuplicateGroups(0.85, batch_size=64,
                                                                            shard_bits=shard_bits, exact_max_images=0)
            assert_that(groups, equal_to(exact), label=f"Check{shard_bits}")


def test_shard_packs_carry_each_signature_once_per_shard_and_every_entry():
    ids, sigs = planted_signatures(n_background=200, n_clusters=0)
    batch = ids, np.asarray(sigs, np.float16)
    out = list(shard_packs(batch, center=np.zeros(SIGNATURE_SIZE, np.float32), bits=12, shard_bits=10))
    assert out[0].tag == "ids" and out[0].value == (batch_key(ids), ids)
    packs = [o.value for o in out[1:]]
    assert {o.tag for o in out[1:]} == set(TABLE_TAGS)
    assert sum(len(pack.cells) for _, pack in packs) == 200 * TABLES * (1 + FLIPS)
    assert sum(int(pack.stored.sum()) for _, pack in packs) == 200 * TABLES
    for shard, pack in packs:
        assert np.all(pack.cells >> 10 == shard) and len(set(pack.positions.tolist())) == len(pack.positions)
        np.testing.assert_array_equal(pack.signatures, np.asarray(sigs, np.float16)[pack.positions])
    # 4 shards per table here: an image's own cell and a probe often share one, and its signature travels once.
    assert sum(len(pack.positions) for _, pack in packs) < 200 * TABLES * (1 + FLIPS)
    # All pairs (bits 0): each image once, stored, in the one cell of table 0.
    out = list(shard_packs(batch, center=np.zeros(SIGNATURE_SIZE, np.float32), bits=0, shard_bits=10))
    assert [o.tag for o in out] == ["ids", TABLE_TAGS[0]]
    shard, pack = out[1].value
    assert shard == 0 and pack.stored.all() and not pack.cells.any()
    np.testing.assert_array_equal(pack.positions, np.arange(200))


def test_components_join_chains_split_over_partial_results_by_their_smallest_id():
    """A chain of 12 pairs whose links arrive in different bundles, in any order, is one component; so is a
    chain long enough that a partial result is replaced by its star edges along the way."""
    chain = [(f"v{i:02d}", f"v{i + 1:02d}") for i in range(12)] + [("w2", "w1")]
    expected = {**{f"v{i:02d}": "v00" for i in range(13)}, "w1": "w1", "w2": "w1"}
    fn = Components()
    rng = np.random.default_rng(3)
    for _ in range(5):
        order = rng.permutation(len(chain))
        parts = [fn.create_accumulator() for _ in range(3)]
        for k, i in enumerate(order):
            fn.add_input(parts[k % 3], [chain[i]])
        assert fn.extract_output(fn.merge_accumulators(parts)) == expected
    with TestPipeline() as p:
        labels = p | beam.Create([chain[:5], chain[5:]]) | beam.CombineGlobally(Components())
        assert_that(labels, equal_to([expected]))
    links = [(f"u{i:05d}", f"u{i + 1:05d}") for i in range(3000)]
    links = links * 2 + [(b, a) for a, b in links]  # each link seen three times, as a cell's pairs are
    acc = fn.create_accumulator()
    for i in rng.permutation(len(links)):
        acc = fn.add_input(acc, [links[i]])
    assert sum(map(len, acc[0])) < len(links)  # replaced by star edges along the way
    assert fn.extract_output(acc) == {f"u{i:05d}": "u00000" for i in range(3001)}


def test_a_cells_pairs_leave_it_as_star_edges_of_their_components():
    pairs = np.array([(3, 4), (2, 3), (4, 2), (20, 21), (5, 2), (3, 4), (30, 31), (31, 32), (32, 33), (33, 29)])
    roots, members = star_edges(pairs[:, 0], pairs[:, 1])
    assert list(zip(roots.tolist(), members.tolist())) == [(2, 3), (2, 4), (2, 5), (20, 21), (29, 30), (29, 31),
                                                          (29, 32), (29, 33)]
    empty = np.zeros(0, np.int64)
    assert [len(x) for x in star_edges(empty, empty)] == [0, 0]
    roots, members = star_edges(["b", "c", "y"], ["a", "b", "x"])
    assert list(zip(roots.tolist(), members.tolist())) == [("a", "b"), ("a", "c"), ("x", "y")]
