"""Leak-proof splits: near-duplicate groups from image signatures, and a stable hash from group to split.

Two images are near-duplicates when their signatures (`images.signature`: a unit vector of weighted low DCT
frequencies) have a cosine similarity of at least `threshold`, either as they are or with one of them
mirrored; near-duplicates are joined transitively. A group's split is a pure function of (seed, group name),
so the same data always gives the same split on any runner, and every image of a group lands in one split.

The criterion (`similar_halves`), the all-pairs comparison (`all_pairs`) and the connected components
(`star_edges`, scipy's) are defined here once; the build's Beam grouping (`near_duplicates.py`) uses them,
comparing all pairs up to `near_duplicates.EXACT_MAX_IMAGES` images and verifying the candidates of a
blocked search past it. `near_duplicate_groups` is the same exact method in one process, the reference the
Beam grouping is tested and measured against. benchmarks/grouping_recall.py measures both on the 7,000 real
images and on edited copies planted among them (mirror, JPEG quality 50, 5% crop, +-10% brightness, 3/4
resize), against the 64-bit pHash at Hamming distance 10 used before; docs/performance.md has the figures.
The default threshold, 0.86, joins fewer distinct real images, and fewer pairs of them, than the pHash did
(0.85 joined more pairs).

    python -c "from tfds_person_attrs.grouping import split_of; print(split_of('resized/1.jpg', seed=0))"
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from tfds_person_attrs.images import SIGNATURE_SIZE, mirrored

DEFAULT_THRESHOLD = 0.86
DEFAULT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
SPLIT_BY = ("group", "row")  # hash of the near-duplicate group (leak-proof) | CSV row order (for comparison)
# All pairs are compared in tiles of 256 x 1,024 signatures: the float32 output (1 MB) stays in cache. At
# 28,000 random signatures, one BLAS thread, load ~9: 256 x 1,024 3.3 CPU-s, 1,024 x 4,096 3.4, 2,048 x 8,192
# 4.6, and rows of the whole triangle (2-16 rows a product) 4.3-9.4.
_TILE_ROWS, _TILE_COLS = 256, 1024
MIRROR_NEGATED = mirrored(np.ones(SIGNATURE_SIZE)) < 0  # the coefficients a mirror negates (odd horizontal frequencies)


@dataclasses.dataclass(frozen=True)
class SplitRecipe:
    """How usable rows become splits: the build's settings, recorded beside every dataset it writes."""

    split_seed: int = 0
    split_fractions: tuple = DEFAULT_FRACTIONS  # ((split name, fraction), ...) summing to 1
    dedup_threshold: float = DEFAULT_THRESHOLD
    split_by: str = "group"  # one of SPLIT_BY

    def record(self) -> dict:
        """As the dataset's metadata and build summary record it."""
        return {"split_seed": self.split_seed, "split_fractions": dict(self.split_fractions),
                "dedup_threshold": self.dedup_threshold, "split_by": self.split_by}

    def config_name(self, schema_name: str) -> str:
        """A TFDS config name that tells this recipe apart from the default one of the same schema."""
        shares = "-".join(f"{f:g}" for _, f in self.split_fractions)
        if self.split_by == "row":
            name = f"{schema_name}_byrow_split{shares}"
        else:
            name = f"{schema_name}_seed{self.split_seed}_dedup{self.dedup_threshold}_split{shares}"
        return name.replace(".", "p")


def mirror_halves(signatures) -> tuple[np.ndarray, np.ndarray]:
    """Signatures [n, 63] as float32 (even, odd) parts: the coefficients a mirror keeps, and those it negates."""
    sig = np.asarray(signatures, np.float32).reshape(-1, SIGNATURE_SIZE)
    return np.ascontiguousarray(sig[:, ~MIRROR_NEGATED]), np.ascontiguousarray(sig[:, MIRROR_NEGATED])


