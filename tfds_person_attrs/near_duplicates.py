"""Near-duplicate groups on Beam with no all-pairs step and no step that holds every signature.

    (image id, signature) -> blocking cells, packed by shard -> verified pairs per cell -> star edges
                          -> named edges -> connected components -> (image id, group) for images that have one

1. Blocking: each signature is made mirror-invariant (odd horizontal frequencies by absolute value, centred
   on the mean of all images: one 63-float global mean) and hashed by TABLES tables of `bits` random
   hyperplanes (SimHash), giving a cell per table; `bits` is log2(images / 64), at least 12 (12 up to
   262,144 images, 14 at a million), so that a cell holds about 64 images at any size. An image is stored
   in its cell of each table and probes that cell plus the FLIPS cells reached by flipping its least certain
   bits (those whose projection is closest to zero): a near-duplicate is missed only when in every table one
   of the bits that differ between the two was certain for the prober.
2. Shuffle by shard: the Beam key is a shard of 2**SHARD_BITS neighbouring cells (so the shards grow with the
   cells, and spread over workers). A batch of BATCH_SIZE images sends each shard it reaches one `ShardPack`:
   numpy arrays of its entries (cell, image as a position in the batch, stored or probe-only) and each of
   those images' float16 signatures once. Ids stay behind: an image is named (batch key, position) until its
   edges are joined with its batch's id list, and only images with a near-duplicate have edges.
3. Verification: a shard's entries are sorted by cell and, within each cell, every entry is compared with
   every stored image by the exact criterion (`grouping.similar_pairs`: cosine >= threshold, as is or
   mirrored), as matrix products (small neighbouring cells in one product, masked to pairs within a cell).
   The shard's verified pairs leave it as star edges of their components (`star_edges`, in numpy): the
   same components, in fewer edges than pairs (each pair is seen in up to 24 cells), as lists per batch key.
4. Components: union-find over the named edges (`Components`), per bundle and then merged in one place,
   which holds only the images that have a near-duplicate. (Rounds of min-label propagation, a join and a
   min per round, kept even that off one machine, but cost ~0.2 ms per near-duplicate image in the runner's
   per-element work: docs/performance.md section 5.)

Measured against the exact method (`grouping.near_duplicate_groups`) in benchmarks/grouping_recall.py; the
cost at 1,000,000 signatures in benchmarks/grouping_scale.py.

    python -m pytest -q tests/test_near_duplicates.py
"""

from __future__ import annotations

import collections
import hashlib
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import threadpoolctl
from apache_beam.metrics import Metrics

from tfds_person_attrs.grouping import MIRROR_NEGATED, mirror_halves, similar_halves
from tfds_person_attrs.images import SIGNATURE_SIZE

NAMESPACE = "person_attrs"
TABLES, FLIPS = 8, 2
MIN_BITS, MAX_BITS, CELL_TARGET = 12, 20, 64
# Images whose blocking keys are computed together; their entries for one shard of cells travel as one Beam
# element (`ShardPack`), so the shuffle handles about (images / BATCH_SIZE) x shards elements, not 24 per image.
BATCH_SIZE = 16384
# Neighbouring cells per shard, as a power of two: a shard of 256 cells holds ~49,000 entries (~4 MB) once its
# cells hold their ~64 images each, and an image's own cell and its probes often share one (its signature is
# then shuffled once for them: ~15 copies per image at a million, not 24).
SHARD_BITS = 8
# Candidate pairs compared per pair of matrix products: their float32 output (256 KB) stays in cache, which
# on a hot cell (4,096 probes x 2,000 stored) took 40 ms against 54-94 ms for all of them at once.
_BLOCK = 1 << 16
# Cells of at most _SMALL_CELL entries (at 28,000 images they hold ~20) are verified in runs of up to _RUN
# entries, one masked product per run (docs/performance.md section 5).
_SMALL_CELL, _RUN = 32, 128
_HYPERPLANES = np.random.default_rng(15).standard_normal((TABLES, MAX_BITS, SIGNATURE_SIZE)).astype(np.float32)
_IDS = "ids"
TABLE_TAGS = tuple(f"table{t}" for t in range(TABLES))


