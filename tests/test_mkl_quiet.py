"""``lazymat.mkl_quiet.quiet``: MKL's error printer says nothing inside a block (nested or not)
and everything outside, before and after lazymat first silences it (the user's own calls print
as they did)."""

import math

import pytest
import torch

from lazymat import mkl_quiet

pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(),
                                reason="MKL prints only where torch links it")


def _prints(capfd, inside: int) -> str:
    """What MKL writes for torch's SVD of a matrix with an inf row, inside ``inside`` nested blocks."""
    D = torch.ones(4, 4)
    D[1] = math.inf
    capfd.readouterr()
    blocks = [mkl_quiet.quiet for _ in range(inside)]
    for block in blocks:
        block.__enter__()
    try:
        torch.linalg.svdvals(D)
    finally:
        for block in blocks:
            block.__exit__(None, None, None)
    written = capfd.readouterr()
    return written.out + written.err


def test_blocks_silence_only_their_own_calls(capfd):
    assert "SLASCL" in _prints(capfd, 0)
    assert _prints(capfd, 1) == ""
    assert _prints(capfd, 2) == ""
    assert "SLASCL" in _prints(capfd, 0)  # the filter passes the user's message on
    assert _prints(capfd, 1) == ""
    assert "SLASCL" in _prints(capfd, 0)


def test_a_block_left_by_an_exception_is_closed(capfd):
    with pytest.raises(RuntimeError), mkl_quiet.quiet:
        raise RuntimeError("inside")
    assert "SLASCL" in _prints(capfd, 0)


def test_call_is_a_block_around_one_call(capfd):
    """``quiet.call(fn, arg)``: silent inside, closed after (also when ``fn`` raises)."""
    D = torch.ones(4, 4)
    D[1] = math.inf
    capfd.readouterr()
    out = mkl_quiet.quiet.call(torch.linalg.svdvals, D)
    written = capfd.readouterr()
    assert written.out + written.err == "" and out.isnan().all()
    with pytest.raises(RuntimeError):
        mkl_quiet.quiet.call(torch.linalg.inv, torch.zeros(2, 3))
    assert "SLASCL" in _prints(capfd, 0)
