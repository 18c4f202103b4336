"""Nothing lost, nothing silent (issue 12): a run killed at any point resumes to the run it would have
been; every bad input is one line on stderr naming the file or parameter, a non-zero exit, no traceback
and no partial output; one writer per run directory; nothing the workbench did not make is deleted.

Kills are simulated in-process by raising at chosen instants (a fault-injection wrapper around
os.replace, the rename every atomic write of the run directory ends with): what a SIGKILL there
leaves on disk is what the raise leaves, since nothing of the run directory is written on the way out.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from c2gr_core.interface.cli import apply_overrides, main
from c2gr_core.config import preset
from c2gr_core.methods import get_method
from c2gr_core.methods.c2gr import C2GR
from c2gr_core.training.replay import ReplayStore
from c2gr_core.experiment.rundir import LOCK_NAME, lock
from c2gr_core.experiment.runner import run_stream
from tiny_runs import Crash, crash_in_next_round, small_cfg

STREAM = ["synthetic:fundus-a", "synthetic:mms-a"]
REPO = Path(__file__).resolve().parents[2]


class Killed(RuntimeError):
    """The simulated kill."""


def _files(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (the lock file's holder line excluded)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


# ------------------------------------------------------------------ kill at chosen points, resume
def _kill_at_rename(name: str, nth: int = 1, after: bool = False):
    """A replacement for os.replace that dies at the nth rename onto a file called `name`."""
    real, seen = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name != name:
            return real(src, dst, *args, **kwargs)
        seen[0] += 1
        if seen[0] == nth and not after:
            raise Killed(f"before renaming onto {name}")
        real(src, dst, *args, **kwargs)
        if seen[0] == nth and after:
            raise Killed(f"after renaming onto {name}")
    return replace


def _kill_in_round_1_training(mp):
    real = C2GR.fit

    def fit(self, t, data, replay, callbacks=()):
        return real(self, t, data, replay, list(callbacks) + ([crash_in_next_round] if t == 1 else []))
    mp.setattr(C2GR, "fit", fit)


def _kill_in_replay_sampling(mp):
    def put(self, task, images, masks):
        raise Killed("while storing replayed pairs")
    mp.setattr(ReplayStore, "put", put)


KILL_POINTS = {
    "training of round 1": _kill_in_round_1_training,
    "replay sampling of round 1": _kill_in_replay_sampling,
    # keep_checkpoints="last": round 0's checkpoint must survive until round 1 is committed
    "after round 1's checkpoint is saved": lambda mp: mp.setattr(os, "replace", _kill_at_rename("round_01.pt", after=True)),
    "at the metrics.json rename of round 1": lambda mp: mp.setattr(os, "replace", _kill_at_rename("metrics.json", 2)),
    "at the progress.json rename of round 1": lambda mp: mp.setattr(os, "replace", _kill_at_rename("progress.json", 2)),
    "right after round 0's commit": lambda mp: mp.setattr(os, "replace", _kill_at_rename("progress.json", 1, after=True)),
    "right after the last commit": lambda mp: mp.setattr(os, "replace", _kill_at_rename("progress.json", 2, after=True)),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_stream(STREAM, "c2gr", small_cfg(), out, progress=False, keep_checkpoints="last")
    return out


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, reference, point):
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        KILL_POINTS[point](mp)
        with pytest.raises((Killed, Crash)):
            run_stream(STREAM, "c2gr", small_cfg(), out, progress=False, keep_checkpoints="last")
    run_stream(STREAM, "c2gr", small_cfg(), out, progress=False, keep_checkpoints="last", resume=True)
    got, want = _files(out), _files(reference)
    # Wall-clock times and host differ; a cache file's bytes hold its random temporary name (torch.save).
    volatile = lambda k: k in ("timings.json", "environment.json") or k.startswith("cache/")  # noqa: E731
    assert sorted(got) == sorted(want)  # same files: no lost checkpoint, no leftover scratch
    assert {k: v for k, v in got.items() if not volatile(k)} == {k: v for k, v in want.items() if not volatile(k)}
    assert [r["round"] for r in json.loads((out / "timings.json").read_text())] == [0, 1]


# ------------------------------------------------------------------ bad input: one clear error
def _cli_items():
    return ["prompt.encoder=hash", "data.n_train=16", "data.n_val=4", "data.n_test=8", "train.epochs=1",
            "train.batch_size=8"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A stream YAML, a task folder with a bad mask, and a run stopped after round 0 (same config as the CLI's)."""
    root = tmp_path_factory.mktemp("corpus")
    stream = root / "stream.yaml"
    stream.write_text("".join(f"- {e}\n" for e in STREAM))
    bad = root / "bad-task"
    for split in ("train", "val", "test"):
        for d in ("images", "masks"):
            (bad / split / d).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (32, 32), 100).save(bad / split / "images" / f"{i}.png")
            Image.new("L", (32, 32), 7 if (split, i) == ("test", 1) else 1).save(bad / split / "masks" / f"{i}.png")
    (bad / "card.yaml").write_text("name: bad-task\nmodality: CT\nanatomy: liver\nobjective: liver segmentation\n"
                                   "classes: [liver]\n")
    bad_stream = root / "bad-stream.yaml"
    bad_stream.write_text("".join(f"- {e}\n" for e in STREAM) + f"- {bad}\n")
    cut = root / "cut"
    run_stream(str(stream), "finetune", apply_overrides(preset("tiny"), _cli_items()), cut, progress=False,
               max_rounds=1)
    return {"root": root, "stream": stream, "bad_stream": bad_stream, "bad_mask": bad / "test" / "masks" / "1.png",
            "cut": cut}


