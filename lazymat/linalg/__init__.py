"""Transitional: the package is the single module spectrum.py until it is carved into modules."""
import sys

from . import spectrum

sys.modules[__name__] = spectrum
