"""Scores -> 0/1 masks: exact top-k, threshold, block, N:M, and one global ranking.

Every function takes numpy arrays of importance scores (larger = more important) and
returns a boolean mask of the same shape where ``True`` keeps a weight. Counts are exact:
asking sparsity ``s`` of ``n`` scores prunes exactly ``round_half_up(s * n)`` of them, ties
broken by position (the earlier flat index is pruned first), so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from keras_prune._validation import check_choice, check_int_pair, check_sparsity

POOLING_TYPES = ("AVG", "MAX")


def prune_count(sparsity: float, size: int) -> int:
    """How many of ``size`` weights sparsity ``sparsity`` prunes (round half up).

    Example:
        >>> prune_count(0.8, 10), prune_count(0.25, 6)
        (8, 2)
    """
    return min(size, int(math.floor(sparsity * size + 0.5)))


def lowest_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Keeps all but the ``k`` lowest scores; among equal scores the earlier index goes first.

    Runs in linear time (a partition, not a sort).

    Example:
        >>> lowest_k_mask(np.array([3.0, 1.0, 1.0, 2.0]), 2).tolist()
        [True, False, False, True]
    """
    flat = np.asarray(scores).ravel()
    if k <= 0:
        return np.ones(np.shape(scores), dtype=bool)
    if k >= flat.size:
        return np.zeros(np.shape(scores), dtype=bool)
    kth = kth_smallest(flat, k)
    keep = flat > kth
    ties = np.flatnonzero(flat == kth)
    below = flat.size - int(np.count_nonzero(keep)) - ties.size
    keep[ties[k - below:]] = True  # prune only the first ties, in index order
    return keep.reshape(np.shape(scores))


def kth_smallest(flat: np.ndarray, k: int):
    """The ``k``-th smallest value of a 1-D array (``1 <= k <= flat.size``).

    Example:
        >>> float(kth_smallest(np.array([0.0, 0.0, 3.0, 1.0]), 3))
        1.0
    """
    if flat.min() != 0:
        return np.partition(flat, k - 1)[k - 1]
    # Mid-pruning most magnitudes are exactly 0. A partition over many equal values is ~100x
    # slower, and pulling out the nonzeros costs more than partitioning them: count the zeros,
    # then partition only the positive values between two bounds read off a strided sample
    # (Floyd and Rivest's selection). The counts are checked; a miss takes every positive value.
    zeros = flat.size - int(np.count_nonzero(flat != 0))  # counting bools: 10x faster than floats
    if k <= zeros:
        return flat.dtype.type(0)
    smallest_positive = np.nextafter(flat.dtype.type(0), flat.dtype.type(1))
    low, high = _sample_bounds(flat, k)
    low = max(low, smallest_positive)
    below = int(np.count_nonzero(flat < low))
    between = flat[(flat >= low) & (flat <= high)]
    if not below < k <= below + between.size:
        below, between = zeros, flat[flat >= smallest_positive]
    return np.partition(between, k - below - 1)[k - below - 1]


SAMPLE_SIZE = 4096  # sorting this many costs ~50 us; the bracket then holds ~7% of the values


