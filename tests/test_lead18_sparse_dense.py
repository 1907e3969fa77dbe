"""``to_dense()`` of an expression over sparse leaves is a strided tensor, as torch's ``to_dense``
is (a sparse leaf alone, scaled, transposed or summed came back sparse: found by qa23)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["leaf", "scaled", "transposed", "sum", "product"]),
       st.sampled_from([torch.Tensor.to_sparse, torch.Tensor.to_sparse_csr]), st.integers(0, 99))
def test_to_dense_of_sparse_leaves_is_strided_and_torch_valued(form, sparse, seed):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(5, 4, generator=g, dtype=torch.float64)
    D[D.abs() < 0.8] = 0
    W = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x = lm.lazy(sparse(D))
    X, expected = {"leaf": (x, D), "scaled": (2.5 * x, 2.5 * D), "transposed": (x.mT, D.mT),
                   "sum": (x + x, D + D), "product": (x @ lm.lazy(W), D @ W)}[form]
    out = X.to_dense()
    assert out.layout == torch.strided
    torch.testing.assert_close(out, expected)


def test_an_index_of_a_sparse_leaf_is_refused_naming_its_layout_and_shape():
    D, W = torch.eye(6, 4, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64)
    x = lm.lazy(D.to_sparse())
    with pytest.raises(NotImplementedError, match=r"sparse_coo leaf of shape \(6, 4\)"):
        x[1:3].to_dense()
    torch.testing.assert_close((x @ lm.lazy(W)).to_dense()[1:3], D[1:3] @ W)  # (products still run)
