"""Near-duplicate groups on Beam: every pair compared up to EXACT_MAX_IMAGES images, a blocked search past it.

    (image id, signature) -> blocking cells, packed by shard -> verified pairs per cell -> star edges
                          -> named edges -> connected components -> (image id, group) for images that have one

Every candidate pair is verified by the exact criterion (`grouping.similar_halves`: cosine >= threshold, as is
or mirrored); what the image count decides is which pairs are candidates.

0. Exact up to EXACT_MAX_IMAGES (2**15 = 32,768) images: every image is stored in the one cell of table 0,
   with no probes, and that cell is verified as all pairs (`grouping.all_pairs`): the exact method's groups,
   in one worker. The bound is where that stops being cheap (see EXACT_MAX_IMAGES).
1. Blocking, past the bound: each signature is made mirror-invariant (odd horizontal frequencies by absolute
   value, centred on the mean of all images: one 63-float global mean) and hashed by TABLES tables of `bits`
   random hyperplanes (SimHash), giving a cell per table; `bits` is log2(images / 64), at least 12 (12 up
   to 262,144 images, 14 at a million), so that a cell holds about 64 images at any size. An image is stored
   in its cell of each table and probes that cell plus the FLIPS cells reached by flipping its least certain
   bits (those whose projection is closest to zero): a near-duplicate is missed only when in every table one
   of the bits that differ between the two was certain for the prober (on the real 7,000, searched this way,
   31 of the exact method's 33 pairs are found: docs/performance.md section 6).
2. Shuffle by shard: the Beam key is a shard of 2**SHARD_BITS neighbouring cells (so the shards grow with the
   cells, and spread over workers). A batch of BATCH_SIZE images sends each shard it reaches one `ShardPack`:
   numpy arrays of its entries (cell, image as a position in the batch, stored or probe-only) and each of
   those images' float16 signatures once. Ids stay behind: an image is named (batch key, position) until its
   edges are joined with its batch's id list, and only images with a near-duplicate have edges.
3. Verification: a shard's entries are sorted by cell and, within each cell, every entry is compared with
   every stored image, as matrix products (small neighbouring cells in one product, masked to pairs within a
   cell; a cell of stored images only, such as the exact method's, as `grouping.all_pairs`: each pair once).
   The shard's verified pairs leave it as star edges of their components (`grouping.star_edges`): the same
   components, in fewer edges than pairs (each pair is seen in up to 24 cells), as lists per batch key.
4. Components: the named edges are merged by `Components`, a combine whose partial results are star edges
   (`grouping.star_edges` again), merged in one place, which holds only the images that have a
   near-duplicate. (Rounds of min-label propagation, a join and a min per round, kept even that off one
   machine, but cost ~0.2 ms per near-duplicate image in the runner's per-element work: docs/performance.md
   section 5.)

Measured against the exact method in one process (`grouping.near_duplicate_groups`) in
benchmarks/grouping_recall.py; the cost at 1,000,000 signatures in benchmarks/grouping_scale.py.

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

from tfds_person_attrs.grouping import MIRROR_NEGATED, all_pairs, mirror_halves, similar_halves, star_edges
from tfds_person_attrs.images import SIGNATURE_SIZE
from tfds_person_attrs.schema import DATASET_NAME

# Up to this many images every pair is compared (exact); past it, the blocked search. Why here: all pairs of
# 2**15 images are 2**29 (537M) pairs, ~4.5 CPU-s in one worker (392M pairs at 28,000 images: 3.3 CPU-s),
# against 0.4-0.7 ms per image that the build spends anyway (13-23 CPU-s at 32,768 images: section 5 of
# docs/performance.md), and the one cell holds 4 MB of signatures. The cost grows with the square of the
# images and in one worker: at 100,000 it would be ~40 CPU-s, as much as the rest of the build, while the
# blocked search's stays linear and spread over workers (5,705 candidate pairs per image at a million).
EXACT_MAX_IMAGES = 1 << 15
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


def bits_for(num_images: int, exact_max_images: int = EXACT_MAX_IMAGES) -> int:
    """Hyperplanes per table: 0 up to exact_max_images (one cell: all pairs), then about CELL_TARGET images per
    cell, within [MIN_BITS, MAX_BITS]."""
    if num_images <= exact_max_images:
        return 0
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
        self._candidates = Metrics.counter(DATASET_NAME, "grouping_candidate_pairs")
        self._cell_size = Metrics.distribution(DATASET_NAME, "grouping_cell_size")

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
        if cells is None and own.all():  # stored images only, each once (the exact method's one cell): each pair once
            p, q = all_pairs(stored_halves, self._threshold)
            found.append((kept[p], kept[q]))
            return
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


class Components(beam.CombineFn):
    """Lists of named pairs (a, b) -> {image id: the smallest id of its component}, by `grouping.star_edges`.

    A partial result holds its pairs as arrays of strings [k, 2], replaced by their star edges (one per image,
    less one per component) each time they have doubled since (so each bundle's work stays linear in its
    pairs); the partial results are merged in one place, which therefore holds every image that has a
    near-duplicate (about 50 of the real 7,000), never the images without one. Labels are the smallest id:
    they do not depend on the order in which pairs arrive.
    """

    def create_accumulator(self):
        return [], 0  # arrays of pairs, and how many pairs they held after the last replacement by star edges

    def add_input(self, acc, pairs):
        chunks, compact = acc
        if pairs:
            chunks.append(np.asarray(pairs, dtype=str).reshape(-1, 2))
        return _as_stars(chunks) if sum(map(len, chunks)) > 2 * compact + 1024 else (chunks, compact)

    def merge_accumulators(self, accs):
        return _as_stars([chunk for chunks, _ in accs for chunk in chunks])

    def extract_output(self, acc):
        chunks, _ = _as_stars(acc[0])
        if not chunks:
            return {}
        roots, members = chunks[0][:, 0].tolist(), chunks[0][:, 1].tolist()
        groups = {root: root for root in roots}
        groups.update(zip(members, roots))
        return groups


def _as_stars(chunks: list) -> tuple[list, int]:
    """A `Components` accumulator of the star edges of these arrays of pairs."""
    if not chunks:
        return [], 0
    pairs = np.concatenate(chunks)
    roots, members = star_edges(pairs[:, 0], pairs[:, 1])
    return [np.stack([roots, members], axis=1)], len(roots)


class NearDuplicateGroups(beam.PTransform):
    """(image id, signature float16 [63]) -> (image id, group) for every image with a near-duplicate.

    The group is the smallest id of the images joined to it; images without a near-duplicate are not output
    (each is its own group). batch_size and shard_bits only change how the work is cut, never the groups;
    exact_max_images is the most images for which every pair is compared (0: always the blocked search).
    """

    def __init__(self, threshold: float, batch_size: int = BATCH_SIZE, shard_bits: int = SHARD_BITS,
                 exact_max_images: int = EXACT_MAX_IMAGES):
        super().__init__()
        self._threshold = threshold
        self._batch_size, self._shard_bits = batch_size, shard_bits
        self._exact_max_images = exact_max_images

    def expand(self, signatures):
        # Images travel as batches from here on: one array per batch, not one pickled array per image.
        batches = (signatures
                   | "Batch" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
                   | "StackBatch" >> beam.Map(_stacked))
        center = (batches | "SumBlockingVectors" >> beam.Map(
                      lambda b: (mirror_invariant(b[1]).astype(np.float64).sum(axis=0), len(b[0])))
                  | "MeanBlockingVector" >> beam.CombineGlobally(_SumVectors()))
        bits = (batches | "BatchSizes" >> beam.Map(lambda b: len(b[0]))
                | "CountImages" >> beam.CombineGlobally(sum)
                | "Bits" >> beam.Map(bits_for, exact_max_images=self._exact_max_images))
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
    ours = beam.metrics.MetricsFilter().with_namespace(DATASET_NAME)
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
    cells when shard_bits >= bits; with bits = 0, the one cell of all pairs). bits grows with the images, so
    the shards do too, each holding about 192 x 2**shard_bits entries once cells hold their ~64 images (each
    cell: ~64 stored entries, ~128 probes).
    """
    ids, sigs = batch
    key = batch_key(ids)
    yield beam.pvalue.TaggedOutput(_IDS, (key, ids))
    n = len(ids)
    if bits == 0:  # all pairs: every image stored in the one cell of table 0, nothing probed
        cells, who, stored = np.zeros(n, np.int32), np.arange(n), np.ones(n, bool)
    else:
        own, probes = blocking_keys(sigs, center, bits)
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