def mirror_invariant(signatures: np.ndarray) -> np.ndarray:
    """The blocking vector: the same for an image and its mirror (odd horizontal frequencies only change sign)."""
    out = np.array(signatures, dtype=np.float32)
    out[..., MIRROR_NEGATED] = np.abs(out[..., MIRROR_NEGATED])
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
    """Sum and count of a batch's vectors -> their mean (one 63-float accumulator, not the vectors)."""

    def create_accumulator(self):
        return np.zeros(SIGNATURE_SIZE, np.float64), 0

    def add_input(self, acc, batch_sum_count):
        return acc[0] + batch_sum_count[0], acc[1] + batch_sum_count[1]

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum((a[0] for a in accs), np.zeros(SIGNATURE_SIZE)), sum(a[1] for a in accs)

    def extract_output(self, acc):
        return (acc[0] / max(acc[1], 1)).astype(np.float32)


class _VerifyShard(beam.DoFn):
    """(shard, [shard packs of several batches]) -> its star edges as (batch key of the first end,
    [(position, (batch key, position of the second end))]), one element per batch key.

    The shard's entries are sorted by cell and verified as if each cell had its own key: every entry of a cell
    against every stored image of that cell, about _BLOCK candidate pairs at a time (small neighbouring cells in
    one product masked to pairs within a cell). The distinct verified pairs of all the shard's cells leave it as
    the star edges of their components.
    """

    def __init__(self, threshold: float):
        self._threshold = threshold
        self._candidates = Metrics.counter(NAMESPACE, "grouping_candidate_pairs")
        self._cell_size = Metrics.distribution(NAMESPACE, "grouping_cell_size")

    def setup(self):
        # A worker runs one DoFn per core already: BLAS threads on top only contend (measured: +55% CPU).
        self._blas_limit = threadpoolctl.threadpool_limits(1, user_api="blas")

    def teardown(self):
        self._blas_limit.restore_original_limits()

    def process(self, shard_packs):
        # The packs' order depends on the runner: sorted by batch key, the members' order is (batch, position).
        packs = sorted(shard_packs[1], key=lambda pack: pack.batch)
        offsets = np.cumsum([0] + [len(p.positions) for p in packs])
        batches = np.concatenate([np.full(len(p.positions), p.batch, np.uint64) for p in packs])
        positions = np.concatenate([p.positions for p in packs])
        even, odd = mirror_halves(np.concatenate([p.signatures for p in packs]))
        cells = np.concatenate([p.cells for p in packs])
        members = np.concatenate([p.members.astype(np.int64) + o for p, o in zip(packs, offsets)])
        stored = np.concatenate([p.stored for p in packs])
        order = np.lexsort((members, cells))
        cells, members, stored = cells[order], members[order], stored[order]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(cells)) + 1, [len(cells)]])
        kept_counts = np.add.reduceat(stored.astype(np.int64), starts[:-1]) if len(cells) else starts[:0]
        for count in kept_counts.tolist():
            self._cell_size.update(count)
        self._candidates.inc(int((np.diff(starts) * kept_counts).sum()))
        found: list[tuple[np.ndarray, np.ndarray]] = []
        # Small neighbouring cells are verified together, as one product masked to pairs within one cell: the
        # same pairs, in far fewer (numpy) calls than one per cell. Larger cells go alone: there the wasted
        # arithmetic of the masked pairs would cost more than the calls saved.
        bounds, run_lo = starts.tolist(), 0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi - lo > _SMALL_CELL:
                self._verify(run_lo, lo, cells, members, stored, even, odd, found)
                self._verify(lo, hi, None, members, stored, even, odd, found)
                run_lo = hi
            elif hi - run_lo > _RUN:
                self._verify(run_lo, lo, cells, members, stored, even, odd, found)
                run_lo = lo
        self._verify(run_lo, bounds[-1], cells, members, stored, even, odd, found)
        if not found:
            return
        roots, others = star_edges(np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]))
        by_batch = collections.defaultdict(list)
        for root, member in zip(roots.tolist(), others.tolist()):
            by_batch[int(batches[root])].append((int(positions[root]), (int(batches[member]), int(positions[member]))))
        yield from by_batch.items()

    def _verify(self, lo, hi, cells, members, stored, even, odd, found) -> None:
        """Appends to `found` the (probe, stored) member pairs that pass the criterion among entries lo:hi,
        every entry probing every stored one, about _BLOCK candidate pairs per product; with `cells`, only
        pairs within one cell count."""
        in_run, own = members[lo:hi], stored[lo:hi]
        kept = in_run[own]
        if len(kept) == 0 or hi - lo == 1:
            return
        stored_halves = even[kept], odd[kept]
        kept_cells = None if cells is None else cells[lo:hi][own]
        step = max(1, _BLOCK // len(kept))
        for start in range(0, hi - lo, step):
            chunk = in_run[start : start + step]  # every entry probes (stored ones too)
            p, q = similar_halves((even[chunk], odd[chunk]), stored_halves, self._threshold)
            if kept_cells is not None:
                same = cells[lo + start : lo + start + step][p] == kept_cells[q]
                p, q = p[same], q[same]
            a, b = chunk[p], kept[q]
            found.append((a[a != b], b[a != b]))


def star_edges(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The components of the pairs (a[i], b[i]) (integers; repeats allowed) as edges from each component's
    smallest member to its other members, sorted: (roots, members).

    A shard's verified pairs join the same images as all of them would, in fewer edges (a cluster of k images
    that shares many cells gives k - 1 edges per shard instead of up to k(k - 1) per cell, each found in both
    directions). Min-label propagation with pointer jumping, in numpy: at 28,000 all-duplicate images a shard
    holds ~2,700 distinct pairs, each a Python union otherwise.
    """
    vertices, index = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = index[: len(a)], index[len(a) :]
    label = np.arange(len(vertices))
    while True:
        low = np.minimum(label[ia], label[ib])
        new = label.copy()
        np.minimum.at(new, ia, low)
        np.minimum.at(new, ib, low)
        new = new[new]  # labels only point down, to a member of the same component
        if np.array_equal(new, label):
            break
        label = new
    roots = vertices[label]  # vertices are sorted, so the smallest index is the smallest member
    moved = roots != vertices
    order = np.lexsort((vertices[moved], roots[moved]))
    return roots[moved][order], vertices[moved][order]


def _find(parent: dict, x):
    while parent.get(x, x) != x:
        parent[x] = parent.get(parent[x], parent[x])
        x = parent[x]
    return x


def _union(parent: dict, a, b) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    low = min(ra, rb)
    parent[max(ra, rb)] = low
    parent.setdefault(low, low)


class Components(beam.CombineFn):
    """Lists of named pairs (a, b) -> {image id: the smallest id of its component}, by union-find.

    Each bundle joins its own pairs (Beam lifts the combine), and the partial forests are merged in one
    place, which therefore holds every image that has a near-duplicate (about 50 of the real 7,000), never
    the images without one. Union by smallest root makes the labels independent of the order pairs arrive.
    """

    def create_accumulator(self):
        return {}

    def add_input(self, parent, pairs):
        for a, b in pairs:
            _union(parent, a, b)
        return parent

    def merge_accumulators(self, accs):
        accs = list(accs)
        out = accs[0]
        for acc in accs[1:]:
            for x in acc:
                _union(out, x, _find(acc, x))
        return out

    def extract_output(self, parent):
        return {x: _find(parent, x) for x in parent}


class NearDuplicateGroups(beam.PTransform):
    """(image id, signature float16 [63]) -> (image id, group) for every image with a near-duplicate.

    The group is the smallest id of the images joined to it; images without a near-duplicate are not output
    (each is its own group). batch_size and shard_bits only change how the work is cut, never the groups.
    """

    def __init__(self, threshold: float, batch_size: int = BATCH_SIZE, shard_bits: int = SHARD_BITS):
        super().__init__()
        self._threshold = threshold
        self._batch_size, self._shard_bits = batch_size, shard_bits

    def expand(self, signatures):
        # Images travel as batches from here on: one array per batch, not one pickled array per image.
        batches = (signatures
                   | "Batch" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
                   | "StackBatch" >> beam.Map(_stacked))
        center = (batches | "SumBlockingVectors" >> beam.Map(
                      lambda b: (mirror_invariant(b[1]).astype(np.float64).sum(axis=0), len(b[0])))
                  | "MeanBlockingVector" >> beam.CombineGlobally(_SumVectors()))
        bits = (batches | "BatchSizes" >> beam.Map(lambda b: len(b[0]))
                | "CountImages" >> beam.CombineGlobally(sum) | "Bits" >> beam.Map(bits_for))
        packed = batches | "ShardPacks" >> beam.ParDo(
            _ShardPacks(), center=beam.pvalue.AsSingleton(center), bits=beam.pvalue.AsSingleton(bits),
            shard_bits=self._shard_bits).with_outputs(_IDS, *TABLE_TAGS)
        # One shuffle per table: the tables are independent, and the in-process DirectRunner holds a shuffle
        # whole and encodes it into one buffer before its first group is read, so eight small shuffles peak
        # lower than one big one (at 1M signatures 5.0 GB against 12.8: docs/performance.md, section 6).
        numbered_edges = (
            [packed[tag] | f"GroupByShard{t}" >> beam.GroupByKey()
             | f"VerifyShards{t}" >> beam.ParDo(_VerifyShard(self._threshold)) for t, tag in enumerate(TABLE_TAGS)]
            | "AllTables" >> beam.Flatten()
        )
        # Edges travel in lists per batch key and are not deduplicated: a union is idempotent.
        edges = ({"ids": packed[_IDS], "edges": numbered_edges}
                 | "JoinFirstIds" >> beam.CoGroupByKey() | "NameFirst" >> beam.FlatMap(_name_first))
        edges = ({"ids": packed[_IDS], "edges": edges}
                 | "JoinSecondIds" >> beam.CoGroupByKey() | "NameSecond" >> beam.FlatMap(_name_second))
        return (edges | "Components" >> beam.CombineGlobally(Components())
                | "GroupOfEachImage" >> beam.FlatMap(lambda groups: sorted(groups.items())))


def grouping_metrics(pipeline_result) -> dict:
    """The grouping's counters summed over its steps (a verifying step per table) and its cell sizes over all
    of them: {"grouping_candidate_pairs": n, ..., "grouping_cell_size": {"count", "mean", "max"}}."""
    ours = beam.metrics.MetricsFilter().with_namespace(NAMESPACE)
    query = pipeline_result.metrics().query(ours)
    totals: dict = {}
    for c in query["counters"]:
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + c.committed
    cells = [d.committed for d in query["distributions"] if d.key.metric.name == "grouping_cell_size"]
    count = sum(d.count for d in cells)
    totals["grouping_cell_size"] = {"count": count, "mean": sum(d.sum for d in cells) / max(count, 1),
                                    "max": max((d.max for d in cells if d.count), default=None)}
    return totals


class ShardPack(NamedTuple):
    """One batch's entries for the cells of one shard, as arrays (one Beam element, not one per entry)."""

    batch: int  # the batch's key (`batch_key`)
    positions: np.ndarray  # uint32 [m]: the images' positions in their batch, ascending
    signatures: np.ndarray  # float16 [m, 63]: their signatures, each once however many of its cells are here
    cells: np.ndarray  # int32 [e]: the cell of each entry (table included)
    members: np.ndarray  # int32 [e]: the entry's image, as a row of positions / signatures
    stored: np.ndarray  # bool [e]: the image's own cell (stored and probed) or a probe-only cell


def batch_key(ids: list[str]) -> int:
    """A batch's name in edges: 63 bits of a hash of its ids (a clash of two batches is caught when naming)."""
    digest = hashlib.sha256("\0".join(ids).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class _ShardPacks(beam.DoFn):
    """`shard_packs` as a DoFn (Beam infers no element type from a DoFn, which a tagged output would confuse)."""

    def process(self, batch, center, bits, shard_bits):
        yield from shard_packs(batch, center, bits, shard_bits)


def _stacked(batch):
    """[(id, signature)] -> (ids, float16 signatures [n, 63])."""
    return [i for i, _ in batch], np.stack([np.asarray(sig, np.float16) for _, sig in batch])


def shard_packs(batch, center, bits, shard_bits):
    """A batch (ids, signatures) -> (shard, ShardPack) per shard it reaches, tagged with its table's
    TABLE_TAGS, and (batch key, ids) tagged _IDS.

    A shard is the cell id >> shard_bits: 2**shard_bits neighbouring cells of one table (all of the table's
    cells when shard_bits >= bits). bits grows with the images, so the shards do too, each holding about
    192 x 2**shard_bits entries once cells hold their ~64 images (each cell: ~64 stored entries, ~128 probes).
    """
    ids, sigs = batch
    key = batch_key(ids)
    yield beam.pvalue.TaggedOutput(_IDS, (key, ids))
    own, probes = blocking_keys(sigs, center, bits)
    n = len(ids)
    cells = np.concatenate([own.reshape(-1), probes.reshape(-1)]).astype(np.int32)
    who = np.concatenate([np.repeat(np.arange(n), TABLES), np.repeat(np.arange(n), TABLES * FLIPS)])
    stored = np.concatenate([np.ones(n * TABLES, bool), np.zeros(n * TABLES * FLIPS, bool)])
    order = np.argsort(cells, kind="stable")
    cells, who, stored = cells[order], who[order], stored[order]
    shards = cells >> min(shard_bits, bits)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(shards)) + 1, [len(cells)]])
    for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist()):
        positions, members = np.unique(who[lo:hi], return_inverse=True)
        pack = ShardPack(key, positions.astype(np.uint32), sigs[positions], cells[lo:hi], members.astype(np.int32),
                         stored[lo:hi])
        yield beam.pvalue.TaggedOutput(TABLE_TAGS[cells[lo] >> bits], (int(shards[lo]), pack))


def _named(batch_joined):
    """The one id list of a batch key and its edges; two id lists under one key are two batches that clash."""
    key, joined = batch_joined
    if len(joined["ids"]) > 1:
        raise RuntimeError(f"near-duplicate grouping: two batches of images hash to the key {key}, so their "
                           "images cannot be named; check that no image id is given twice")
    return (joined["ids"][0] if joined["ids"] else None), joined["edges"]


def _name_first(batch_joined):
    """(batch key, ids and edge lists) -> (batch key of the second ends, [(position, first end's id)])."""
    ids, edge_lists = _named(batch_joined)
    by_batch = collections.defaultdict(list)
    for edges in edge_lists:
        for position, (second_batch, second_position) in edges:
            by_batch[second_batch].append((second_position, ids[position]))
    yield from by_batch.items()


def _name_second(batch_joined):
    """(batch key, ids and half-named edge lists) -> one list of named pairs."""
    ids, edge_lists = _named(batch_joined)
    yield [(first, ids[position]) for edges in edge_lists for position, first in edges]
