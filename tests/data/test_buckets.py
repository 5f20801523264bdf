"""The length buckets that the learner and the embedded sampler pad to."""

import itertools

import pytest

from srpo_jax.data import buckets


def _bucket_set(minimum: int, per_octave: int, top: int) -> list[int]:
    """Every bucket up to `top`, enumerated from the definition: each doubling [s, 2s) of
    minimum * 2^k split into per_octave equal steps (fewer when s < per_octave)."""
    out, s = set(), minimum
    while s <= top:
        steps = min(per_octave, s)
        out.update(s + j * (s // steps) for j in range(steps))
        s *= 2
    return sorted(out)


@pytest.mark.parametrize("minimum,per_octave", list(itertools.product((1, 16), (1, 2, 3, 4, 8))))
def test_bucket_is_the_smallest_listed_length_that_fits(minimum, per_octave):
    table = _bucket_set(minimum, per_octave, 8192)
    for n in range(0, 3000):
        got = buckets.bucket_length(n, minimum=minimum, per_octave=per_octave)
        want = min(b for b in table if b >= max(n, minimum))
        assert got == want, (n, got, want)
        if n >= minimum and n >= per_octave:  # the padding the setting promises
            assert got - n < max(n, 1) / per_octave + 1


def test_per_octave_one_is_powers_of_two_and_bad_values_fail():
    assert [buckets.bucket_length(n) for n in (1, 16, 17, 48, 64, 65)] == [16, 16, 32, 64, 64, 128]
    assert buckets.bucket_length(48, per_octave=4) == 48
    assert buckets.bucket_length(49, per_octave=4) == 56
    with pytest.raises(ValueError, match="per_octave must be >= 1, got 0"):
        buckets.bucket_length(10, per_octave=0)
