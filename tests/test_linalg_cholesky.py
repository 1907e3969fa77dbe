"""The linalg and spectral-edge suites again with the QR route forced to shifted CholeskyQR
(``lm.config(qr="cholesky")``): singular values spanning 1e-12..1, rank-deficient stacks,
cancelling sums, empty, complex and non-finite inputs must give the same answers as with
Householder. ``test_qr_routes`` checks that the Cholesky route really ran."""

import pytest
import test_linalg
import test_spectral_edges

import lazymat as lm


@pytest.fixture(autouse=True)
def cholesky_route():
    with lm.config(qr="cholesky"):
        yield


# collect every test of both modules here too, under the fixture above
for _module in (test_linalg, test_spectral_edges):
    for _name in dir(_module):
        if _name.startswith("test_"):
            globals()[_name] = getattr(_module, _name)
