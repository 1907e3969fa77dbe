"""``rewrite.leaf_chain``: the leaves, left to right, of any run of ``@`` over leaves, however
it is parenthesised, and None when the run holds anything else; ``transposed_leaf_chain``
alike for leaves and transposed leaves. Checked against an independent recursive in-order
walk of random trees."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.expr import Leaf, MatMul, Transpose
from lazymat.rewrite import leaf_chain, transposed_leaf_chain


def in_order(x, transposes=False):
    """The operands of a tree of ``@`` read recursively, as ``(leaf, transposed)``, or None when
    another node (or, unless ``transposes``, a transposed leaf) is in it."""
    if type(x) is Leaf:
        return [(x, False)]
    if transposes and type(x) is Transpose and type(x.children[0]) is Leaf:
        return [(x.children[0], True)]
    if type(x) is not MatMul:
        return None
    left, right = (in_order(c, transposes) for c in x.children)
    return None if left is None or right is None else left + right


@st.composite
def products(draw):
    """A random parenthesisation of 2-6 square leaves; sometimes one operand is not a leaf (a
    transposed leaf or product, a scaled leaf or a sum) or a leaf appears twice."""
    n = draw(st.integers(2, 6))
    leaves = [lm.lazy(torch.randn(3, 3)) for _ in range(n)]
    if draw(st.booleans()):
        i = draw(st.integers(0, n - 1))
        kind = draw(st.sampled_from(["mT", "mT", "mT product", "scaled", "sum", "repeat"]))
        if kind == "repeat":
            leaves[i] = leaves[(i + 1) % n]
        else:
            leaves[i] = {"mT": leaves[i].mT, "mT product": (leaves[i] @ lm.lazy(torch.randn(3, 3))).mT,
                         "scaled": 2.0 * leaves[i], "sum": leaves[i] + leaves[i]}[kind]
    nodes = list(leaves)
    while len(nodes) > 1:  # join two neighbours at random
        i = draw(st.integers(0, len(nodes) - 2))
        nodes[i:i + 2] = [nodes[i] @ nodes[i + 1]]
    return nodes[0]


@settings(max_examples=150, deadline=None)
@given(products())
def test_leaf_chain_is_the_in_order_leaves(x):
    want = in_order(x)
    got = leaf_chain(x)
    assert (got is None) == (want is None)
    if want is not None:
        assert [id(leaf) for leaf in got] == [id(leaf) for leaf, _ in want]
    want = in_order(x, transposes=True)
    got = transposed_leaf_chain(x)
    assert (got is None) == (want is None)
    if want is not None:
        leaves, flips = got
        assert [(id(leaf), flip) for leaf, flip in zip(leaves, flips, strict=True)] == \
            [(id(leaf), flip) for leaf, flip in want]
