"""Index tensors of the dtypes torch refuses (int8, int16, uint16, ...) are refused as torch
refuses them, with an IndexError; numpy integer arrays of any width index as torch reads them
(converted to long; uint8 is a mask, as in torch). They were accepted as indices (qa24)."""

import warnings

import numpy as np
import pytest
import torch

import lazymat as lm


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.uint16, torch.uint32, torch.int32,
                                   torch.int64])
def test_index_tensor_dtypes_are_taken_or_refused_as_torch(dtype):
    D = torch.randn(3, 4, 5, dtype=torch.float64)
    x, key = lm.lazy(D), torch.tensor([2, 0], dtype=dtype)
    try:
        expected = D[key]
    except IndexError:
        with pytest.raises(IndexError, match=str(dtype)):
            x[key]
        return
    torch.testing.assert_close(x[key].to_dense(), expected)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.int32, np.int64, np.uint8])
def test_numpy_index_arrays_index_as_torch_reads_them(dtype):
    D = torch.randn(3, 4, 5, dtype=torch.float64)
    key = np.array([1, 0, 1], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch: uint8 masks are deprecated)
        expected = D[key]
    if dtype == np.uint8:  # a mask to torch: lazymat refuses the ambiguity, naming it
        with pytest.raises(TypeError, match="uint8"):
            lm.lazy(D)[key]
        return
    torch.testing.assert_close(lm.lazy(D)[key].to_dense(), expected)
