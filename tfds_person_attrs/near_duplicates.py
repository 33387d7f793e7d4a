"""Near-duplicate groups on Beam with no all-pairs step and no step that holds every signature.

    (image id, signature) -> blocking keys -> candidate pairs per key -> verified pairs -> connected components
                                                                   -> (image id, group) for images that have one

1. Blocking: each signature is made mirror-invariant (odd horizontal frequencies by absolute value, centred
   on the mean of all images: one 63-float global mean) and hashed by TABLES tables of `bits` random
   hyperplanes (SimHash), giving a cell per table; `bits` is log2(images / 64), at least 12 (12 up to
   262,144 images, 14 at a million), so that a cell holds about 64 images at any size. An image is stored
   in its cell of each table and probes that cell plus the FLIPS cells reached by flipping its least certain
   bits (those whose projection is closest to zero): a near-duplicate is missed only when in every table one
   of the bits that differ between the two was certain for the prober. Keys are Beam keys, so cells spread
   over workers.
2. Verification: within a cell, every probe is compared with every stored image by the exact criterion
   (`grouping.similar_pairs`: cosine >= threshold, as is or mirrored), as one matrix product. The cell's
   verified pairs leave it as star edges of their components (`star_edges`): the same components, in fewer
   edges than pairs (each pair is seen in up to 24 cells).
3. Components: ROUNDS rounds of min-label propagation over the verified pairs (a join and a min per round);
   pairs whose ends still disagree after them are merged in one place by union-find over their labels. That
   last step holds only those pairs (none on the real data or the planted benchmark clusters).

Measured against the exact method (`grouping.near_duplicate_groups`) in benchmarks/grouping_recall.py; the
cost at 1,000,000 signatures in benchmarks/grouping_scale.py.

    python -m pytest -q tests/test_near_duplicates.py
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import threadpoolctl
from apache_beam.metrics import Metrics

from tfds_person_attrs.grouping import similar_pairs
from tfds_person_attrs.images import SIGNATURE_SIDE, SIGNATURE_SIZE

NAMESPACE = "person_attrs"
TABLES, FLIPS = 8, 2
MIN_BITS, MAX_BITS, CELL_TARGET = 12, 20, 64
ROUNDS = 3
# Images whose blocking keys are computed together; their entries for one cell travel as one Beam element,
# which cuts the elements the shuffle handles by about the number of them that share a cell.
_BATCH = 16384
# Probes compared with a cell's stored images at once; bounds a hot cell's memory to CHUNK x its size floats.
_CHUNK = 4096
_HYPERPLANES = np.random.default_rng(15).standard_normal((TABLES, MAX_BITS, SIGNATURE_SIZE)).astype(np.float32)
_ODD = np.tile(np.arange(SIGNATURE_SIDE) % 2 == 1, SIGNATURE_SIDE)[1:]
_STORE, _PROBE, _BOTH = 0, 1, 2


def mirror_invariant(signatures: np.ndarray) -> np.ndarray:
    """The blocking vector: the same for an image and its mirror (odd horizontal frequencies only change sign)."""
    out = np.array(signatures, dtype=np.float32)
    out[..., _ODD] = np.abs(out[..., _ODD])
    return out


def bits_for(num_images: int) -> int:
    """Hyperplanes per table: about CELL_TARGET images per cell, within [MIN_BITS, MAX_BITS]."""
    return int(np.clip(np.ceil(np.log2(max(num_images, 1) / CELL_TARGET)), MIN_BITS, MAX_BITS))


def blocking_keys(signatures: np.ndarray, center: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """For a batch of signatures [n, 63]: own cells [n, TABLES] (stored and probed) and probe-only cells
    [n, TABLES, FLIPS] (the own cell with one of its least certain bits flipped). A cell id includes its table."""
    vectors = mirror_invariant(signatures) - center
    proj = np.einsum("nd,tbd->ntb", vectors, _HYPERPLANES[:, :bits])
    cells = ((proj > 0).astype(np.int64) << np.arange(bits)).sum(axis=2)
    least_certain = np.argsort(np.abs(proj), axis=2)[:, :, :FLIPS]
    probes = cells[:, :, None] ^ (np.int64(1) << least_certain)
    table = (np.arange(TABLES, dtype=np.int64) << bits)
    return cells | table, probes | table[:, None]


class _SumVectors(beam.CombineFn):
    """Sum and count of vectors, for their mean (one 63-float accumulator, not the vectors)."""

    def create_accumulator(self):
        return np.zeros(SIGNATURE_SIZE, np.float64), 0

    def add_input(self, acc, vector):
        return acc[0] + vector, acc[1] + 1

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum((a[0] for a in accs), np.zeros(SIGNATURE_SIZE)), sum(a[1] for a in accs)

    def extract_output(self, acc):
        return (acc[0] / max(acc[1], 1)).astype(np.float32)


class _VerifyCell(beam.DoFn):
    """(cell, [packed entries]) -> verified pairs (smaller id, larger id)."""

    def __init__(self, threshold: float):
        self._threshold = threshold
        self._candidates = Metrics.counter(NAMESPACE, "grouping_candidate_pairs")
        self._cell_size = Metrics.distribution(NAMESPACE, "grouping_cell_size")

    def setup(self):
        # A worker runs one DoFn per core already: BLAS threads on top only contend (measured: +55% CPU).
        self._blas_limit = threadpoolctl.threadpool_limits(1, user_api="blas")

    def teardown(self):
        self._blas_limit.restore_original_limits()

    def process(self, cell_entries):
        _, packs = cell_entries
        packs = list(packs)
        roles = np.frombuffer(b"".join(p[0] for p in packs), np.int8)
        ids = [i for p in packs for i in p[1]]
        sigs = np.frombuffer(b"".join(p[2] for p in packs), np.float16).reshape(len(ids), -1)
        stored, probes = np.flatnonzero(roles != _PROBE), np.flatnonzero(roles != _STORE)
        self._cell_size.update(len(stored))
        if len(stored) == 0 or len(ids) == 1:
            return
        stored_sig = sigs[stored]
        pairs = []
        for start in range(0, len(probes), _CHUNK):
            chunk = probes[start : start + _CHUNK]
            self._candidates.inc(len(chunk) * len(stored))
            for p, q in zip(*similar_pairs(sigs[chunk], stored_sig, self._threshold)):
                if ids[chunk[p]] != ids[stored[q]]:
                    pairs.append((ids[chunk[p]], ids[stored[q]]))
        yield from star_edges(pairs)


def star_edges(pairs) -> list[tuple[str, str]]:
    """The components of these pairs as edges from each component's smallest id to its other members.

    A cell's verified pairs join the same images as all of them would, in fewer edges (a cluster of k images
    that shares many cells gives k - 1 edges per cell instead of up to k(k - 1)), and edges that already point
    at the component's smallest id settle in one round of `ConnectedComponents`.
    """
    root = _union_labels(pairs)
    return sorted((r, x) for x, r in root.items() if x != r)


def _propagate(vertex_state):
    vertex, state = vertex_state
    label = min(state["label"])
    yield vertex, label
    for neighbour in state["adjacent"]:
        yield neighbour, label


def _union_labels(label_pairs: list[tuple[str, str]]) -> dict[str, str]:
    """label -> the smallest label it is joined to, over the pairs that propagation left apart."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for a, b in label_pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


