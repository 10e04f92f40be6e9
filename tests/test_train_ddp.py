"""Two gloo processes on CPU reach the parameters of one process on the same global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradharmony.train.config import load_config
from gradharmony.train.loop import pretrain
from tests.test_train_standin import STANDIN_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

CASES = {"both-sample": ["method=both", "granularity=sample", "gamma0=-0.2", "gamma_end=0.1"],
         "gr-batch": ["method=gr", "granularity=batch"]}
COMMON = ["steps=4", "batch_size=8", "ckpt_every=4", "log_every=2"]

DRIVER = """
import sys
from gradharmony.train.config import load_config
from gradharmony.train.distributed import teardown
from gradharmony.train.loop import pretrain
for name, overrides in eval(sys.argv[1]).items():
    pretrain(load_config(overrides=[*overrides, f"name={name}"]), progress=False)
teardown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_two_gloo_ranks_match_one_process(tmp_path):
    runs = {name: [*STANDIN_OVERRIDES, *COMMON, *extra, f"run_dir={tmp_path / 'ddp'}"]
            for name, extra in CASES.items()}
    path = os.pathsep.join(filter(None, [str(ROOT), str(SRC), os.environ.get("PYTHONPATH")]))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, repr(runs)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for name, extra in CASES.items():  # the single-process runs meanwhile
        pretrain(load_config(overrides=[*STANDIN_OVERRIDES, *COMMON, *extra, f"name={name}",
                                         f"run_dir={tmp_path / 'one'}"]), progress=False)
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()[-3000:]

    for name in CASES:
        one = torch.load(tmp_path / "one" / name / "checkpoints" / "last.pt", weights_only=False)
        two = torch.load(tmp_path / "ddp" / name / "checkpoints" / "last.pt", weights_only=False)
        assert one["step"] == two["step"] == 4
        assert len(two["rng"]) == 2
        for key, p in one["model"].items():
            torch.testing.assert_close(two["model"][key], p, rtol=1e-4, atol=1e-5,
                                       msg=f"{name}: {key}")
        moved = sum(float(v.abs().sum()) for v in one["optimizer"]["state"][0].values()
                    if torch.is_tensor(v) and v.dim() > 0)
        assert moved > 0  # the runs really trained
