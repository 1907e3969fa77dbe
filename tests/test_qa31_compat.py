"""lazymat.compat.FactoredMatrix over shape-only symbols, as the migration guide shows it (qa31,
session 21).

Found and fixed: ``fm.S`` of a matrix over a symbol was refused as "S, the singular values of
svd() needs values", where every other refusal reads "<operation> needs values" or
"<operation> (<why>) needs values", and the guide's example printed something other than
what its comment said ("svd() needs values").
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.compat import FactoredMatrix

# what the user asks -> the operation the refusal must name first
ASKED = {
    "S": (lambda fm: fm.S, "S"),
    "U": (lambda fm: fm.U, "svd()"),
    "svd()": (lambda fm: fm.svd(), "svd()"),
    "norm()": (lambda fm: fm.norm(), "norm()"),
    "eigenvalues": (lambda fm: fm.eigenvalues, "eigenvalues"),
    "make_even()": (lambda fm: fm.make_even(), "make_even()"),
    "collapse_l()": (lambda fm: fm.collapse_l(), "collapse_l()"),
    "get_corner(2)": (lambda fm: fm.get_corner(2), "get_corner(2)"),
}


@settings(max_examples=40, deadline=None)
@given(asked=st.sampled_from(sorted(ASKED)), batch=st.lists(st.integers(1, 4), max_size=2),
       n=st.integers(1, 6), k=st.integers(1, 6), symbol_left=st.booleans())
def test_a_value_needing_operation_on_a_symbol_is_refused_naming_it_first(asked, batch, n, k, symbol_left):
    shapes = ((*batch, n, k), (*batch, k, n))
    factors = [lm.symbol("W_V", shapes[0]), torch.randn(shapes[1])]
    if not symbol_left:
        factors = [torch.randn(shapes[0]), lm.symbol("W_O", shapes[1])]
    fm = FactoredMatrix(*factors)
    run, operation = ASKED[asked]
    with pytest.raises(lm.SymbolHasNoData) as refused:
        run(fm)
    text = str(refused.value)
    head = f"FactoredMatrix {tuple(fm.shape)}: {operation}"
    assert text.startswith(f"{head} needs values") or text.startswith(f"{head} ("), text
    assert "W_V" in text if symbol_left else "W_O" in text