@beam.ptransform_fn
def ConnectedComponents(edges, rounds: int = ROUNDS):  # noqa: N802 - Beam's PTransform naming
    """(a, b) pairs -> (vertex, smallest vertex of its component), for every vertex of a pair."""
    adjacent = edges | "Adjacency" >> beam.FlatMap(lambda e: [(e[0], e[1]), (e[1], e[0])])
    labels = adjacent | "InitialLabels" >> beam.Map(lambda kv: (kv[0], kv[0])) | "Vertices" >> beam.Distinct()
    for r in range(rounds):
        labels = (
            {"label": labels, "adjacent": adjacent}
            | f"JoinLabels{r}" >> beam.CoGroupByKey()
            | f"Propagate{r}" >> beam.FlatMap(_propagate)
            | f"MinLabel{r}" >> beam.CombinePerKey(min)
        )
    # Pairs whose two ends still carry different labels: (label of the first end, label of the second end).
    by_first = edges | "KeyByFirst" >> beam.Map(lambda e: (e[0], e[1]))
    second_with_first_label = (
        {"label": labels, "edge": by_first}
        | "LabelFirst" >> beam.CoGroupByKey()
        | "KeyBySecond" >> beam.FlatMap(lambda kv: [(b, kv[1]["label"][0]) for b in kv[1]["edge"]])
    )
    unsettled = (
        {"first_label": second_with_first_label, "label": labels}
        | "LabelSecond" >> beam.CoGroupByKey()
        | "Disagreeing" >> beam.FlatMap(
            lambda kv: [(a, kv[1]["label"][0]) for a in kv[1]["first_label"] if a != kv[1]["label"][0]])
    )
    merged = (unsettled | "CountUnsettled" >> beam.Map(_count_unsettled)
              | "CollectUnsettled" >> beam.combiners.ToList() | "UnionFind" >> beam.Map(_union_labels))
    return labels | "ApplyMerges" >> beam.Map(
        lambda kv, merges: (kv[0], merges.get(kv[1], kv[1])), merges=beam.pvalue.AsSingleton(merged))


