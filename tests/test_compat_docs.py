"""The migration guide's notebook cell runs in both libraries and gives the same numbers
(with the model cut from 50257 x 768 x 64 to 300 x 96 x 16 to keep it fast)."""

import pathlib
import re

import torch
from tl_reference import tl

import lazymat.compat

from conftest import assert_close

GUIDE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "migrating-from-transformer-lens.md"


def _run_cell(names: dict) -> dict:
    cell = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)[0]
    body = "\n".join(line for line in cell.splitlines() if not line.startswith(("import", "from")))
    namespace = {"torch": torch, **names}
    torch.manual_seed(0)
    for big, small in (("50257", "300"), ("768", "96"), ("64", "16")):
        body = body.replace(big, small)
    exec(compile(body, str(GUIDE), "exec"), namespace)  # noqa: S102 - our own guide
    return namespace


def test_the_migration_cell_runs_on_lazymat_and_matches_dense_torch():
    ns = _run_cell({"FactoredMatrix": lazymat.compat.FactoredMatrix,
                    "composition_scores": lazymat.compat.composition_scores})
    assert ns["full_OV"].shape == (12, 12, 300, 300) and ns["copying"].shape == (12, 12)
    for layer, head in ((0, 0), (11, 5)):  # two heads' dense 300 x 300 circuits
        W_V, W_O = ns["W_V"][layer, head].double(), ns["W_O"][layer, head].double()
        eigs = torch.linalg.eigvals(ns["W_E"].double() @ W_V @ W_O @ ns["W_U"].double())
        expected = (eigs.sum(-1) / eigs.abs().sum(-1)).real
        assert abs(ns["copying"][layer, head].item() - expected.item()) < 1e-4
    U, S, V = ns["U"], ns["S"], ns["V"]
    assert_close(U @ S.diag() @ V.T, ns["W_V"][0, 4] @ ns["W_O"][0, 4], rtol=1e-4)


def test_the_migration_cell_gives_transformer_lens_numbers():
    TL = tl()
    ours = _run_cell({"FactoredMatrix": lazymat.compat.FactoredMatrix,
                      "composition_scores": lazymat.compat.composition_scores})
    theirs = _run_cell({"FactoredMatrix": TL.FactoredMatrix, "composition_scores": TL.composition_scores})
    assert_close(ours["copying"], theirs["copying"], rtol=1e-4)
    assert_close(ours["k_comp"], theirs["k_comp"], rtol=1e-4)
    assert_close(ours["S"], theirs["S"], rtol=1e-4)
