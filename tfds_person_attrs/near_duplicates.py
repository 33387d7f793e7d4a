"""Near-duplicate groups on Beam with no all-pairs step and no step that holds every signature.

    (image id, signature) -> blocking keys -> candidate pairs per key -> verified pairs -> connected components
                                                                   -> (image id, group) for images that have one

1. Blocking: each signature is made mirror-invariant (odd horizontal frequencies by absolute value, centred
   on the mean of all images: one 63-float global mean) and hashed by TABLES tables of BITS random
   hyperplanes (SimHash), giving a cell per table. An image is stored in its cell of each table and probes
   that cell plus the FLIPS cells reached by flipping its least certain bits (those whose projection is
   closest to zero): a near-duplicate is missed only when in every table one of the bits that differ between
   the two was certain for the prober. Keys are Beam keys, so cells spread over workers.
2. Verification: within a cell, every probe is compared with every stored image by the exact criterion
   (`grouping.similar_pairs`: cosine >= threshold, as is or mirrored), as one matrix product.
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
from apache_beam.metrics import Metrics

from tfds_person_attrs.grouping import similar_pairs
from tfds_person_attrs.images import SIGNATURE_SIDE, SIGNATURE_SIZE

NAMESPACE = "person_attrs"
TABLES, BITS, FLIPS = 8, 12, 2
ROUNDS = 3
# Probes compared with a cell's stored images at once; bounds a hot cell's memory to CHUNK x its size floats.
_CHUNK = 4096
_HYPERPLANES = np.random.default_rng(15).standard_normal((TABLES * BITS, SIGNATURE_SIZE)).astype(np.float32)
_ODD = np.tile(np.arange(SIGNATURE_SIDE) % 2 == 1, SIGNATURE_SIDE)[1:]
_STORE, _PROBE, _BOTH = 0, 1, 2


def mirror_invariant(signatures: np.ndarray) -> np.ndarray:
    """The blocking vector: the same for an image and its mirror (odd horizontal frequencies only change sign)."""
    out = np.array(signatures, dtype=np.float32, copy=True)
    out[..., _ODD] = np.abs(out[..., _ODD])
    return out


def blocking_keys(signature: np.ndarray, center: np.ndarray) -> list[tuple[int, int]]:
    """[(cell key, role)]: the image's own cell in each table (stored and probed) and its probe-only cells."""
    proj = (_HYPERPLANES @ (mirror_invariant(signature) - center)).reshape(TABLES, BITS)
    bits = (proj > 0).astype(np.int64) << np.arange(BITS)
    cells = bits.sum(axis=1)
    least_certain = np.argsort(np.abs(proj), axis=1)[:, :FLIPS]
    keys = []
    for table in range(TABLES):
        base = table << BITS
        keys.append((base | int(cells[table]), _BOTH))
        keys.extend((base | int(cells[table] ^ (1 << int(b))), _PROBE) for b in least_certain[table])
    return keys


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
    """(cell, [(role, id, signature bytes)]) -> verified pairs (smaller id, larger id)."""

    def __init__(self, threshold: float):
        self._threshold = threshold
        self._candidates = Metrics.counter(NAMESPACE, "grouping_candidate_pairs")
        self._cell_size = Metrics.distribution(NAMESPACE, "grouping_cell_size")

    def process(self, cell_members):
        _, members = cell_members
        stored = [(i, s) for role, i, s in members if role != _PROBE]
        probes = [(i, s) for role, i, s in members if role != _STORE]
        self._cell_size.update(len(stored))
        if not stored or len(stored) + len(probes) <= 2 and stored[0][0] == probes[0][0]:
            return
        stored_ids = [i for i, _ in stored]
        stored_sig = np.frombuffer(b"".join(s for _, s in stored), np.float32).reshape(len(stored), -1)
        for start in range(0, len(probes), _CHUNK):
            chunk = probes[start : start + _CHUNK]
            self._candidates.inc(len(chunk) * len(stored))
            probe_sig = np.frombuffer(b"".join(s for _, s in chunk), np.float32).reshape(len(chunk), -1)
            for p, q in zip(*similar_pairs(probe_sig, stored_sig, self._threshold)):
                a, b = chunk[p][0], stored_ids[q]
                if a != b:
                    yield (a, b) if a < b else (b, a)


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
    by_first = edges | "KeyByFirst" >> beam.Map(lambda e: (e[0], e[1]))
    unsettled = (
        {"label": labels, "edge": by_first}
        | "LabelFirst" >> beam.CoGroupByKey()
        | "KeyBySecond" >> beam.FlatMap(lambda kv: [(b, kv[1]["label"][0]) for b in kv[1]["edge"]])
        | "Regroup" >> beam.Map(lambda kv: kv)
    )
    unsettled = (
        {"first_label": unsettled, "label": labels}
        | "LabelSecond" >> beam.CoGroupByKey()
        | "Disagreeing" >> beam.FlatMap(
            lambda kv: [(a, kv[1]["label"][0]) for a in kv[1]["first_label"] if a != kv[1]["label"][0]])
    )
    merged = (unsettled | "CountUnsettled" >> beam.Map(_count_unsettled)
              | "CollectUnsettled" >> beam.combiners.ToList() | "UnionFind" >> beam.Map(_union_labels))
    return labels | "ApplyMerges" >> beam.Map(lambda kv, m: (kv[0], m.get(kv[1], kv[1])), m=beam.pvalue.AsSingleton(merged))


def _count_unsettled(pair):
    Metrics.counter(NAMESPACE, "grouping_pairs_left_to_union_find").inc()
    return pair


class NearDuplicateGroups(beam.PTransform):
    """(image id, signature float32 [63]) -> (image id, group) for every image with a near-duplicate.

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
        edges = (
            signatures
            | "BlockingKeys" >> beam.FlatMap(_keyed_by_cell, center=beam.pvalue.AsSingleton(center))
            | "GroupByCell" >> beam.GroupByKey()
            | "VerifyCells" >> beam.ParDo(_VerifyCell(self._threshold))
            | "DistinctPairs" >> beam.Distinct()
        )
        return edges | "Components" >> ConnectedComponents(self._rounds)  # pylint: disable=no-value-for-parameter


def _keyed_by_cell(id_signature, center):
    image_id, sig = id_signature
    sig = np.asarray(sig, np.float32)
    data = sig.tobytes()
    for key, role in blocking_keys(sig, center):
        yield key, (role, image_id, data)
