"""finmerge/merge/pcg64.py makes numpy's PCG64 words inside numba kernels (dare's keep masks): the same
words as ``np.random.PCG64(seed).random_raw``, whatever the count (four chains joined by jump-ahead, and a
tail), and the state goes on from where the words end."""

from __future__ import annotations

import numpy as np
import pytest

from finmerge.merge import pcg64


@pytest.mark.parametrize("seed", [(1, 2), (0, 0), (2**63 + 5, 77), 12345], ids=str)
def test_words_are_numpys_for_any_count_and_the_state_goes_on(seed):
    for n in (0, 1, 3, 4, 5, 7, 8, 4097, 65536, 65539):
        state = pcg64.seeded_state(seed)
        words = np.empty(n, np.uint64)
        pcg64.fill(state, words)
        numpy_gen = np.random.PCG64(seed)
        want = numpy_gen.random_raw(n)
        assert np.array_equal(words, want), (n, int(np.argmax(words != want)))
        after = np.empty(9, np.uint64)
        pcg64.fill(state, after)
        assert np.array_equal(after, numpy_gen.random_raw(9)), n


def test_jump_ahead_is_numpys_advance():
    state = pcg64.seeded_state((7, 3))
    hi, lo = pcg64._advance(*state, 10**12 + 3)
    numpy_gen = np.random.PCG64((7, 3)).advance(10**12 + 3)
    s = numpy_gen.state["state"]["state"]
    assert (int(hi) << 64) | int(lo) == s
