"""The training side of reliability: checkpoints never run code, resume never loses or falsifies a run, two processes
never share a run folder, signals and a full disk end in one line, and config files are bounded."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from softmax_lightning.checkpoint import epochs_done
from softmax_lightning.cli import main
from softmax_lightning.runs import RunFolder
from tests.conftest import ROOT, craft_checkpoint, one_error_line, run_dirs, run_train, snapshot, train_args

SHORT = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=10",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=5",
]


def expect_error(capsys, args: list[str], *fragments: str) -> str:
    """Run train.py's main in-process; it must exit 2 with one error line."""
    assert main(args) == 2
    return one_error_line(capsys.readouterr().err, *fragments)


def train_process(root: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "scripts/train.py", *train_args(root, *args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir) -> Path:
    """A short finished run (2 epochs of 10 batches); tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("finished")
    run_train(root, *SHORT)
    return root


@pytest.fixture
def copy(tmp_path, finished) -> Path:
    """A private copy of the finished run's root folder."""
    shutil.copytree(finished, tmp_path / "root")
    return tmp_path / "root"


def last_ckpt(root: Path) -> Path:
    return run_dirs(root)[-1] / "checkpoints" / "last.ckpt"


# ---------------------------------------------------------------------------------------------------- 1. security
def test_a_crafted_checkpoint_never_runs_its_payload(tmp_path, copy, capsys):
    marker = tmp_path / "PWNED"
    crafted = craft_checkpoint(last_ckpt(copy), tmp_path / "crafted.ckpt", marker)  # otherwise a good checkpoint
    out = subprocess.run(
        [sys.executable, "scripts/train.py", *train_args(tmp_path / "new", f"--ckpt_path={crafted}")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and not marker.exists()
    one_error_line(out.stderr, "cannot be loaded safely", str(crafted))
    shutil.copy(crafted, last_ckpt(copy))  # planted as the newest run's last.ckpt, picked by --ckpt_path last
    for sub in ([], ["test"]):
        expect_error(capsys, [*sub, *train_args(copy, "--ckpt_path=last")], "cannot be loaded safely")
        assert not marker.exists()
    torch.load(crafted, weights_only=False)  # the control: an unsafe load does run it
    assert marker.exists()


# ---------------------------------------------------------------------------------------------------- 2. resume
def test_resuming_a_finished_run_changes_nothing(copy, capsys):
    before = snapshot(copy)
    assert main(train_args(copy, *SHORT, "--ckpt_path=last")) == 0
    assert "nothing left to train" in capsys.readouterr().out
    assert snapshot(copy) == before


def test_a_run_killed_after_its_last_checkpoint_is_completed_on_resume(copy):
    run = run_dirs(copy)[-1]
    complete = json.loads((run / "metrics.json").read_text())
    for name in ("metrics.json", "predictions.png", "weights.png", "confusion.png"):  # killed while testing/drawing
        (run / name).unlink()
    m = run_train(copy, *SHORT, "--ckpt_path=last")
    assert m["run_dir"] == str(run) and len(run_dirs(copy)) == 1  # completed in place
    for key in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "epochs",
        "global_step",
        "train_seconds",
        "history",
    ):
        assert m[key] == complete[key], key  # the real run's numbers, not a new run's or a partial set
    assert all((run / f).is_file() for f in ("curves.png", "predictions.png", "weights.png", "confusion.png"))


@pytest.mark.parametrize(
    "change,named",
    [
        (["--model.lr=0.5"], "--model.lr 0.5 (the checkpoint has 0.1)"),
        (["--config=configs/tuned.yaml"], "model.momentum"),
        (["--data.batch_size=64"], "data.batch_size"),
    ],
)
def test_changed_settings_are_refused_and_nothing_is_touched(copy, capsys, change, named):
    before = snapshot(copy)
    expect_error(capsys, train_args(copy, *SHORT, "--ckpt_path=last", *change), named, "start a new run")
    assert snapshot(copy) == before


@pytest.fixture(scope="module")
def own_settings(tmp_path_factory, data_dir) -> Path:
    """A finished run trained with settings other than the defaults."""
    root = tmp_path_factory.mktemp("own")
    run_train(root, *SHORT, "--model.lr=0.3", "--data.batch_size=128", "--seed_everything=4")
    return root


def test_resuming_takes_the_runs_own_settings_unless_typed(tmp_path, own_settings, capsys):
    """``--ckpt_path last`` alone continues any run with what it was trained with (its model and data settings, and
    its config.yaml: 2 epochs asked, so nothing is left); typing the same values is fine; typing others, even the
    defaults, is refused by name."""
    root = tmp_path / "root"
    shutil.copytree(own_settings, root)
    before = snapshot(root)
    assert main(train_args(root, "--ckpt_path=last")) == 0
    assert "nothing left to train" in capsys.readouterr().out and snapshot(root) == before
    expect_error(
        capsys, train_args(root, "--ckpt_path=last", "--model.lr=0.1"), "--model.lr 0.1 (the checkpoint has 0.3)"
    )
    expect_error(capsys, train_args(root, "--ckpt_path=last", "--seed_everything=0"), "--seed_everything 0")
    m = run_train(root, "--ckpt_path=last", "--trainer.max_epochs=3", "--model.lr=0.3")
    assert m["epochs"] == 3 and m["global_step"] == 30 and len(run_dirs(root)) == 1
    ckpt = torch.load(Path(m["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["lr"] == 0.3 and ckpt["datamodule_hyper_parameters"]["batch_size"] == 128
    assert ckpt["datamodule_hyper_parameters"]["seed"] == 4


def test_a_moved_run_folder_keeps_updating_its_own_last_ckpt(tmp_path, finished):
    moved = tmp_path / "moved"
    shutil.move(shutil.copytree(finished, tmp_path / "original"), moved)  # same content, another place
    original = snapshot(finished)
    ckpt = last_ckpt(moved)
    assert main(train_args(tmp_path / "elsewhere", *SHORT, "--trainer.max_epochs=3", f"--ckpt_path={ckpt}")) == 0
    assert json.loads((ckpt.parent.parent / "metrics.json").read_text())["epochs"] == 3  # it continued there
    names = {p.name for p in ckpt.parent.iterdir()}
    assert "last.ckpt" in names and not any(n.startswith("last-v") for n in names)  # no forked last-v1.ckpt
    assert epochs_done(torch.load(ckpt, weights_only=True)) == 3
    assert snapshot(finished) == original  # the folder it was copied from is untouched
    assert not (tmp_path / "elsewhere" / "lightning_logs").exists()


def test_stale_temp_files_of_killed_processes_are_cleaned_up(copy):
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "120"])
    try:
        run = run_dirs(copy)[-1]
        stale = [run / f".metrics.json.tmp{dead.pid}", run / "checkpoints" / f".last.ckpt.tmp{dead.pid}"]
        kept = run / f".curves.png.tmp{alive.pid}"  # a live writer's
        for p in (*stale, kept):
            p.write_bytes(b"half")
        run_train(copy, *SHORT, "--trainer.max_epochs=3", "--ckpt_path=last")
        assert not any(p.exists() for p in stale) and kept.exists()
    finally:
        alive.kill()


# ---------------------------------------------------------------------------------------------------- 3. folders
def test_version_folders_are_taken_exclusively(tmp_path):
    folders = [RunFolder() for _ in range(12)]
    threads = [threading.Thread(target=f.create, args=(tmp_path / "lightning_logs",)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({f.path for f in folders}) == 12  # no two processes share a folder
    assert all((f.path / RunFolder.LOCK).read_text() == str(os.getpid()) for f in folders)
    for f in folders:
        f.release(failed=True)  # a failed start leaves nothing
    assert not list((tmp_path / "lightning_logs").iterdir())


HOLD_LOCK = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()
print("locked", flush=True)
time.sleep(120)
"""


def test_resuming_into_a_folder_a_live_run_is_writing_is_refused(copy, capsys):
    lock = run_dirs(copy)[-1] / RunFolder.LOCK
    live = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "locked"  # another process holds the run folder now
        expect_error(
            capsys,
            train_args(copy, *SHORT, "--trainer.max_epochs=3", "--ckpt_path=last"),
            f"in use by process {live.pid}",
        )
    finally:
        live.kill()
        live.wait()
    assert lock.read_text() == str(live.pid)  # its lock file stays behind, but its process (and lock) is gone
    m = run_train(copy, *SHORT, "--trainer.max_epochs=3", "--ckpt_path=last")
    assert m["epochs"] == 3 and not lock.exists()


# ---------------------------------------------------------------------------------------------------- 4. signals
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_with_its_exit_code_and_how_to_resume(tmp_path, data_dir, signum, code):
    proc = train_process(tmp_path, "--trainer.max_epochs=3", "--trainer.limit_train_batches=120")
    deadline = time.time() + 240
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    while time.time() < deadline and proc.poll() is None and not ckpt.exists():
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    line = one_error_line(err, f"stopped by {'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'}", "--ckpt_path")
    assert torch.load(ckpt, weights_only=True)["state_dict"]["W"].shape == (784, 10)  # resumable
    if signum == signal.SIGTERM:  # the printed command finishes the run
        command = shlex.split(line.split("Resume with: ", 1)[1])  # this interpreter, as printed
        assert command[1:3] == ["scripts/train.py", "--ckpt_path"] and len(command) == 4
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((ckpt.parent.parent / "metrics.json").read_text())["epochs"] == 3


# ---------------------------------------------------------------------------------------------------- 5. disk full
def test_a_full_log_folder_ends_in_one_line(tmp_path, data_dir):
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a private mount namespace here (unshare -rm), so no small disk to fill")
    runs = tmp_path / "runs"
    runs.mkdir()
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "scripts/train.py", *train_args(runs, *SHORT)])
    out = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=160k tmpfs {runs} && exec {cmd}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "mount" in out.stderr and out.returncode != 2:
        pytest.skip(f"cannot mount a small tmpfs here: {out.stderr.strip()[:200]}")
    assert out.returncode == 2
    one_error_line(out.stderr, "no space left on the device")


# ---------------------------------------------------------------------------------------------------- 8. one line
def _checkpoint_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    data = good.read_bytes()
    files = {"zero-byte": b"", "truncated": data[: len(data) // 2], "random bytes": os.urandom(4096)}
    out = {}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        out[name] = (tmp_path / name, "cannot be loaded safely")
    torch.save({"state_dict": {"layer.weight": torch.zeros(3, 3)}}, tmp_path / "other")
    out["another model's"] = (tmp_path / "other", "not a SoftmaxRegression checkpoint")
    torch.save({"state_dict": {"W": torch.zeros(100, 3), "b": torch.zeros(3)}}, tmp_path / "shape")
    out["wrong shape"] = (tmp_path / "shape", "W of shape (100, 3)")
    for part, value in (("W", float("nan")), ("b", float("inf"))):  # a diverged run's: validating it would print
        ckpt = torch.load(good, weights_only=True)  # the accuracy of nan logits, and resuming it would train on
        ckpt["state_dict"][part][0] = value
        torch.save(ckpt, tmp_path / f"{part} {value}")
        out[f"{part} {value}"] = (tmp_path / f"{part} {value}", "non-finite weights")
    return out


def test_bad_checkpoint_files_are_one_line_and_leave_no_run_folder(tmp_path, finished, capsys):
    for name, (path, text) in _checkpoint_files(tmp_path, last_ckpt(finished)).items():
        for sub in ([], ["validate"]):
            expect_error(capsys, [*sub, *train_args(tmp_path / "runs", *SHORT, f"--ckpt_path={path}")], text)
            assert not (tmp_path / "runs" / "lightning_logs").exists() or not run_dirs(tmp_path / "runs"), name


@pytest.mark.parametrize(
    "args,text",
    [
        (["--model.num_inputs=100"], "--model.num_inputs is not an option: the model's sizes come from the data"),
        (["--model.num_outputs=5"], "--model.num_outputs is not an option"),
        (["--model.lr=1e308"], "lr must be a number > 0 and <= 1e+06"),  # (its first update would overflow float32)
        (["--model.init_std=1e30"], "init_std must be a number >= 0 and <= 1e+06"),
        (["--model.lr=1e6", "--model.softmax=naive"], "training diverged"),
        (["--model.init_std=1e6"], "training diverged"),  # finite, but a mean loss about 1e7: beyond DIVERGED
    ],
)
def test_arguments_that_cannot_train_are_one_line_and_leave_no_run_folder(tmp_path, data_dir, capsys, args, text):
    expect_error(capsys, train_args(tmp_path, *SHORT, *args), text)
    assert not run_dirs(tmp_path)


# ---------------------------------------------------------------------------------------------------- 7. configs
BILLION_LAUGHS = (
    "\n".join(
        [
            'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
            *(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)),
            "model: *i",
        ]
    )
    + "\n"
)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, data_dir, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    assert bomb.stat().st_size < 600  # a few hundred bytes that expand to 9**9 values
    t = time.perf_counter()
    expect_error(capsys, train_args(tmp_path, "--config", str(bomb)), "expands to more than")
    assert time.perf_counter() - t < 10


def test_a_fifo_as_config_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    out = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", str(fifo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    one_error_line(out.stderr, "not a regular file", "--config")


@pytest.mark.parametrize("text", ["", "# nothing set here\n"])
def test_an_empty_config_means_no_overrides(tmp_path, data_dir, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    m = run_train(
        tmp_path,
        "--config",
        str(empty),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
    )
    assert m["epochs"] == 1 and "lr: 0.1" in (Path(m["run_dir"]) / "config.yaml").read_text()
