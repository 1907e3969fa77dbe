"""Linear algebra read off the smallest core (``torch.linalg`` names and conventions).

With ``X = L @ R`` from :func:`lazymat.core.factor` (``L: (..., m, r)``, ``R: (..., r, n)``):

- ``svd``: QR of ``L`` and of ``R^H``, then the SVD of the ``r x r`` core ``R_L R_R^H``.
  A tall leaf at an outer end that a whole batch shares is QR-factorised once instead
  (:func:`lazymat.core.reduced_factors`), when that is cheaper.
  Not the Gram route: forming ``L^H L`` squares the condition number, and the small
  singular values of a float32 circuit come out wrong by orders of magnitude.
- ``eigvals`` of a single product: the nonzero eigenvalues of ``L R`` are those of ``R L``;
  that core is planned as one product, so shared work (``W_U @ W_E`` across heads) is found.
  ``eig``, and ``eigvals`` of a sum: from the nonzero triplets ``X = U S Vh``, the ``k x k``
  core ``S Vh U`` (no noise eigenvalues from cancelling terms, true zero eigenvectors).
- One rule decides which singular values are zero (``_tolerance``): torch's
  ``atol``/``rtol`` rule raised to the core's rounding floor, so that exact cancellation
  (``X - X``) is the zero matrix. ``svd``/``svdvals`` return the nonzero triplets.
- ``trace``/``diagonal``: closed einsum networks (O(m r) once the factors exist), no SVD.
- ``det``/``slogdet``/``inv``/``solve``: read off the structure when the inner width is below
  ``n`` (singular for any leaf values); else one LU per square segment of a product
  (``det(A B C) = det A det B det C``), the product never formed. ``lstsq``: the minimum-norm
  solution ``V S^-1 U^H B`` off the nonzero triplets.
- ``matrix_norm('fro')``: for a product, the cheaper of ``tr((L^H L)(R R^H))`` with each
  half formed once and the closed network ``tr(X^H X)`` (no SVD); for a form containing a sum,
  the core's singular values (a Gram route would leave sqrt(eps) noise where terms cancel).

A fresh product of data leaves (``lazy(A) @ lazy(B) @ lazy(C)``, built for one call; leaves
read transposed, ``lazy(B).mT``, too) runs by
its structure's compiled call (``_compiled``): the route and rules decided once per structure,
then only the product, one LAPACK call and a threshold read on the host (for a batch, every
member's values read back at once and thresholded member by member). One matrix on the factored
route (a circuit ``W_E @ W_Q @ W_K^T @ W_E^T``, ``W_E`` read at both ends) compiles that route:
its sides' GEMMs and QRs, one read of the small factors with the QRs' certificates, the core's
LAPACK call on the host and the vectors rotated back; so does the Frobenius norm's split route
(``tr((L^H L)(R R^H))``). A small product narrower
than both its dims may be reduced first (``small_reduction``): one Householder QR of its longer
side, then LAPACK on the ``m x r`` matrix of the same singular values.

Results come back on the expression's device and dtype (complex for eigenvalues). 8- and
16-bit inputs are decomposed in float32. Small cores of an expression on a GPU are decomposed
wherever that was measured fastest (``CPU_CORE_LIMIT``) and come back. Results are
cached on the expression and recomputed after an in-place change to any leaf tensor.

``lazymat.explain`` costs these routes (standard formulas for the decompositions).

The package's modules, each one idea, imports pointing down the list (``_common`` at the
bottom): ``_common`` (work dtypes, forms, caching, where a small core is decomposed),
``costs`` (the small routes' measured costs and FLOP counts), ``peaks`` (route peaks against
the memory budget), ``small`` (dense and reduced routes of small matrices), ``blocks`` (the
batch in blocks under the budget), ``gradients`` (backward recomputed under the budget),
``calls`` (``budgeted``, ``reads_through_casts``), ``spectrum`` (singular triplets and the
zero rule), ``compiled`` (compiled calls per structure), ``singular`` (svd, svdvals, rank,
pinv, cond, truncate), ``eigen``, ``hermitian``, ``norms`` (trace, diagonal, norms),
``systems`` (det, slogdet, inv, solve, lstsq), ``products`` (multi_dot, matrix_power),
``entries`` (chosen entries of a product, read pair by pair for indexing). The
package exports the public calls (``__all__``); the routes' names and settings are read and set
on the module that holds them (``lazymat.linalg.costs.DENSE_MAX_ELEMENTS``).
"""

# The public calls (``__all__``) and, as before the split, the routes' own names; not their module
# settings (``costs.DENSE_MAX_ELEMENTS``, ``spectrum.HOST_VALUES``): a copy here would take writes
# that the routes never read.
from ._common import CPU_CORE_LIMIT, eig_core
from .blocks import batch_blocks
from .calls import budgeted, reads_through_casts, vmap_error
from .costs import (
    FACTORED_OVER_REDUCED_FLOPS,
    FACTORED_OVERHEAD_FLOPS,
    REDUCED_OVERHEAD_FLOPS,
    SQUARE_OPS,
    reduced_route_flops,
    small_route,
    small_route_flops,
    square_route_flops,
    svd_flops,
)
from .eigen import eig, eigvals
from .hermitian import eigh, eigvalsh
from .norms import (
    check_norm_dtype,
    closed_kept_bytes,
    diagonal,
    fro_candidates,
    fro_route,
    gram_trace_flops,
    matrix_norm,
    norm,
    root_of_squares,
    split_gram_flops,
    trace,
    vector_norm,
)
from .products import matrix_power, multi_dot
from .singular import cond, make_even, matrix_rank, pinv, svd, svdvals, truncate
from .small import dense_is_cheaper, dense_norm_route, small_reduction
from .spectrum import NonFiniteError, SecondDerivativeRefused, reduce_small
from .systems import (
    answer_checked,
    det,
    inv,
    logdet,
    lstsq,
    lu_batch_blocks,
    scaled_segment,
    slogdet,
    solve,
    square_segments,
    structural_rank,
)

__all__ = [
    "NonFiniteError", "cond", "det", "diagonal", "eig", "eigh", "eigvals", "eigvalsh", "inv", "logdet",
    "lstsq", "make_even", "matrix_norm", "matrix_power", "matrix_rank", "multi_dot", "norm", "pinv",
    "slogdet", "solve", "square_segments", "structural_rank", "svd", "svdvals", "trace", "truncate",
    "vector_norm",
]
