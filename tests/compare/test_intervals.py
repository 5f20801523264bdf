"""question_interval: the 95% bootstrap interval of one run's mean over its questions."""

import numpy as np

from srpo_jax.compare.intervals import question_interval


def test_the_interval_matches_the_normal_approximation_of_a_mean():
    # 400 questions scored 0/1 at p = 0.3: the mean's 95% interval is about +-1.96 sd/sqrt(Q).
    x_Q = (np.random.default_rng(0).random(400) < 0.3).astype(float)
    lo, hi = question_interval(x_Q, np.random.default_rng(1))
    half = 1.96 * x_Q.std() / np.sqrt(len(x_Q))
    assert lo < x_Q.mean() < hi
    np.testing.assert_allclose([lo, hi], [x_Q.mean() - half, x_Q.mean() + half], atol=0.006)


def test_equal_scores_have_no_spread_and_one_seed_gives_one_interval():
    assert question_interval(np.full(7, 0.25), np.random.default_rng(0)) == (0.25, 0.25)
    x_Q = np.linspace(0.0, 1.0, 9)
    a = question_interval(x_Q, np.random.default_rng(5))
    assert a == question_interval(x_Q, np.random.default_rng(5))
