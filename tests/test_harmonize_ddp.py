"""Two gloo processes give the same p.grad as one process on the same global batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.test_harmonize_helpers import DDP_CASES, TinyTriModal, ddp_worker, make_batch, run_cases

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_two_gloo_ranks_equal_one_process(tmp_path):
    path = str(tmp_path / "grads")
    mp.spawn(ddp_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    torch.manual_seed(0)
    single = run_cases(TinyTriModal(), make_batch(b=4))
    ranks = [torch.load(f"{path}.{r}") for r in range(2)]
    for i, case in enumerate(DDP_CASES):
        expected_grad, expected_cos = single[i]
        for r in range(2):
            grad, cos = ranks[r][i]
            torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6,
                                       msg=f"{case} rank {r}")  # fmt: skip
        if case[1] == "batch":
            torch.testing.assert_close(ranks[0][i][1], expected_cos, rtol=1e-5, atol=1e-6)
        else:  # each rank reports its own groups, in rank order
            got = torch.cat([ranks[0][i][1], ranks[1][i][1]])
            torch.testing.assert_close(got, expected_cos, rtol=1e-5, atol=1e-6)
