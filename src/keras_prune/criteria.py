"""Importance scores for weights (higher means more important, kept longer), and the criteria
of one-shot pruning: magnitude, Wanda and SparseGPT as :class:`Criterion` objects."""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_prune.masks import lowest_k_mask, m_by_n_mask, zero_pruned


def magnitude(weights: np.ndarray) -> np.ndarray:
    """Magnitude importance: ``|w|``.

    Example:
        >>> magnitude(np.array([-2.0, 0.5])).tolist()
        [2.0, 0.5]
    """
    return np.abs(np.asarray(weights))


def pruned_threshold(scores: np.ndarray, keep: np.ndarray) -> float:
    """The largest non-negative score that was pruned (0.0 when nothing was), as TensorBoard reports it.

    Example:
        >>> pruned_threshold(np.array([0.1, 0.3, 0.2]), np.array([False, True, False]))
        0.2
    """
    # A product, not a masked max: ~20x faster, and exact for the non-negative scores here.
    return float(np.max(scores * ~np.asarray(keep, dtype=bool), initial=0.0))


@dataclasses.dataclass
class PruningResult:
    """What a criterion made of a kernel matrix: the new values, the keep mask, and a note
    for the report (``None`` when there is nothing to say)."""

    matrix: np.ndarray
    keep: np.ndarray
    note: str | None = None


class Criterion:
    """How one-shot pruning chooses, and may repair, the weights of one kernel matrix.

    A kernel is seen as a ``(features, outputs)`` matrix (see
    :mod:`keras_prune.linear_views`) and the calibration statistics of its inputs
    (:class:`keras_prune.calibration.InputStatistics`). ``statistics`` says what a criterion
    needs collected: ``None`` (weights only), ``"norms"`` or ``"gram"``. A subclass gives
    :meth:`scores` (higher is kept longer) or overrides :meth:`prune` altogether.
    """

    name = "criterion"
    statistics: str | None = None

    def scores(self, matrix: np.ndarray, stats) -> np.ndarray:
        """Importance of each weight of ``matrix``."""
        raise NotImplementedError

    def select(self, scores: np.ndarray, count: int) -> np.ndarray:
        """The keep mask pruning the ``count`` lowest ``scores``."""
        return lowest_k_mask(scores, count)

    def prune(self, matrix: np.ndarray, stats, count: int | None,
              m_by_n: tuple[int, int] | None = None) -> PruningResult:
        """Prunes ``count`` weights of ``matrix``, or ``m`` of every ``n`` consecutive features."""
        scores = self.scores(matrix, stats)
        keep = m_by_n_mask(scores, m_by_n, axis=0) if m_by_n else self.select(scores, count or 0)
        return PruningResult(zero_pruned(matrix, keep), keep)



class Magnitude(Criterion):
    """``|w|``: the weights alone, no calibration.

    Example:
        >>> Magnitude().prune(np.array([[3.0, -1.0], [0.5, 2.0]]), None, 2).keep.tolist()
        [[True, False], [False, True]]
    """

    name = "magnitude"

    def scores(self, matrix, stats):
        return magnitude(matrix)


class Wanda(Criterion):
    """``|w| * ||x||``: a weight times the L2 norm of the input feature it multiplies,
    compared within each output unit (Sun et al., 2023, "A Simple and Effective Pruning
    Approach for Large Language Models"). Outputs each lose the same share of their inputs
    (counts differ by at most one so the total is exact).

    Example:
        >>> class Stats: norms = np.array([1.0, 10.0])
        >>> Wanda().prune(np.array([[3.0, 3.0], [0.5, 0.1]]), Stats(), 2).keep.tolist()
        [[False, True], [True, False]]
    """

    name = "wanda"
    statistics = "norms"

    def scores(self, matrix, stats):
        return np.abs(matrix) * stats.norms[:, None]

    def select(self, scores, count):
        per_output = spread(count, scores.shape[1])
        ranks = np.argsort(np.argsort(scores, axis=0, kind="stable"), axis=0, kind="stable")
        return ranks >= per_output[None, :]


