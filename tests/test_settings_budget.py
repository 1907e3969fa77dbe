"""The memory-budget and progress settings: parsing, precedence, defaults, restoring."""

import io
import sys

import pytest
import torch

import lazymat as lm
from lazymat import progress, settings


def test_budget_precedence_and_restore():
    assert settings.get("memory_budget") is None
    with lm.config(memory_budget="2GiB"):
        assert settings.memory_budget("cpu") == 2 * 2**30
        assert settings.memory_budget("cpu", override=1000) == 1000
        assert settings.memory_budget("cpu", override="1 KiB") == 1024
    assert settings.get("memory_budget") is None


def test_default_budget_is_a_fraction_of_available_memory():
    avail = settings.available_memory("cpu")
    assert avail > 0
    got = settings.memory_budget("cpu")
    # available memory moves between the two reads; the fraction must be about right
    assert 0.3 * avail <= got <= 0.7 * avail


@pytest.mark.parametrize("bad, err", [(-1, ValueError), ("lots", ValueError), (True, TypeError),
                                      ([1], TypeError), (float("nan"), ValueError)])
def test_bad_budget_names_the_value(bad, err):
    with pytest.raises(err, match="memory_budget"):
        lm.config(memory_budget=bad)
    assert settings.get("memory_budget") is None


def test_progress_setting():
    with pytest.raises(TypeError, match="progress"):
        lm.config(progress="yes")
    with lm.config(progress=False):
        assert settings.get("progress") is False
    assert settings.get("progress") is True


def test_progress_blocks_quiet_off_a_terminal(monkeypatch):
    err = io.StringIO()  # not a TTY
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress.blocks(range(5), total=5, estimate_seconds=100.0)) == [0, 1, 2, 3, 4]
    assert err.getvalue() == ""


def test_progress_blocks_shows_a_bar_on_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress.blocks(range(3), total=3, desc="probe", estimate_seconds=100.0)) == [0, 1, 2]
    assert "probe" in err.getvalue()
    err2 = Tty()
    monkeypatch.setattr(sys, "stderr", err2)
    assert list(progress.blocks(range(3), total=3, estimate_seconds=0.1)) == [0, 1, 2]
    assert err2.getvalue() == ""  # short work: no bar
    with lm.config(progress=False):
        assert list(progress.blocks(range(3), total=3, estimate_seconds=100.0)) == [0, 1, 2]
    assert err2.getvalue() == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_cuda_available_memory():
    assert 0 < settings.available_memory("cuda") <= torch.cuda.get_device_properties(0).total_memory
