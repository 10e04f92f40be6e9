"""The Harmonizer on models built from open_clip, timm and transformers configs.

Random weights, tiny widths, no downloads; every parameter trainable; each model called as
its library documents. Per-group cosines, norms and the gr/both updates against the
brute-force oracle at sample, 4 and batch granularity, and the baseline update against one
plain backward of the summed losses (``check=True`` raising nothing). The libraries are test
dependencies (the ``libs`` extra); without them these tests are skipped, so run them with
``GRADHARMONY_REQUIRE_LIBS=1 pytest tests/test_harmonize_libraries.py``, which fails instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.harmonize_oracle import check_model
from tests.library_models import MODELS, B

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list(MODELS))
def test_library_model_matches_the_oracle(name):
    torch.manual_seed(0)
    model, run, losses = MODELS[name]()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert not frozen, frozen
    check_model(model, run, losses, batch=B, granularities=("sample", 4, "batch"),
                methods=("gr", "both"), check=True)  # fmt: skip


def test_the_documented_open_clip_example_runs():
    from tests.library_models import import_library

    import_library("open_clip")
    doc = (Path(__file__).parent.parent / "docs" / "harmonize.md").read_text()
    section = doc[doc.index("## Use it on open_clip"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", 10)]
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "docs/harmonize.md", "exec"), scope)
    assert scope["stats"].cos.shape == (8,)
    assert all(p.grad is None for p in scope["model"].parameters())  # stepped, then zeroed
