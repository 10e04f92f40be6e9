"""Scoring that measures what training sees: batch orders, scoped and embedding-level cosines,
per-kind AUROCs, the cluster bootstrap, has_audio masking; each against an independent oracle."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gradharmony.data.text import TextTokenizer
from gradharmony.data.writer import write_shards
from gradharmony.errors import InputError
from gradharmony.evaluate.auroc import auroc, bootstrap_auroc, cluster_bootstrap_auroc
from gradharmony.evaluate.cli import main_score
from gradharmony.evaluate.gradients import (
    embedding_cosines,
    reached_parameters,
    scope_parameters,
    scoped_cosines,
)
from gradharmony.evaluate.order import batch_order, training_order
from gradharmony.evaluate.scoring import detection_aurocs
from gradharmony.losses import mil_nce, nce
from gradharmony.models import create_model
from gradharmony.train.loop import per_triplet_losses
from tests.test_evaluate_cli import DATA, MODEL, _clip

EMB = ("video_va", "audio_va", "video_vt", "text_vt")


# -- batch orders ------------------------------------------------------------------------------
def test_orders_partition_the_clips_and_compose_batches_as_named():
    videos = [f"v{i // 4}" for i in range(40)]  # shard order: 10 videos of 4 clips
    shards = [i // 8 for i in range(40)]
    for order in ("shard", "shuffled", "stream", "one-per-video"):
        b = batch_order(40, 8, order, seed=3, shards=shards, videos=videos, shuffle_buffer=4)
        assert sorted(np.concatenate(b).tolist()) == list(range(40)), order
    assert [x.tolist() for x in batch_order(40, 8, "shard")][0] == list(range(8))
    for b in batch_order(40, 8, "one-per-video", seed=1, videos=videos):
        assert len({videos[i] for i in b}) == len(b)
    # stream without a buffer: whole shards, in a permuted order
    b = np.concatenate(batch_order(40, 8, "stream", seed=2, shards=shards, shuffle_buffer=1))
    runs = [shards[i] for i in b[::8]]
    assert sorted(runs) == list(range(5)) and runs != list(range(5))
    assert all(len({shards[i] for i in b[s:s + 8]}) == 1 for s in range(0, 40, 8))
    # shuffled is a seeded permutation: same seed, same batches
    a1, a2 = batch_order(40, 8, "shuffled", seed=5), batch_order(40, 8, "shuffled", seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a1, a2))
    assert training_order({"data": {"cache_dir": "c"}}) == "shuffled"
    assert training_order({"data": {"cache_dir": None}}) == "stream"
    with pytest.raises(ValueError, match="--order: unknown 'video'"):
        batch_order(4, 2, "video")


# -- gradients ---------------------------------------------------------------------------------
def _model_and_batch(B=5, seed=0):
    torch.manual_seed(seed)
    model = create_model("tiny", modality_agnostic=True, **MODEL).eval().double()
    g = torch.Generator().manual_seed(seed)
    batch = {"video": torch.rand(B, 4, 32, 32, 3, generator=g, dtype=torch.float64),
             "audio": torch.rand(B, 8000, generator=g, dtype=torch.float64) - 0.5,
             "text": torch.randint(1, 16, (B, 2, 6), generator=g),
             "text_mask": torch.ones(B, 2, 6, dtype=torch.bool),
             "candidate_mask": torch.tensor([[True, i % 2 == 0] for i in range(B)]),
             "has_text": torch.ones(B, dtype=torch.bool),
             "has_audio": torch.tensor([i != 1 for i in range(B)])}
    return model, batch


def _brute_force_cos(model, batch, names, i):
    """Own-pass gradient of triplet i: the batch loss with every other row detached."""
    out = model(batch)
    rows = torch.arange(out["video_va"].shape[0])
    z = {e: torch.where((rows == i).reshape(-1, *[1] * (out[e].dim() - 1)), out[e],
                        out[e].detach()) for e in EMB}
    losses, _ = per_triplet_losses(z, batch, 0.07)
    params = [dict(model.named_parameters())[n] for n in names]
    flat = []
    for name in ("va", "vt"):
        g = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
        flat.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                               for x, p in zip(g, params)]))
    a, b = flat
    if a.norm() == 0 or b.norm() == 0:
        return 0.0
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("scope", ["all", "shared", "backbone", "head.vid_to_hid"])
def test_scoped_cosines_equal_brute_force_per_triplet_gradients(scope):
    model, batch = _model_and_batch()
    out = model(batch)
    losses, _ = per_triplet_losses(out, batch, 0.07)
    reached = reached_parameters(model, losses)
    names = scope_parameters(model, scope, reached)
    got = scoped_cosines(model, batch, out, losses, names)
    want = [_brute_force_cos(model, batch, names, i) for i in range(5)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)
    assert got[1] == 0.0  # no audio track: L_va does not reach triplet 1


def test_shared_scope_is_what_both_losses_reach_and_excludes_single_loss_parameters():
    model, batch = _model_and_batch()
    losses, _ = per_triplet_losses(model(batch), batch, 0.07)
    shared = set(scope_parameters(model, "shared", reached_parameters(model, losses)))
    names = {n for n, _ in model.named_parameters()}
    assert any(n.startswith("audio_tokenizer") for n in names - shared)
    assert any(n.startswith("text_tokenizer") for n in names - shared)
    assert any(n.startswith("backbone") for n in shared)
    with pytest.raises(ValueError, match="--scope 'nosuch' matches no trainable parameter"):
        scope_parameters(model, "nosuch")


def test_scope_all_equals_the_harmonizer_cosine():
    from gradharmony.harmonize import Harmonizer

    model, batch = _model_and_batch()
    harm = Harmonizer(model, method="baseline", granularity="sample", total_steps=1)
    out = model(batch)
    losses, _ = per_triplet_losses(out, batch, 0.07)
    cos_h = harm.backward(losses, step=0, batch_size=5).cos.double()
    harm.remove()
    model.zero_grad(set_to_none=True)
    out = model(batch)
    losses, _ = per_triplet_losses(out, batch, 0.07)
    got = scoped_cosines(model, batch, out, losses, scope_parameters(model, "all"))
    np.testing.assert_allclose(got.numpy(), cos_h.numpy(), atol=1e-6)


def test_scoped_cosines_refuse_a_model_that_mixes_triplets():
    model, batch = _model_and_batch()
    out = model(batch)
    losses, _ = per_triplet_losses(out, batch, 0.07)
    fake = {**out, "video_va": out["video_va"] + out["video_va"].mean(0, keepdim=True)}
    with pytest.raises(RuntimeError, match="mixes triplets"):
        scoped_cosines(model, batch, fake, losses, scope_parameters(model, "backbone"))


def test_embedding_cosine_matches_brute_force_autograd_per_triplet():
    model, batch = _model_and_batch(B=4)
    out = model(batch)
    losses, _ = per_triplet_losses(out, batch, 0.07)
    got = embedding_cosines(out, losses).numpy()
    # brute force: for each triplet a fresh leaf for its video feature alone, the heads and
    # the losses recomputed from it, everything else constant
    v0 = out["video_feat"].detach()
    rest = {e: out[e].detach() for e in ("audio_va", "text_vt")}
    for i in range(4):
        leaf = v0[i].clone().requires_grad_(True)
        v = torch.cat([v0[:i], leaf[None], v0[i + 1:]])
        va, vt = model.head.video(v)
        z = {"video_va": torch.nn.functional.normalize(va, dim=-1),
             "video_vt": torch.nn.functional.normalize(vt, dim=-1), **rest}
        ls = per_triplet_losses(z, batch, 0.07)[0]
        ga = torch.autograd.grad(ls["va"], leaf, retain_graph=True)[0]
        gt = torch.autograd.grad(ls["vt"], leaf)[0]
        want = float(ga @ gt / (ga.norm() * gt.norm())) if ga.norm() > 0 else 0.0
        assert got[i] == pytest.approx(want, abs=1e-6)
    assert got[1] == 0.0  # triplet 1 has no audio: L_va does not reach it


# -- has_audio masking ------------------------------------------------------------------------
def test_has_audio_masks_l_va_like_dropping_the_clip():
    torch.manual_seed(0)
    zv, za = torch.randn(6, 4), torch.randn(6, 4)
    zt = torch.randn(6, 2, 4)
    has_audio = torch.tensor([True, False, True, True, False, True])
    batch = {"has_audio": has_audio, "has_text": torch.ones(6, dtype=torch.bool),
             "candidate_mask": torch.ones(6, 2, dtype=torch.bool)}
    losses, per = per_triplet_losses({"video_va": zv, "audio_va": za, "video_vt": zv,
                                      "text_vt": zt}, batch, 0.1)
    keep = has_audio.nonzero().flatten()
    assert losses["va"].item() == pytest.approx(nce(zv[keep], za[keep], 0.1).item(), rel=1e-6)
    assert per["va"][~has_audio].abs().max() == 0
    assert losses["vt"].item() == pytest.approx(mil_nce(zv, zt, 0.1).item(), rel=1e-6)


# -- AUROC per kind and the cluster bootstrap -------------------------------------------------
def test_cluster_bootstrap_widens_the_interval_of_duplicated_clusters():
    rng = np.random.default_rng(0)
    n, m = 60, 8
    y = np.arange(n) % 2 == 0
    s = rng.normal(size=n) + 0.8 * y
    base = bootstrap_auroc(s, y, n_boot=600, seed=1)
    # every clip copied m times into its own cluster: no new information
    sd, yd, cd = np.repeat(s, m), np.repeat(y, m), np.repeat(np.arange(n), m)
    iid = bootstrap_auroc(sd, yd, n_boot=600, seed=1)
    clu = cluster_bootstrap_auroc(sd, yd, cd, n_boot=600, seed=1)
    w = {k: r["high"] - r["low"] for k, r in (("base", base), ("iid", iid), ("clu", clu))}
    assert clu["auroc"] == iid["auroc"] == pytest.approx(base["auroc"])
    assert w["iid"] < 0.6 * w["base"]  # the i.i.d. bootstrap believes in 8x the data
    assert w["clu"] == pytest.approx(w["base"], rel=0.2)
    # one item per cluster: the same draws as the i.i.d. bootstrap
    one = cluster_bootstrap_auroc(s, y, np.arange(n), n_boot=200, seed=4)
    assert one["low"] == bootstrap_auroc(s, y, n_boot=200, seed=4)["low"]


def test_detection_aurocs_per_kind_against_the_aligned_triplets():
    rng = np.random.default_rng(0)
    kinds = ["aligned"] * 30 + ["off_topic"] * 10 + ["shifted"] * 10
    rows = [{"cos": float(rng.normal() - (k == "off_topic")), "loss": float(rng.normal()),
             "text_aligned": k == "aligned", "audio_aligned": True, "text_noise": k,
             "video": f"v{i // 3}", "batch": i // 8, "key": str(i)} for i, k in enumerate(kinds)]
    out = detection_aurocs(rows, n_boot=100, cluster="video")
    assert set(out) >= {"text_misaligned", "text_misaligned:off_topic",
                        "text_misaligned:shifted"}
    sub = [r for r in rows if r["text_noise"] in ("aligned", "off_topic")]
    want = auroc([-r["cos"] for r in sub], [not r["text_aligned"] for r in sub])
    assert out["text_misaligned:off_topic"]["cos"]["auroc"] == pytest.approx(want)
    assert out["text_misaligned:off_topic"]["cos"]["n"] == 40
    assert out["text_misaligned"]["cos"]["clusters"] == 17
    assert set(detection_aurocs(rows, n_boot=20, kinds=["shifted"])) >= {
        "text_misaligned:shifted"}
    assert "text_misaligned:off_topic" not in detection_aurocs(rows, n_boot=20,
                                                               kinds=["shifted"])
    with pytest.raises(ValueError, match="--kinds: \\['music'\\] not found"):
        detection_aurocs(rows, n_boot=20, kinds=["music"])
    with pytest.raises(ValueError, match="--cluster: unknown"):
        detection_aurocs(rows, cluster="shard")


# -- the CLI on a tiny run -------------------------------------------------------------------
@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue"]
    samples = []
    for i in range(16):
        lab, video = i % 3, f"vid{i // 4}"
        kind = ["aligned", "aligned", "off_topic", "same_object_shift"][i % 4]
        mp4, _, _ = _clip(lab, rng)
        word = words[lab] if kind != "off_topic" else words[(lab + 1) % 3]
        samples.append({"__key__": f"c{i:03d}", "mp4": mp4, "txt": f"a {word} square",
                        "json": {"label": lab, "video_id": video, "text_noise": kind,
                                 "text_aligned": kind == "aligned", "audio_aligned": i % 5 != 0,
                                 "audio_noise": "aligned" if i % 5 else "music",
                                 "neighbors": ["a square", "a red square"]}})
    write_shards(samples, root / "data", prefix="d", max_count=4)
    plain = [{"__key__": f"p{i}", "mp4": _clip(0, rng)[0], "txt": "a red square",
              "json": {"video_id": "p"}} for i in range(4)]
    write_shards(plain, root / "plain", prefix="p")
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({
        "method": "gr", "seed": 0, "batch_size": 4, "granularity": "sample",
        "model": {"preset": "tiny", "modality_agnostic": True, "temperature": 0.07,
                  "kwargs": MODEL}, "data": {**DATA, "cache_dir": "somewhere"}}),
        run / "config.yaml")
    TextTokenizer.from_texts(["a red green blue square"]).save(run / "vocab.json")
    torch.manual_seed(0)
    model = create_model("tiny", modality_agnostic=True, **MODEL)
    torch.save({"step": 5, "model": model.state_dict()}, run / "checkpoints" / "last.pt")
    return root


def _rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_score_orders_scopes_k_and_kinds(scored, capsys):
    run, data = str(scored / "run"), str(scored / "data")
    before = torch.load(scored / "run" / "checkpoints" / "last.pt")["model"]
    out = scored / "default.jsonl"
    assert main_score(["--run", run, "--data", data, "--out", str(out), "--quiet",
                       "--n-boot", "30", "--examples", "0"]) == 0
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["order"] == "shuffled" and summary["order_default"]  # the run has a cache
    rows = _rows(out)
    assert sorted(r["key"] for r in rows) == [f"c{i:03d}" for i in range(16)]
    assert [r["key"] for r in rows] != sorted(r["key"] for r in rows)
    assert all(-1 <= r["cos_emb"] <= 1 for r in rows)
    assert "text_misaligned:off_topic" in summary["auroc"]
    assert "audio_misaligned:music" in summary["auroc"]
    assert summary["auroc"]["text_misaligned"]["cos"]["clusters"] == 4

    shard = scored / "shard.jsonl"
    main_score(["--run", run, "--data", data, "--out", str(shard), "--quiet", "--order",
                "shard", "--n-boot", "20", "--examples", "0", "--k", "1"])
    s = json.loads(shard.with_suffix(".summary.json").read_text())
    assert s["same_video_pairs_per_batch"] == 6.0 and s["k"] == 1  # 4 clips of one video
    opv = scored / "opv.jsonl"
    main_score(["--run", run, "--data", data, "--out", str(opv), "--quiet", "--order",
                "one-per-video", "--n-boot", "20", "--examples", "0", "--scope", "shared"])
    s = json.loads(opv.with_suffix(".summary.json").read_text())
    assert s["same_video_pairs_per_batch"] == 0.0 and s["scope"] == "shared"
    # the same triplets in the same batches: scope all (Harmonizer) vs a prefix give other cos
    a, b = scored / "a.jsonl", scored / "b.jsonl"
    for path, scope in ((a, "all"), (b, "backbone")):
        main_score(["--run", run, "--data", data, "--out", str(path), "--quiet", "--order",
                    "shard", "--n-boot", "20", "--examples", "0", "--scope", scope])
    ra, rb = _rows(a), _rows(b)
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert [r["cos"] for r in ra] != [r["cos"] for r in rb]
    after = torch.load(scored / "run" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    capsys.readouterr()


def test_scoring_never_changes_the_weights_in_memory(scored):
    from gradharmony.evaluate.clips import RawClips
    from gradharmony.evaluate.run import load_run
    from gradharmony.evaluate.scoring import score_clips

    run = load_run(scored / "run")
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    clips = RawClips(scored / "data", limit=8)
    for scope in ("all", "shared"):
        score_clips(run.model, clips, run.tokenizer, 4, 2, run.text_len, progress=False,
                    order="shuffled", scope=scope, spec=run.spec)
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert all(p.grad is None for p in run.model.parameters())


def test_score_bad_options_are_clear_errors(scored):
    run, data = str(scored / "run"), str(scored / "data")
    base = ["--run", run, "--data", data, "--quiet", "--out", str(scored / "bad.jsonl"),
            "--examples", "0", "--n-boot", "10"]
    with pytest.raises(SystemExit):  # argparse choices: one line, exit 2
        main_score([*base, "--order", "random"])
    with pytest.raises(InputError, match="--scope 'nosuch' matches no trainable parameter"):
        main_score([*base, "--scope", "nosuch"])  # an input error: one line from the CLI
    assert not (scored / "bad.jsonl").exists()
    with pytest.raises(ValueError, match="--kinds: \\['nosuch'\\] not found"):
        main_score([*base, "--kinds", "nosuch"])
    with pytest.raises(SystemExit):
        main_score([*base, "--k", "0"])
    with pytest.raises(ValueError, match="--kinds: the data at .* holds no ground-truth flags"):
        main_score([*base[:2], "--data", str(scored / "plain"), *base[4:], "--kinds",
                    "off_topic"])