def _damage(target: str, content):
    def apply(run: Path):
        path = run / target
        if callable(content):
            content(path)
        else:
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return apply


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('C2GR_TEST_MARKER', '/nonexistent/x')}",))


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _malicious(path: Path):  # a checkpoint-shaped file whose unpickling would run a shell command
    torch.save({"modules": _Evil()}, path)


# (extra argv, text the one error line must hold; {out} is the run directory, {bad_mask} the bad file),
# what the run directory is: "new" (must not come into being), or "cut" (a copy of the stopped run,
# damaged by the given function, that must stay byte-identical).
CORPUS = {
    "batch_size 0": (["--set", "train.batch_size=0"], "train.batch_size", "new"),
    "batch_size 2.5": (["--set", "train.batch_size=2.5"], "train.batch_size", "new"),
    "device tpu (--set)": (["--set", "train.device=tpu"], "train.device", "new"),
    "device tpu (--device)": (["--device", "tpu"], "train.device", "new"),
    "seg_lr abc": (["--set", "train.seg_lr=abc"], "train.seg_lr", "new"),
    "lr 0": (["--set", "train.lr=0"], "train.lr", "new"),
    "epochs 0": (["--set", "train.epochs=0"], "train.epochs", "new"),
    "epochs -1": (["--set", "train.epochs=-1"], "train.epochs", "new"),
    "epochs true": (["--set", "train.epochs=true"], "train.epochs", "new"),
    "epochs abc": (["--set", "train.epochs=abc"], "train.epochs", "new"),
    "gen_epochs below epochs": (["--set", "train.gen_epochs=0"], "train.gen_epochs", "new"),
    "replay_per_task 0": (["--set", "train.replay_per_task=0"], "train.replay_per_task", "new"),
    "sampler xyz": (["--set", "diffusion.sampler=xyz"], "diffusion.sampler", "new"),
    "objective xyz": (["--set", "diffusion.objective=xyz"], "diffusion.objective", "new"),
    "relation_norm rows": (["--set", "prompt.relation_norm=rows"], "prompt.relation_norm", "new"),
    "mask_code bits": (["--set", "diffusion.mask_code=bits"], "diffusion.mask_code", "new"),
    "ema_decay 1.5": (["--set", "diffusion.ema_decay=1.5"], "diffusion.ema_decay", "new"),
    "encoder bert": (["--set", "prompt.encoder=bert"], "prompt.encoder", "new"),
    "image_size 30": (["--set", "data.image_size=30"], "data.image_size", "new"),
    "norm_groups vs channels": (["--set", "segmentor.channels=[8,16,30]"], "segmentor.norm_groups", "new"),
    "unknown key": (["--set", "train.epoch=2"], "train.epoch", "new"),
    "unknown section": (["--set", "trian.epochs=2"], "trian", "new"),
    "seed -5": (["--seed", "-5"], "--seed", "new"),
    "seed abc": (["--seed", "abc"], "--seed", "new"),
    "c2gr with rups false": (["--method", "c2gr", "--set", "prompt.rups=false"], "prompt.rups", "new"),
    "c2gr with objective njd": (["--method", "c2gr", "--set", "diffusion.objective=njd"], "diffusion.objective", "new"),
    "c2gr-norups with objective njd": (["--method", "c2gr-norups", "--set", "diffusion.objective=njd"],
                                       "diffusion.objective", "new"),
    "unknown method": (["--method", "nope"], "'nope'", "new"),
    "missing stream file": (["--stream", "{root}/no-such-stream.yaml"], "no-such-stream", "new"),
    "bad task folder at position 3": (["--stream", "{bad_stream}"], "{bad_mask}", "new"),
    "resume a missing folder": (["--resume"], "{out}", "new"),
    "resume: corrupt progress.json": (["--resume"], "progress.json", "cut", _damage("progress.json", "{")),
    "resume: progress.json without a round count": (["--resume"], "progress.json", "cut",
                                                     _damage("progress.json", '{"completed_rounds": "x"}')),
    "resume: corrupt config.json": (["--resume"], "config.json", "cut", _damage("config.json", "[1, 2")),
    "resume: corrupt matrix.csv": (["--resume"], "matrix.csv", "cut", _damage("matrix.csv", "round,x\n")),
    "resume: other lr": (["--resume", "--set", "train.lr=0.5"], "train.lr", "cut", None),
    "resume: other seed": (["--resume", "--seed", "1"], "train.seed", "cut", None),
    "resume: other method": (["--resume", "--method", "joint"], "method", "cut", None),
    "resume: truncated checkpoint": (["--resume"], "round_00.pt", "cut", _damage("checkpoints/round_00.pt", _truncate)),
    "resume: malicious checkpoint": (["--resume"], "round_00.pt", "cut", _damage("checkpoints/round_00.pt", _malicious)),
    "resume: missing checkpoint": (["--resume"], "round_00.pt", "cut",
                                   _damage("checkpoints/round_00.pt", lambda p: p.unlink())),
    "without --resume into a run": ([], "--resume", "cut", None),
}