def _count_unsettled(pair):
    Metrics.counter(NAMESPACE, "grouping_pairs_left_to_union_find").inc()
    return pair


class NearDuplicateGroups(beam.PTransform):
    """(image id, signature float16 [63]) -> (image id, group) for every image with a near-duplicate.

    The group is the smallest id of the images joined to it; images without a near-duplicate are not output
    (each is its own group).
    """

    def __init__(self, threshold: float, rounds: int = ROUNDS):
        super().__init__()
        self._threshold = threshold
        self._rounds = rounds

    def expand(self, signatures):
        center = (signatures | "BlockingVectors" >> beam.Map(lambda kv: mirror_invariant(kv[1]))
                  | "MeanBlockingVector" >> beam.CombineGlobally(_SumVectors()))
        bits = signatures | "CountImages" >> beam.combiners.Count.Globally() | "Bits" >> beam.Map(bits_for)
        edges = (
            signatures
            | "Batch" >> beam.BatchElements(min_batch_size=_BATCH, max_batch_size=_BATCH)
            | "BlockingKeys" >> beam.FlatMap(_keyed_by_cell, center=beam.pvalue.AsSingleton(center),
                                             bits=beam.pvalue.AsSingleton(bits))
            | "GroupByCell" >> beam.GroupByKey()
            | "VerifyCells" >> beam.ParDo(_VerifyCell(self._threshold))
            | "DistinctPairs" >> beam.Distinct()
        )
        return edges | "Components" >> ConnectedComponents(self._rounds)  # pylint: disable=no-value-for-parameter


def _keyed_by_cell(batch, center, bits):
    """A batch of (id, signature) -> (cell, (roles int8 bytes, ids, signatures float16 bytes)), one per cell."""
    ids = [i for i, _ in batch]
    sigs = np.stack([np.asarray(sig, np.float16) for _, sig in batch])
    own, probes = blocking_keys(sigs, center, bits)
    n = len(ids)
    cells = np.concatenate([own.reshape(-1), probes.reshape(-1)])
    who = np.concatenate([np.repeat(np.arange(n), TABLES), np.repeat(np.arange(n), TABLES * FLIPS)])
    roles = np.concatenate([np.full(n * TABLES, _BOTH, np.int8), np.full(n * TABLES * FLIPS, _PROBE, np.int8)])
    order = np.argsort(cells, kind="stable")
    cells, who, roles = cells[order], who[order], roles[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(cells)) + 1, [len(cells)]])
    for lo, hi in zip(starts[:-1], starts[1:]):
        members = who[lo:hi]
        yield int(cells[lo]), (roles[lo:hi].tobytes(), [ids[i] for i in members], sigs[members].tobytes())
