import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
BUNDLED = ROOT / "models" / "fashion_vit"


@pytest.fixture(scope="session")
def shiftadd():
    import shiftadd as sa

    return sa


@pytest.fixture(scope="session")
def bundled(shiftadd):
    return shiftadd.Model(BUNDLED)


def samples():
    return sorted(str(p) for p in (BUNDLED / "samples").glob("*.png"))
