import sys
import types

import pytest
import torch

# The original minGPT imports `transformers` for a helper it never uses here; a stub keeps the oracle importable.
sys.modules.setdefault("transformers", types.ModuleType("transformers"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