def _argv(extra: list[str], out: Path, env: dict) -> list[str]:
    argv = ["run", "--stream", str(env["stream"]), "--method", "finetune", "--out", str(out), "--quiet"]
    for item in _cli_items():
        argv += ["--set", item]
    # later flags win (argparse keeps the last --stream/--method; --set applies in order)
    return argv + [a.format(**{k: str(v) for k, v in env.items()}) for a in extra]


@pytest.mark.parametrize("case", list(CORPUS))
def test_bad_input_is_one_line_naming_it_and_leaves_nothing(case, env, tmp_path, capsys, monkeypatch):
    extra, needle, kind, *damage = CORPUS[case]
    monkeypatch.setenv("C2GR_TEST_MARKER", str(tmp_path / "pwned"))
    out = tmp_path / "run"
    if kind == "cut":
        shutil.copytree(env["cut"], out)
        if damage[0] is not None:
            damage[0](out)
    before = _files(out) if out.exists() else None
    rc = main(_argv(extra, out, env))  # a traceback would be an exception escaping main
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0
    assert len(lines) == 1, err
    assert needle.format(out=out, **{k: str(v) for k, v in env.items()}) in lines[0], lines[0]
    assert "Traceback" not in err
    assert (_files(out) if out.exists() else None) == before  # no partial output
    assert not (tmp_path / "pwned").exists()  # the malicious pickle never ran


def test_a_users_folder_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "work").mkdir(parents=True)
    (out / "work" / "notes.txt").write_text("mine")
    argv = ["run", "--stream", "synthetic-downstream-5", "--method", "finetune", "--out", str(out), "--quiet"]
    assert main(argv) == 2
    assert str(out) in capsys.readouterr().err
    assert _files(out) == {"work/notes.txt": hashlib.sha256(b"mine").hexdigest()}


def test_notebook_parameter_of_the_wrong_type(tmp_path, capsys):
    rc = main(["notebook", "05_full_stream", "-p", "n_tasks", "abc", "--runs-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "n_tasks" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_the_real_command_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "c2gr_core", "run", "--stream", "synthetic-paper-20",
                           "--method", "c2gr", "--out", str(tmp_path / "x"), "--set", "train.batch_size=0"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "c2gr run: error: train.batch_size must be an integer >= 1, got 0"], proc.stderr
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ one writer, nothing of the user's deleted
def test_a_second_writer_is_refused_naming_the_holder(env, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(env["cut"], out)
    before = _files(out)
    with lock(out):  # another process's run, as far as the flock is concerned
        assert main(_argv(["--resume"], out, env)) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and str(out) in err
    assert _files(out) == before
    # The holder gone, its lock file stays behind (a killed run's would too): it no longer blocks.
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert main(_argv(["--resume"], out, env)) == 0


def test_a_second_run_into_a_running_one_is_refused_and_user_files_survive(env, tmp_path):
    out = tmp_path / "run"
    second = {}

    def meddle(event, trainer):  # while the first run trains: a second run, and a user's note in work/
        if event == "on_step_end" and not second:
            (out / "work").mkdir(exist_ok=True)
            (out / "work" / "notes.txt").write_text("mine")
            try:
                run_stream(STREAM, "finetune", small_cfg(), out, progress=False)
            except Exception as e:  # noqa: BLE001
                second["error"] = e

    run_stream(STREAM, "finetune", small_cfg(), out, progress=False, callbacks=[meddle])
    assert type(second["error"]).__name__ == "RunDirectoryBusy" and f"pid {os.getpid()}" in str(second["error"])
    assert (out / "work" / "notes.txt").read_text() == "mine"
    assert json.loads((out / "metrics.json").read_text())["complete"]


def test_config_json_records_what_the_method_trained(tmp_path):
    for method, key, value in (("c2gr-norups", ("prompt", "rups"), False), ("c2gr-njd", ("diffusion", "objective"), "njd"),
                               ("cgr", ("prompt", "rups"), False)):
        cfg = get_method(method).resolve_config(small_cfg())
        assert getattr(getattr(cfg, key[0]), key[1]) == value, method
    run_stream(STREAM, "c2gr-norups", small_cfg(), tmp_path / "r", progress=False, max_rounds=1)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["prompt"]["rups"] is False
    caller = small_cfg()
    run_stream(STREAM, "c2gr-norups", caller, tmp_path / "r", progress=False, resume=True)  # the default resolves alike
    assert caller.prompt.rups is True  # the caller's config is not changed
