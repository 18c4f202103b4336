"""Multi-process training (DDP under torchrun): sharding, rank sync, one writer, bf16 autocast."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from c2gr_core.training import distributed
from c2gr_core.config import preset
from c2gr_core.methods.coupled import C2GRModel, PairBatch, coupled_loss
from c2gr_core.diffusion import make_scheduler
from c2gr_core.methods.base import epoch_batches, steps_per_epoch
from c2gr_core.prompting.prompts import encode_tasks
from c2gr_core.prompting.text_encoders import HashEncoder
from c2gr_core.training.trainer import Trainer
from data_catalog.schema import card_from_dict

TORCHRUN = Path(sys.executable).with_name("torchrun")


# ------------------------------------------------------------------------------ sharding
@pytest.mark.parametrize("n,world,bs", [(16, 2, 4), (17, 2, 4), (10, 3, 3), (1, 2, 8), (5, 4, 2)])
def test_epoch_shards_cover_the_task_and_keep_ranks_in_step(n, world, bs):
    # Every rank builds its rng from the same seed, exactly as the methods do from round_seed.
    shards = [[b.tolist() for b in epoch_batches(n, bs, np.random.default_rng(7), rank=r, world=world)]
              for r in range(world)]
    flat = [sorted(i for b in s for i in b) for s in shards]
    seen = [i for f in flat for i in f]
    assert set(seen) == set(range(n))                          # covering
    assert len(seen) == world * -(-n // world)                 # padded to ceil(n / world) per rank
    assert len(seen) - len(set(seen)) == (-n) % world          # only the padding repeats ...
    if n % world == 0:
        assert len(set(seen)) == len(seen)                     # ... so shards are disjoint when world | n
    expected_steps = steps_per_epoch(n, bs, world)
    assert all(len(s) == expected_steps for s in shards)       # no rank waits in an all-reduce
    assert all(len(b) <= bs for s in shards for b in s)


def test_one_process_shard_is_the_plain_permutation():
    got = np.concatenate(list(epoch_batches(11, 4, np.random.default_rng(3))))
    np.testing.assert_array_equal(got, np.random.default_rng(3).permutation(11))
    assert steps_per_epoch(11, 4) == 3 and not distributed.is_distributed()
    assert distributed.rank_generator(rng := np.random.default_rng(0)) is rng


def test_shard_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        distributed.shard(np.arange(4), rank=2, world=2)


# ------------------------------------------------------------------------------ bf16 autocast
def test_bf16_autocast_trains_both_networks_on_cpu():
    cards = [card_from_dict({"name": "t0", "modality": "MR", "anatomy": "heart", "objective": "cardiac segmentation",
                             "classes": ["lv", "myo", "rv"]})]
    emb = encode_tasks(cards, HashEncoder(dim=16))
    cfg = preset("tiny")
    torch.manual_seed(0)
    model = C2GRModel(cfg, c_max=3, emb=emb)
    sched = make_scheduler(cfg.diffusion, "ddpm")
    g = torch.Generator().manual_seed(1)
    b = PairBatch(torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.randint(0, 4, (4, 32, 32), generator=g),
                  torch.zeros(4, dtype=torch.long))

    def losses(amp):
        torch.manual_seed(5)  # same timesteps and noise in both precisions
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return coupled_loss(model, emb, 0, b, None, sched, torch.tensor([3]))

    ref, low = losses(False), losses(True)
    for k in ("seg_cur", "gen_cur"):
        assert low[k].dtype == torch.float32                   # reductions come out in fp32
        assert abs(float(low[k].detach()) - float(ref[k].detach())) < 0.01 * abs(float(ref[k].detach()))

    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model.parameters(), lr=1e-3, amp_bf16=True)
    trainer.fit(lambda batch: coupled_loss(model, emb, 0, batch, None, sched, torch.tensor([3])),
                lambda epoch: [b, b], epochs=1, steps_per_epoch=2)
    assert all(np.isfinite(trainer.history["loss"]))
    moved = {n for (n, p), p0 in zip(model.named_parameters(), before) if not torch.equal(p, p0)}
    assert any(n.startswith("segmentor.") for n in moved) and any(n.startswith("denoiser.") for n in moved)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast never touches the weights


# ------------------------------------------------------------------------------ two gloo ranks
WORKER = textwrap.dedent('''
    """Run by torchrun: one tiny stream per method on this rank, then report what this rank saw."""
    import hashlib, json, os, sys
    from pathlib import Path
    import torch
    from c2gr_core import distributed
    from c2gr_core.config import preset

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    writes = []

    def audit(event, args):
        # Everything this rank creates, renames or deletes inside a run directory, except its scratch.
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for p in paths:
            if not isinstance(p, (str, os.PathLike)):
                continue
            p = os.path.abspath(os.fspath(p))
            for run in ("c2gr", "cgr"):
                root = str(out / run)
                if p.startswith(root) and not (p == f"{root}/work" or p.startswith(f"{root}/work/rank{rank}")):
                    writes.append((event, p))

    sys.addaudithook(audit)
    from c2gr_core.stream import run_stream  # imported after the hook: module imports read, never write

    cfg = preset("tiny")
    cfg.prompt.encoder = "hash"
    cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 16, 4, 8
    cfg.train.epochs, cfg.train.batch_size = 2, 4
    cfg.diffusion.sample_steps = 2
    cfg.train.replay_per_task = 4

    report = {}
    # c2gr: run_stream opens and closes the process group itself (the `torchrun ... c2gr run` path);
    # cgr: the caller owns the group and run_stream must leave it open.
    for method, stream, amp in (("c2gr", ["synthetic:fundus-a", "synthetic:mms-a"], False),
                                ("cgr", ["synthetic:busi"], True)):
        if method == "cgr":
            report["created"] = distributed.init_from_env()
            report["world"] = distributed.world_size()
        cfg.train.amp_bf16 = amp
        losses = []
        cb = lambda event, tr: losses.append(tr.history["loss"][-1]) if event == "on_step_end" else None
        r = run_stream(stream, method, cfg, out / method, progress=False, callbacks=[cb])
        params = torch.cat([p.detach().flatten().float() for p in r.method.modules()["model"].parameters()])
        report[method] = {"params_sha": hashlib.sha256(params.numpy().tobytes()).hexdigest(),
                          "matrix": [[None if v != v else v for v in row] for row in r.matrix.tolist()],
                          "losses": losses, "group_open": distributed.is_distributed()}
    report["writes"] = writes
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    distributed.shutdown(report["created"])
''')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this python")
def test_two_gloo_ranks_stay_in_sync_and_write_the_run_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(TORCHRUN), "--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    assert r0["world"] == r1["world"] == 2 and r0["created"] and r1["created"]
    # c2gr: 2 rounds of one coupled phase; cgr: 1 round of two phases (segmentor, then generator).
    for method, T, phases in (("c2gr", 2, 1), ("cgr", 1, 2)):
        a, b = r0[method], r1[method]
        assert a["group_open"] == b["group_open"] == (method == "cgr")  # closed only by its opener
        assert a["params_sha"] == b["params_sha"]               # DDP kept the replicas identical ...
        assert a["losses"] != b["losses"]                       # ... while the ranks saw different data/noise
        assert len(a["losses"]) == len(b["losses"]) == T * phases * 2 * steps_per_epoch(16, 4, 2)
        assert a["matrix"] == b["matrix"] and np.array(a["matrix"], dtype=float).shape == (T, T)

        run = tmp_path / method
        matrix = np.genfromtxt(run / "matrix.csv", delimiter=",", skip_header=1, usecols=range(1, T + 1))
        np.testing.assert_array_equal(np.nan_to_num(matrix.reshape(T, T), nan=-1),
                                      np.nan_to_num(np.array(a["matrix"], dtype=float), nan=-1))
        assert json.loads((run / "environment.json").read_text())["world_size"] == 2
        assert json.loads((run / "progress.json").read_text())["completed_rounds"] == T
        assert not list(run.rglob("*.tmp*")) and not (run / "work").exists()
        ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert ckpts == [f"round_{t:02d}.pt" for t in range(T)]
    # The audit hook saw rank 1 create, rename or delete nothing in either run directory.
    assert r1["writes"] == []
    assert r0["writes"], "the audit hook must see rank 0's writes, else it proves nothing"
