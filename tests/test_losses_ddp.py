"""Two gloo processes give the loss and (summed) gradients of one process on the global batch.

Run as a script, this file is the worker of one rank.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradharmony.losses import local_rows, mil_nce, nce

SIZES = (3, 2)  # ranks hold different numbers of triplets
K, D_IN, D = 3, 5, 4


def _problem():
    g = torch.Generator().manual_seed(1)
    n = sum(SIZES)
    lin_v, lin_a, lin_t = (torch.nn.Linear(D_IN, D) for _ in range(3))
    for lin in (lin_v, lin_a, lin_t):
        with torch.no_grad():
            lin.weight.copy_(torch.randn(D, D_IN, generator=g))
            lin.bias.copy_(torch.randn(D, generator=g))
    data = {
        "v": torch.randn(n, D_IN, generator=g),
        "a": torch.randn(n, D_IN, generator=g),
        "t": torch.randn(n, K, D_IN, generator=g),
        "cand": torch.rand(n, K, generator=g) > 0.3,
        "samp": torch.tensor([True, False, True, True, True]),
    }
    return (lin_v, lin_a, lin_t), data


def _loss(mods, data, rows):
    lin_v, lin_a, lin_t = mods
    v = lin_v(data["v"][rows])
    l_va = nce(v, lin_a(data["a"][rows]))
    l_vt = mil_nce(v, lin_t(data["t"][rows]), candidate_mask=data["cand"][rows],
                   sample_mask=data["samp"][rows])
    per = mil_nce(v, lin_t(data["t"][rows]), candidate_mask=data["cand"][rows],
                  sample_mask=data["samp"][rows], reduction="none")
    return l_va + l_vt, per


def _grads(mods):
    return torch.cat([p.grad.flatten() for m in mods for p in m.parameters()])


def _worker(rank, world, store, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mods, data = _problem()
    start = sum(SIZES[:rank])
    rows = slice(start, start + SIZES[rank])
    loss, per = _loss(mods, data, rows)
    loss.backward()
    mine = local_rows(SIZES[rank])
    torch.save({"loss": loss.detach(), "per": per.detach(), "grad": _grads(mods),
                "rows": (mine.start, mine.stop)}, out)
    dist.destroy_process_group()


@pytest.mark.ddp
def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path):
    store = tmp_path / "store"
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    procs = [subprocess.Popen([sys.executable, __file__, str(r), "2", str(store), str(outs[r])])
             for r in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    res = [torch.load(o) for o in outs]

    mods, data = _problem()
    loss, per = _loss(mods, data, slice(None))
    loss.backward()
    want = _grads(mods)
    for r in res:
        torch.testing.assert_close(r["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["per"], per.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res[0]["grad"] + res[1]["grad"], want, rtol=1e-4, atol=1e-5)
    # each rank alone does NOT hold the full gradient: the sum is what is true
    assert not torch.allclose(res[0]["grad"], want, rtol=1e-3, atol=1e-4)
    assert [r["rows"] for r in res] == [(0, 3), (3, 5)]


if __name__ == "__main__":
    torch.set_num_threads(1)
    _worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
