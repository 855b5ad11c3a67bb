import numpy as np
import pytest

from keras_prune import masks

pytestmark = pytest.mark.core


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.8, 0.95, 0.999])
@pytest.mark.parametrize("shape", [(7,), (13, 5), (3, 3, 4, 6)])
def test_exact_count_pruned(sparsity, shape):
    scores = np.abs(np.random.default_rng(1).normal(size=shape))
    keep = masks.sparsity_mask(scores, sparsity)
    assert keep.shape == shape
    assert int((~keep).sum()) == masks.prune_count(sparsity, scores.size)
    if (~keep).any() and keep.any():
        assert scores[~keep].max() <= scores[keep].min()


def test_ties_are_broken_by_position_not_all_kept():
    scores = np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.9])
    keep = masks.sparsity_mask(scores, 0.5)  # 3 of 6, four tied at 0.1
    assert keep.tolist() == [True, False, False, False, True, True]


def test_all_equal_scores_still_reach_the_target():
    keep = masks.sparsity_mask(np.zeros((10, 10)), 0.8)
    assert int((~keep).sum()) == 80


def test_threshold_mask_prunes_at_and_below():
    keep = masks.threshold_mask(np.array([-0.3, 0.1, -0.1, 0.05, 0.2]), 0.1)
    assert keep.tolist() == [True, False, False, False, True]


def test_global_ranking_spans_tensors():
    a = np.array([[0.1, 0.2], [0.3, 0.4]])
    b = np.array([5.0, 6.0, 0.05, 7.0])
    keep_a, keep_b = masks.global_sparsity_masks([a, b], 0.5)
    assert keep_a.tolist() == [[False, False], [False, True]]
    assert keep_b.tolist() == [True, True, False, True]


@pytest.mark.parametrize("pooling", ["AVG", "MAX"])
def test_block_mask_prunes_whole_blocks(pooling):
    scores = np.abs(np.random.default_rng(2).normal(size=(8, 6)))
    keep = masks.block_mask(scores, 0.5, (2, 3), pooling)
    blocks = keep.reshape(4, 2, 2, 3)
    assert all(b.all() or not b.any() for b in blocks.transpose(0, 2, 1, 3).reshape(8, 6))
    assert int((~keep).sum()) == 24


def test_block_mask_any_rank_and_ragged_edges():
    scores = np.abs(np.random.default_rng(3).normal(size=(3, 3, 5, 7)))
    keep = masks.block_mask(scores, 0.6, (4, 4))
    assert keep.shape == scores.shape
    matrix = keep.reshape(-1, 7)
    for r in range(0, matrix.shape[0], 4):
        for c in range(0, 7, 4):
            block = matrix[r:r + 4, c:c + 4]
            assert block.all() or not block.any()


def test_block_pooling_type_changes_the_choice():
    scores = np.array([[0.0, 1.0, 0.4, 0.4]])
    assert masks.block_mask(scores, 0.5, (1, 2), "AVG").tolist() == [[True, True, False, False]]
    assert masks.block_mask(scores, 0.5, (1, 2), "MAX").tolist() == [[True, True, False, False]]
    scores = np.array([[0.0, 0.9, 0.5, 0.5]])
    assert masks.block_mask(scores, 0.5, (1, 2), "AVG").tolist() == [[False, False, True, True]]
    assert masks.block_mask(scores, 0.5, (1, 2), "MAX").tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("m_by_n", [(2, 4), (1, 4), (3, 8)])
def test_m_by_n_along_input_axis(m_by_n):
    m, n = m_by_n
    scores = np.abs(np.random.default_rng(4).normal(size=(3, 3, 16, 5)))
    keep = masks.m_by_n_mask(scores, m_by_n)
    groups = np.moveaxis(keep, 2, -1).reshape(-1, n)
    assert (groups.sum(axis=1) == n - m).all()


def test_m_by_n_short_tail_group_is_not_emptied():
    keep = masks.m_by_n_mask(np.arange(6.0).reshape(6, 1) + 1, (2, 4))
    assert keep.ravel().tolist() == [False, False, True, True, False, True]  # tail of 2: 1 pruned
    single = masks.m_by_n_mask(np.ones((1, 3, 1, 8)), (2, 4))
    assert single.all()


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(block_size=(0, 1)), "block_size"),
    (dict(block_size=(1, 2, 3)), "block_size"),
    (dict(block_pooling_type="MEAN"), "block_pooling_type='MEAN'"),
    (dict(sparsity_m_by_n=(4, 4)), "m < n"),
    (dict(sparsity_m_by_n=(2,)), "sparsity_m_by_n"),
    (dict(sparsity_m_by_n=(2, 4), block_size=(2, 2)), "cannot be combined"),
])
def test_check_pattern_rejects_bad_patterns(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        masks.check_pattern(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("seed", range(5))
def test_lowest_k_matches_a_stable_sort_with_many_ties_and_zeros(seed):
    rng = np.random.default_rng(seed)
    lowest = -2 if seed % 2 else 0  # negative scores (Taylor) rank below the zeros
    for _ in range(100):
        scores = rng.integers(lowest, 4, size=rng.integers(1, 60)).astype("float32")
        k = int(rng.integers(0, scores.size + 1))
        expected = np.ones(scores.size, dtype=bool)
        expected[np.argsort(scores, kind="stable")[:k]] = False
        np.testing.assert_array_equal(masks.lowest_k_mask(scores, k), expected)


@pytest.mark.parametrize("zeros", [0.0, 0.3, 0.95])
@pytest.mark.parametrize("layout", ["random", "sorted", "few_values"])
def test_lowest_k_on_large_arrays_matches_a_stable_sort(zeros, layout):
    # Large enough for the sampled bracket; sorted and few-valued layouts defeat a naive sample.
    rng = np.random.default_rng(7)
    scores = np.abs(rng.normal(size=40_000)).astype("float32")
    if layout == "sorted":
        scores.sort()
    elif layout == "few_values":
        scores = np.round(scores * 4) / 4
    scores[rng.random(scores.size) < zeros] = 0.0
    order = np.argsort(scores, kind="stable")
    for k in (1, int(zeros * scores.size) + 1, scores.size // 2, scores.size - 1):
        expected = np.ones(scores.size, dtype=bool)
        expected[order[:k]] = False
        np.testing.assert_array_equal(masks.lowest_k_mask(scores, k), expected)