def _sample_bounds(flat: np.ndarray, k: int) -> tuple[float, float]:
    """Values that likely enclose the ``k``-th smallest, from every ``n / 4096``-th entry."""
    sample = np.sort(flat[:: max(1, flat.size // SAMPLE_SIZE)])
    position = k / flat.size * sample.size
    margin = 2 * math.sqrt(sample.size) + 8  # >= 4 standard deviations of the rank error: misses are rare
    first, last = math.floor(position - margin), math.ceil(position + margin)
    low = sample[first] if first >= 0 else -np.inf
    high = sample[last] if last < sample.size else np.inf
    return low, high


def zero_pruned(weights: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``weights`` with pruned positions set to +0.0 (not -0.0, which compresses worse).

    Example:
        >>> zero_pruned(np.array([-1.0, -2.0, np.inf]), np.array([True, False, False])).tolist()
        [-1.0, 0.0, 0.0]
    """
    # A product is ~15x faster than np.where on random masks; adding +0.0 turns -0.0 into +0.0.
    with np.errstate(invalid="ignore"):
        zeroed = np.multiply(weights, keep, dtype=np.asarray(weights).dtype)
    zeroed += 0
    if not np.isfinite(zeroed).all():  # inf * 0 is nan: a diverged weight is still pruned to 0
        zeroed[~np.asarray(keep, dtype=bool)] = 0
    return zeroed


def sparsity_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Prunes exactly ``prune_count(sparsity, scores.size)`` of the lowest scores.

    Example:
        >>> sparsity_mask(np.array([[0.1, -0.9], [0.5, 0.0]]) ** 2, 0.5).astype(int).tolist()
        [[0, 1], [1, 0]]
    """
    return lowest_k_mask(scores, prune_count(sparsity, np.size(scores)))


def threshold_mask(weights: np.ndarray, threshold: float) -> np.ndarray:
    """Prunes every weight with ``|w| <= threshold``.

    Example:
        >>> threshold_mask(np.array([0.5, -0.01, 0.02]), 0.02).tolist()
        [True, False, False]
    """
    return np.abs(weights) > threshold


def global_sparsity_masks(scores: Sequence[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """One ranking across several tensors: prunes ``round(s * total)`` lowest scores overall.

    Ties are broken as in one concatenated tensor (the earlier tensor, then the earlier index,
    is pruned first), but the scores are never concatenated: the k-th smallest is selected
    from their sortable keys (see :func:`streamed_kth_key`), then each tensor is masked alone.

    Example:
        >>> a, b = global_sparsity_masks([np.array([1.0, 9.0]), np.array([2.0, 3.0])], 0.5)
        >>> a.tolist(), b.tolist()
        ([False, True], [False, True])
    """
    total = sum(int(np.size(s)) for s in scores)
    k = prune_count(sparsity, total)
    if k <= 0 or k >= total:
        return [np.full(np.shape(s), k <= 0, dtype=bool) for s in scores]
    dtype = _common_float(scores)

    def passes():
        for s in scores:
            for chunk in _chunks(np.asarray(s)):
                yield sortable_keys(chunk.astype(dtype, copy=False))

    step = max(1, total // STREAM_SAMPLE)
    sample = np.concatenate([sortable_keys(np.ravel(np.asarray(s, dtype=dtype))[::step]) for s in scores])
    kth, below = streamed_kth_key(passes, k, total, sample=sample, limit=max(1 << 16, total // 8))
    ties_left = k - below
    masks = []
    for s in scores:
        keys = sortable_keys(np.asarray(s).astype(dtype, copy=False))
        keep = keys > kth
        ties = np.flatnonzero(keys == kth)
        keep.reshape(-1)[ties[ties_left:]] = True  # prune only the first ties, in order
        ties_left = max(0, ties_left - ties.size)
        masks.append(keep.reshape(np.shape(s)))
    return masks


def _as_matrix(scores: np.ndarray) -> np.ndarray:
    """Views a weight of any rank as 2-D: (everything but the last axis, last axis)."""
    scores = np.asarray(scores)
    if scores.ndim == 0:
        return scores.reshape(1, 1)
    if scores.ndim == 1:
        return scores.reshape(1, -1)
    return scores.reshape(-1, scores.shape[-1])


def block_mask(
    scores: np.ndarray,
    sparsity: float,
    block_size: tuple[int, int],
    pooling: str = "AVG",
) -> np.ndarray:
    """Prunes whole ``block_size`` blocks of the 2-D view of ``scores``, lowest pooled first.

    The 2-D view folds all leading axes into rows; edge blocks that stick out are pooled
    over the weights they cover. Exactly ``round(s * number_of_blocks)`` blocks are pruned.

    Example:
        >>> scores = np.array([[1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 5.0, 5.0]])
        >>> block_mask(scores, 0.5, (2, 2)).astype(int).tolist()
        [[0, 0, 1, 1], [0, 0, 1, 1]]
    """
    rows_per, cols_per = block_size
    matrix = _as_matrix(scores)
    rows, cols = matrix.shape
    n_r, n_c = -(-rows // rows_per), -(-cols // cols_per)
    padded = np.full((n_r * rows_per, n_c * cols_per), np.nan)
    padded[:rows, :cols] = matrix
    blocks = padded.reshape(n_r, rows_per, n_c, cols_per)
    pool = np.nanmean if pooling == "AVG" else np.nanmax
    pooled = pool(blocks, axis=(1, 3))
    keep_blocks = sparsity_mask(pooled, sparsity)
    keep = np.repeat(np.repeat(keep_blocks, rows_per, axis=0), cols_per, axis=1)
    return keep[:rows, :cols].reshape(np.shape(scores))


def m_by_n_mask(scores: np.ndarray, m_by_n: tuple[int, int], axis: int | None = None) -> np.ndarray:
    """Prunes the ``m`` lowest of every ``n`` consecutive weights along the input axis.

    The input axis is the axis the layer sums its inputs over: ``axis`` if given (an
    EinsumDense kernel, see :func:`keras_prune.handlers.input_axis`), else the second-to-last
    axis (Dense ``(in, out)``, Conv ``(..., in, out)``), or the only axis of a vector. A last, shorter group of ``g`` weights prunes
    ``floor(m * g / n)`` of them, so a layer with fewer than ``n`` inputs is not emptied.

    Example:
        >>> m_by_n_mask(np.array([[4.0], [1.0], [3.0], [2.0]]), (2, 4)).ravel().tolist()
        [True, False, True, False]
    """
    m, n = m_by_n
    scores = np.asarray(scores)
    axis = default_input_axis(scores.ndim) if axis is None else axis
    moved = np.moveaxis(scores, axis, -1)
    length = moved.shape[-1]
    full = (length // n) * n
    keep = np.ones(moved.shape, dtype=bool)
    if full:
        groups = moved[..., :full].reshape(-1, n)
        order = np.argsort(groups, axis=1, kind="stable")[:, :m]
        group_keep = np.ones(groups.shape, dtype=bool)
        np.put_along_axis(group_keep, order, False, axis=1)
        keep[..., :full] = group_keep.reshape(moved[..., :full].shape)
    rest = length - full
    if rest:
        tail = moved[..., full:].reshape(-1, rest)
        order = np.argsort(tail, axis=1, kind="stable")[:, : (m * rest) // n]
        tail_keep = np.ones(tail.shape, dtype=bool)
        np.put_along_axis(tail_keep, order, False, axis=1)
        keep[..., full:] = tail_keep.reshape(moved[..., full:].shape)
    return np.moveaxis(keep, -1, axis)


def default_input_axis(ndim: int) -> int:
    """The axis a kernel of rank ``ndim`` sums its inputs over, unless its layer says otherwise."""
    return ndim - 2 if ndim >= 2 else 0


def pattern_misfit(
    shape: Sequence[int],
    block_size: tuple[int, int] = (1, 1),
    m_by_n: tuple[int, int] | None = None,
    axis: int | None = None,
) -> str | None:
    """Why a validated pattern cannot prune a weight of ``shape`` as asked, or ``None`` if it can.

    N:M needs at least N weights along the input axis (a shorter axis holds no group of N).
    A block must fit the weight's 2-D view (see :func:`block_mask`); a larger block is cut
    to the view, and a block larger than the whole view prunes all of the weight or none.

    Example:
        >>> pattern_misfit((3, 3, 1, 8), m_by_n=(2, 4))
        'its input axis has 1 weight, fewer than N=4, so no group of 4 exists and it stays dense'
        >>> pattern_misfit((16, 8), block_size=(4, 4)) is None
        True
    """
    shape = tuple(int(d) for d in shape)
    if m_by_n is not None:
        return _m_by_n_misfit(shape, m_by_n, default_input_axis(len(shape)) if axis is None else axis)
    if tuple(block_size) != (1, 1):
        return _block_misfit(shape, block_size)
    return None


def _m_by_n_misfit(shape: tuple[int, ...], m_by_n: tuple[int, int], axis: int) -> str | None:
    m, n = m_by_n
    length = shape[axis] if shape else 1
    if length >= n:
        return None
    pruned = (m * length) // n  # what m_by_n_mask prunes in a short group
    outcome = "it stays dense" if pruned == 0 else f"{pruned} of every {length} are pruned instead of {m}:{n}"
    plural = "" if length == 1 else "s"
    return f"its input axis has {length} weight{plural}, fewer than N={n}, so no group of {n} exists and {outcome}"


def _block_misfit(shape: tuple[int, ...], block_size: tuple[int, int]) -> str | None:
    rows, cols = matrix_shape(shape)
    r, c = block_size
    if r <= rows and c <= cols:
        return None
    if r >= rows and c >= cols:
        return (
            f"a {r}x{c} block covers its whole {rows}x{cols} 2-D view, so the weight is one block "
            "and is pruned entirely or not at all"
        )
    return f"a {r}x{c} block does not fit its {rows}x{cols} 2-D view, so it is pruned in {min(r, rows)}x{min(c, cols)} blocks"


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The shape of the 2-D view block patterns use: (all leading axes folded, last axis).

    Example:
        >>> matrix_shape((3, 3, 2, 8)), matrix_shape((5,))
        ((18, 8), (1, 5))
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) <= 1:
        return 1, (shape[0] if shape else 1)
    return math.prod(shape[:-1]), shape[-1]


def check_pattern(
    block_size: object = (1, 1),
    block_pooling_type: object = "AVG",
    sparsity_m_by_n: object = None,
) -> tuple[tuple[int, int], str, tuple[int, int] | None]:
    """Validates a sparsity pattern; returns it normalized. Raises before anything changes."""
    block = check_int_pair("block_size", block_size)
    pooling = check_choice("block_pooling_type", block_pooling_type, POOLING_TYPES)
    if sparsity_m_by_n is None:
        return block, pooling, None
    m, n = check_int_pair("sparsity_m_by_n", sparsity_m_by_n)
    if m >= n:
        raise ValueError(
            "Argument `sparsity_m_by_n` must be (m, n) with m < n: m zeros in every n "
            f"consecutive weights. Received: sparsity_m_by_n={sparsity_m_by_n!r}"
        )
    if block != (1, 1):
        raise ValueError(
            "Arguments `block_size` and `sparsity_m_by_n` cannot be combined. "
            f"Received: block_size={block_size!r}, sparsity_m_by_n={sparsity_m_by_n!r}"
        )
    return block, pooling, (m, n)


def pattern_mask(
    scores: np.ndarray,
    sparsity: float,
    block_size: tuple[int, int] = (1, 1),
    pooling: str = "AVG",
    m_by_n: tuple[int, int] | None = None,
    axis: int | None = None,
) -> np.ndarray:
    """The mask for one tensor under a validated pattern (N:M ignores ``sparsity``; ``axis`` is
    its input axis, see :func:`m_by_n_mask`).

    Example:
        >>> pattern_mask(np.arange(8.0), 0.25).astype(int).tolist()
        [0, 0, 1, 1, 1, 1, 1, 1]
    """
    if m_by_n is not None:
        return m_by_n_mask(scores, m_by_n, axis)
    check_sparsity("sparsity", sparsity)
    if tuple(block_size) != (1, 1):
        return block_mask(scores, sparsity, block_size, pooling)
    return sparsity_mask(scores, sparsity)


# ----- Selection without concatenation -------------------------------------------------------
# A global ranking over many tensors needs only the k-th smallest score and how many scores lie
# below it; the masks then follow tensor by tensor. Scores become unsigned integer keys in the
# same order (the bits of a non-negative float already are), read in chunks, one pass at a time.

STREAM_SAMPLE = 1 << 16  # strided sample bracketing the k-th key: the bracket holds ~1.6% of the keys


def key_dtype(dtype) -> np.dtype:
    """The unsigned integer type as wide as the float type ``dtype`` (float16/bfloat16, 32, 64).

    Example:
        >>> key_dtype(np.float32)
        dtype('uint32')
    """
    size = np.dtype(dtype).itemsize
    if size not in (2, 4, 8):
        raise TypeError(f"Cannot rank scores of type {np.dtype(dtype)}: expected a 16, 32 or 64-bit float.")
    return np.dtype(f"uint{8 * size}")


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integers in the numeric order of the finite floats ``values``; -0.0 and 0.0
    share a key, as they compare equal.

    Example:
        >>> keys = sortable_keys(np.array([-2.0, -0.0, 0.0, 1.5], "float32"))
        >>> bool(keys[0] < keys[1] == keys[2] < keys[3])
        True
    """
    values = np.asarray(values)
    values = values + values.dtype.type(0)  # -0.0 + 0.0 is +0.0
    unsigned = key_dtype(values.dtype)
    bits = values.view(unsigned)
    top = unsigned.type(1) << unsigned.type(8 * unsigned.itemsize - 1)
    return np.where(bits & top, ~bits, bits | top)


def key_to_value(key: int, dtype, signed: bool = True):
    """The float whose :func:`sortable_keys` key (or, ``signed=False``, whose own bits) is ``key``."""
    unsigned = key_dtype(dtype)
    top = 1 << (8 * unsigned.itemsize - 1)
    if signed:
        key = key ^ top if key & top else ~key & ((top << 1) - 1)
    return np.array(key, dtype=unsigned).view(np.dtype(dtype))[()]


def streamed_kth_key(
    passes: Callable[[], Iterable[np.ndarray]],
    k: int,
    total: int,
    *,
    sample: np.ndarray | None = None,
    limit: int = 1 << 20,
) -> tuple[int, int]:
    """The ``k``-th smallest key (``1 <= k <= total``) among all the chunks of unsigned keys
    that each call of ``passes()`` yields, and how many keys are smaller.

    Holds one chunk at a time (the caller may reuse its buffer) plus at most ``limit`` keys.
    With a ``sample`` of the keys, one pass counts the keys below a bracket read off the sample
    and gathers those inside; the counts are checked, and a miss (or a bracket holding more than
    ``limit``) falls back to a radix select: a histogram of the next 16 bits of the keys that
    share the prefix found so far, one pass per 16 bits, until the bin left holds ``limit``
    keys or fewer, which one more pass gathers.

    Example:
        >>> keys = np.array([5, 1, 4, 1, 3], dtype=np.uint32)
        >>> streamed_kth_key(lambda: [keys[:2], keys[2:]], 3, 5)
        (3, 2)
    """
    if not 1 <= k <= total:
        raise ValueError(f"Argument `k` must be in [1, {total}]. Received: k={k}")
    if sample is not None and np.size(sample):
        found = _bracket_kth(passes, k, total, np.sort(np.ravel(sample)), limit)
        if found is not None:
            return found
    return _radix_kth(passes, k, limit)


def _bracket_kth(passes, k, total, sample, limit):
    position = k / total * sample.size
    margin = 2 * math.sqrt(sample.size) + 8
    first, last = math.floor(position - margin), math.ceil(position + margin)
    low = int(sample[first]) if first >= 0 else None
    high = int(sample[last]) if last < sample.size else None
    if low is not None and high is not None and low == high:  # many equal keys: bracket them alone
        after = int(np.searchsorted(sample, low, side="right"))
        high = int(sample[after]) if after < sample.size else None
    # The keys in [start, stop] are gathered; a bound the sample holds more than once (a weight
    # mostly zeros, say) may be shared by many keys: those are counted, not gathered.
    split_low = low is not None and _repeated(sample, low)
    split_high = high is not None and _repeated(sample, high)
    top = int(np.iinfo(sample.dtype).max)
    start = 0 if low is None else low + split_low
    stop = top if high is None else high - split_high
    below = at_low = at_high = held = 0
    inside: list[np.ndarray] = []
    shifted = flags = None
    for keys in passes():
        n = keys.size
        if flags is None or flags.size < n:  # buffers reused from chunk to chunk
            shifted, flags = np.empty(n, keys.dtype), np.empty(n, bool)
        if low is not None:
            below += int(np.count_nonzero(np.less(keys, keys.dtype.type(low), out=flags[:n])))
            if split_low:
                at_low += int(np.count_nonzero(np.equal(keys, keys.dtype.type(low), out=flags[:n])))
        if split_high:
            at_high += int(np.count_nonzero(np.equal(keys, keys.dtype.type(high), out=flags[:n])))
        if start > stop:
            continue
        if start == 0 and stop == top:
            part = keys.copy()
        else:  # start <= key <= stop, as one comparison of unsigned differences (they wrap)
            np.subtract(keys, keys.dtype.type(start), out=shifted[:n])
            part = keys[np.less_equal(shifted[:n], keys.dtype.type(stop - start), out=flags[:n])]
        held += part.size
        if held > limit:
            return None
        inside.append(part)
    rank, before = k - below, below
    if rank <= 0:
        return None
    if split_low:
        if rank <= at_low:
            return low, below
        rank, before = rank - at_low, before + at_low
    if rank <= held:
        between = np.concatenate(inside) if len(inside) != 1 else inside[0]
        del inside
        between.partition(rank - 1)
        kth = between[rank - 1]
        return int(kth), before + int(np.count_nonzero(between[: rank - 1] < kth))
    rank, before = rank - held, before + held
    if split_high and rank <= at_high:
        return high, before
    return None


def _repeated(sorted_keys: np.ndarray, key: int) -> bool:
    """Whether ``key`` occurs more than once in the sorted array."""
    key = sorted_keys.dtype.type(key)
    return int(np.searchsorted(sorted_keys, key, side="right") - np.searchsorted(sorted_keys, key, side="left")) > 1


def _radix_kth(passes, k, limit):
    bits = None
    prefix, done, below = 0, 0, 0
    while bits is None or done < bits:
        histogram = None
        for keys in passes():
            if bits is None:
                bits = 8 * keys.dtype.itemsize
            width = min(16, bits - done)
            shift = bits - done - width
            chosen = keys if done == 0 else keys[(keys >> (bits - done)) == prefix]
            if histogram is None:
                histogram = np.zeros(1 << width, dtype=np.int64)
            if chosen.size:
                digits = ((chosen >> shift) & ((1 << width) - 1)).astype(np.intp)
                histogram += np.bincount(digits, minlength=1 << width)
        if histogram is None:
            raise ValueError("No keys to select from.")
        cumulative = np.cumsum(histogram)
        digit = int(np.searchsorted(cumulative, k - below))
        below += int(cumulative[digit - 1]) if digit else 0
        prefix, done = (prefix << width) | digit, done + width
        if done < bits and histogram[digit] <= limit:
            between = np.concatenate([keys[(keys >> (bits - done)) == prefix] for keys in passes()])
            rank = k - below
            kth = np.partition(between, rank - 1)[rank - 1]
            return int(kth), below + int(np.count_nonzero(between < kth))
    return prefix, below


def _chunks(array: np.ndarray, size: int = 1 << 18) -> Iterator[np.ndarray]:
    flat = np.ravel(array)
    for start in range(0, flat.size, size):
        yield flat[start:start + size]


def _common_float(arrays: Sequence[np.ndarray]) -> np.dtype:
    dtype = np.result_type(*[np.asarray(a).dtype for a in arrays]) if arrays else np.dtype(np.float64)
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        return np.dtype(np.float64)
    return dtype
