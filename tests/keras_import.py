"""Keras 3 for the tests that compare with it: imported with the torch backend (the one installed),
or the test skipped when Keras is missing or was imported with another backend."""
from __future__ import annotations

import os
import sys

import pytest


def import_keras():
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras was imported with another backend than torch")
    return keras
