"""No hidden one-time costs: ``import lazymat`` and the first calls of its operations import
nothing heavy (each check runs in a fresh interpreter, where a first call is a first call).

``torch.broadcast_shapes`` imports torch's symbolic-shape machinery and sympy on first use
(~0.4 s); drawing (matplotlib), graphs (networkx) and model loading (safetensors) are imported
only by the functions that need them."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY_ON_IMPORT = ("sympy", "matplotlib", "networkx", "safetensors", "scipy", "pandas", "transformers")


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports this checkout's lazymat; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_lazymat_imports_nothing_heavy():
    out = _run(f"""
        import sys
        import lazymat
        assert lazymat.__file__.startswith({str(ROOT)!r}), lazymat.__file__
        print(sorted(m for m in {HEAVY_ON_IMPORT!r} if m in sys.modules))
    """)
    assert out.strip() == "[]"


FIRST_CALLS = [
    # the operations of issue 12 item 3, and every route that broadcasts batch shapes
    "lm.linalg.matrix_norm(X); X.norm(); lm.linalg.matrix_norm(X, ord=2)",
    "lm.linalg.svdvals(X); lm.linalg.svd(X); torch.linalg.svd(X)",
    "str(lm.explain(X)); str(lm.explain(X, op='svd')); X.to_dot()",
    "lm.linalg.eigvals(S); lm.linalg.trace(S); lm.linalg.diagonal(S); lm.linalg.matrix_rank(X)",
    "(X + X).to_dense(); X[0, 1:3].to_dense(); X[:, [0, 2]].to_dense(); X @ torch.randn(5, dtype=X.dtype)",
    "lm.linalg.pinv(X).to_dense(); X.truncate(1).to_dense(); lm.factor(X)",
    "from lazymat.compat import FactoredMatrix; F = FactoredMatrix(A, B); (F @ B.mT).AB; F.svd()",
]


def test_first_calls_import_nothing_heavy():
    """One fresh process runs every call in turn and names the call after which a heavy
    module first appears."""
    out = _run(f"""
        import sys
        import torch
        import lazymat as lm
        g = torch.Generator().manual_seed(0)
        A = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
        B = torch.randn(4, 5, generator=g, dtype=torch.float64)
        X = lm.lazy(A) @ lm.lazy(B)
        S = lm.lazy(torch.randn(2, 6, 4, generator=g, dtype=torch.float64))
        S = S @ lm.lazy(torch.randn(4, 6, generator=g, dtype=torch.float64))
        for call in {FIRST_CALLS!r}:
            exec(call)
            heavy = [m for m in ("sympy", "matplotlib", "networkx") if m in sys.modules]
            if heavy:
                print(f"{{call}} imported {{heavy}}")
                break
        else:
            print("none")
    """)
    assert out.strip() == "none"


def test_the_check_sees_a_heavy_import():
    """The probe itself works: torch.broadcast_shapes does import sympy in a fresh process
    (if torch stops doing so, this test says the others no longer prove anything)."""
    out = _run("""
        import sys
        import torch
        torch.broadcast_shapes((2, 1), (1, 3))
        print("sympy" in sys.modules)
    """)
    assert out.strip() == "True"
