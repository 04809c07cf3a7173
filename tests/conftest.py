import sys
import types

import pytest
import torch

# The original minGPT imports `top_k_top_p_filtering` from `transformers` at import time, for sampling the oracle
# tests never do (they compare greedy decoding); a stub keeps the oracle importable without that package.
_transformers = sys.modules.setdefault("transformers", types.ModuleType("transformers"))


def _not_in_the_oracle(*args, **kwargs):
    raise NotImplementedError("stub: transformers.top_k_top_p_filtering is not part of the oracle")


if not hasattr(_transformers, "top_k_top_p_filtering"):
    _transformers.top_k_top_p_filtering = _not_in_the_oracle


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """For tiny models: per-operation overhead dominates, and on a shared 2-core machine a second thread only
    spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def class_model(tmp_path_factory):
    """A saved micro class-conditional transformer (``test_transformer.CLASS``), the same weights in every module."""
    from test_transformer import CLASS, make_model

    path = tmp_path_factory.mktemp("models") / "class"
    torch.manual_seed(0)
    make_model(CLASS).save(path)
    return path