def spread(total: int, parts: int) -> np.ndarray:
    """``total`` split over ``parts`` as evenly as integers allow, summing exactly to ``total``.

    Example:
        >>> spread(7, 3).tolist()
        [2, 3, 2]
    """
    bounds = (total * np.arange(parts + 1) + parts // 2) // parts
    return np.diff(bounds)


class SparseGPT(Criterion):
    """Optimal-brain-surgeon pruning with reconstruction (Frantar & Alistarh, 2023, "SparseGPT:
    Massive Language Models Can Be Accurately Pruned in One-Shot").

    Features are visited in order, in lazy blocks of ``block_columns``: each block chooses its
    mask by ``w^2 / [H^-1]_jj^2`` (its share of the weights to prune, so the total is exact),
    and each pruned weight's error is spread over the features not yet visited through the
    inverse Hessian of ``H = X^T X + damping * mean(diag) * I``, so the kept weights make up for
    the pruned ones on the calibration inputs. N:M chooses each group of ``n`` features as it
    is reached. When the statistics pair the layer's inputs with those of the unpruned model
    (``stats.cross``), the weights first move to those that best reproduce the unpruned
    model's outputs from the inputs the layer now gets, so layers make up for the error of
    the layers pruned before them too. A Hessian that is not positive definite (in float32) is dampened ten times
    more until it is, and the result says so.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(256, 16)) * rng.uniform(0.1, 3.0, size=16)  # uneven inputs
        >>> w = rng.normal(size=(16, 4))
        >>> class Stats: gram = x.T @ x
        >>> result = SparseGPT().prune(w, Stats(), 32)
        >>> int((~result.keep).sum()), bool((result.matrix[~result.keep] == 0).all())
        (32, True)
        >>> by_magnitude = Magnitude().prune(w, None, 32).matrix
        >>> bool(np.linalg.norm(x @ (w - result.matrix)) < np.linalg.norm(x @ (w - by_magnitude)))
        True
    """

    name = "sparsegpt"
    statistics = "gram"

    def __init__(self, damping: float = 0.01, block_columns: int = 128):
        self.damping = damping
        self.block_columns = block_columns

    def scores(self, matrix, stats):
        inverse, _ = self._inverse_factor(stats.gram)
        return matrix**2 / np.diag(inverse)[:, None] ** 2

    def prune(self, matrix, stats, count, m_by_n=None):
        if not m_by_n and not count:
            return PruningResult(np.array(matrix, copy=True), np.ones(matrix.shape, dtype=bool))
        upper, note = self._inverse_factor(stats.gram)
        target = self._compensated(np.asarray(matrix), stats)
        weights = np.array(target.T, dtype=np.float32)  # (outputs, features): features as columns
        keep = np.ones(weights.shape, dtype=bool)
        features = weights.shape[1]
        step = self.block_columns if not m_by_n else max(1, self.block_columns // m_by_n[1]) * m_by_n[1]
        for start in range(0, features, step):
            end = min(start + step, features)
            pruned = None if m_by_n else spread_between(count or 0, features, start, end)
            errors = _prune_block(weights, keep, upper, start, end, pruned, m_by_n)
            weights[:, end:] -= errors @ upper[start:end, end:]
        result = np.where(keep, weights, 0.0).T.astype(np.asarray(matrix).dtype)
        return PruningResult(result + 0, keep.T, note)

    def _compensated(self, matrix: np.ndarray, stats) -> np.ndarray:
        """The weights that best map the pruned inputs ``x`` to the unpruned model's outputs
        ``d w``, when ``stats.cross`` (``x^T d``) is known, pulled toward ``w`` by the damping:
        ``w + (x^T x + damping)^-1 (x^T d - x^T x) w``; else ``matrix`` itself."""
        cross = getattr(stats, "cross", None)
        if cross is None or np.array_equal(cross, stats.gram):
            return matrix
        gram = stats.gram
        damped = gram + self.damping * float(np.mean(np.diag(gram))) * np.eye(len(gram))
        shift = np.linalg.solve(damped, (cross - gram) @ matrix.astype(np.float64))
        return (matrix + shift).astype(matrix.dtype)

    def _inverse_factor(self, gram: np.ndarray) -> tuple[np.ndarray, str | None]:
        """The upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``), and a note if dampened more.

        With ``R`` the reversal of the features and ``R H R = M M^T`` (``M`` lower),
        ``U = R M^-1 R``: one Cholesky factorization and one inverse, in float32.
        """
        hessian = np.array(gram, dtype=np.float64)
        dead = np.diag(hessian) == 0
        hessian[dead, dead] = 1.0  # inputs never seen: nothing to reconstruct through them
        scale = float(np.mean(np.diag(hessian)))
        damping = self.damping
        reversed_hessian = hessian[::-1, ::-1].astype(np.float32)
        while True:  # H + mean(diag) * I is positive definite for any H = X^T X: this ends
            try:
                damped = reversed_hessian + np.float32(damping * scale) * np.eye(len(hessian), dtype=np.float32)
                lower = np.linalg.cholesky(damped)
                break
            except np.linalg.LinAlgError:
                if damping >= 1:
                    raise ValueError("the input Hessian is not positive definite even dampened by its mean "
                                     "diagonal; check the calibration data") from None
                damping = min(damping * 10, 1.0)
        upper = np.ascontiguousarray(np.linalg.inv(lower)[::-1, ::-1])
        note = None if damping == self.damping else (
            f"its input Hessian was not positive definite with damping {self.damping:g}; dampened "
            f"with {damping:g}")
        return upper, note


def spread_between(total: int, features: int, start: int, end: int) -> int:
    """The share of ``total`` that features ``start:end`` of ``features`` take, so every
    block's shares add up to ``total`` exactly.

    Example:
        >>> [spread_between(5, 8, s, s + 2) for s in (0, 2, 4, 6)]
        [1, 2, 1, 1]
    """
    return (total * end + features // 2) // features - (total * start + features // 2) // features


def _prune_block(weights, keep, upper, start, end, pruned, m_by_n) -> np.ndarray:
    """Prunes features ``start:end`` of ``weights`` in place and returns their scaled errors."""
    block = weights[:, start:end]
    factor = upper[start:end, start:end]
    diagonal = np.diag(factor)
    local = keep[:, start:end]
    errors = np.zeros_like(block)
    if pruned is not None:
        local[:] = lowest_k_mask(block**2 / diagonal**2, pruned)
    for j in range(end - start):
        if m_by_n and j % m_by_n[1] == 0:
            width = min(m_by_n[1], end - start - j)
            group = block[:, j: j + width] ** 2 / diagonal[j: j + width] ** 2
            order = np.argsort(group, axis=1, kind="stable")[:, : m_by_n[0] * width // m_by_n[1]]
            np.put_along_axis(local[:, j: j + width], order, False, axis=1)
        column = block[:, j]
        kept = np.where(local[:, j], column, 0.0)
        errors[:, j] = (column - kept) / factor[j, j]
        block[:, j:] -= np.outer(errors[:, j], factor[j, j:])
        block[:, j] = kept
    return errors
