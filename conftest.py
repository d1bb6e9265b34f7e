"""Root pytest configuration: names available to every docstring Example (doctest)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import wsseg

    doctest_namespace["torch"] = torch
    doctest_namespace["wsseg"] = wsseg
    torch.manual_seed(0)