def similar_halves(a, b, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) with signature a[i] near b[j], as it is or mirrored, for signatures given as
    `mirror_halves` (computed in float32).

    a.b = even + odd and mirror(a).b = even - odd, so the larger is even + |odd|: two half-width products,
    the arithmetic of one (stacking a and its mirror into one product did twice as much). On large blocks
    writing the output costs as much as the arithmetic: callers keep their blocks cache-sized.
    """
    (a_even, a_odd), (b_even, b_odd) = a, b
    best = np.dot(a_even, b_even.T)
    odd = np.dot(a_odd, b_odd.T)
    best += np.abs(odd, out=odd)
    return np.nonzero(best >= threshold)


def all_pairs(halves, threshold: float, rows: int = _TILE_ROWS, cols: int = _TILE_COLS) -> tuple[np.ndarray, ...]:
    """Every pair (i, j), i < j, of the signatures (given as `mirror_halves`) that passes the criterion, once:
    the upper triangle in tiles of rows x cols."""
    even, odd = halves
    n = len(even)
    found_i, found_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for r in range(0, n, rows):
        for c in range(r, n, cols):
            i, j = similar_halves((even[r : r + rows], odd[r : r + rows]), (even[c : c + cols], odd[c : c + cols]),
                                  threshold)
            i, j = i + r, j + c
            found_i.append(i[i < j])
            found_j.append(j[i < j])
    return np.concatenate(found_i), np.concatenate(found_j)


def star_edges(a, b) -> tuple[np.ndarray, np.ndarray]:
    """The connected components of the pairs (a[i], b[i]) (integers or strings; repeats allowed) as edges from
    each component's smallest member to each of its other members, sorted: (roots, members).

    The project's one connected-components step (`scipy.sparse.csgraph.connected_components`): the exact
    method's groups, a verified shard's pairs (the same components in fewer edges: a cluster of k images seen
    in many cells gives k - 1 edges) and the build's merge of every shard's edges (`near_duplicates.Components`).
    """
    a, b = np.asarray(a), np.asarray(b)
    vertices, index = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(vertices)
    if n == 0:
        return vertices, vertices
    graph = scipy.sparse.coo_array((np.ones(len(a)), (index[: len(a)], index[len(a) :])), shape=(n, n))
    _, label = scipy.sparse.csgraph.connected_components(graph, directed=False)
    # Each component's first vertex in sorted order is its smallest member.
    first = np.unique(label, return_index=True)[1]
    root = first[label]
    moved = np.flatnonzero(root != np.arange(n))
    order = moved[np.lexsort((moved, root[moved]))]
    return vertices[root[order]], vertices[order]


def near_duplicate_groups(ids: Sequence[str], signatures, threshold: float = DEFAULT_THRESHOLD) -> dict[str, str]:
    """Maps each id to its group name: the smallest id among its near-duplicates (itself if it has none).

    The exact method in one process (all pairs, then `star_edges`): what the build's Beam grouping gives up to
    `near_duplicates.EXACT_MAX_IMAGES` images, and the reference its blocked search is measured against.
    """
    if len(ids) == 0:
        return {}
    i, j = all_pairs(mirror_halves(np.asarray(signatures, dtype=np.float16).reshape(len(ids), -1)), threshold)
    names = np.asarray(ids)
    groups = {x: x for x in ids}
    roots, members = star_edges(names[i], names[j])
    groups.update(zip(members.tolist(), roots.tolist()))
    return groups


def split_of(group: str, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> str:
    """The split a group belongs to: a stable hash (not Python's salted `hash`) of seed and group."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return split_at(int.from_bytes(digest[:8], "big") / 2**64, fractions)


def split_at(u: float, fractions=DEFAULT_FRACTIONS) -> str:
    """The split owning position u in [0, 1) when the fractions are laid end to end (train first).

    With u = rank / n of an image's CSV row among the images, this is the plain row-order split of earlier
    work on this data (first 80% of rows train): it keeps neither near-duplicates nor neighbours apart, and is
    there to compare against, not to use.
    """
    total = 0.0
    for name, frac in fractions:
        total += frac
        if u < total:
            return name
    return fractions[-1][0]


def parse_fractions(text: str) -> tuple[tuple[str, float], ...]:
    """'80,10,10' or '0.8,0.1,0.1' -> train/validation/test fractions summing to 1."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []  # not numbers: the message below says what is expected
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"--split {text!r}: give three non-negative numbers for train,validation,test, e.g. 80,10,10")
    total = sum(parts)
    return tuple((name, p / total) for (name, _), p in zip(DEFAULT_FRACTIONS, parts))
