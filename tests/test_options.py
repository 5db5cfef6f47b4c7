"""Every row of docs/options.md at its boundary: the value at the limit is accepted, the value just beyond is refused
with one ``error:`` line, exit code 2, and nothing left behind.

"Accepted" is shown without training: the check itself (``check_options``, ``check_trainer``, ``check_config_files``,
predict's ``check_options``), the class built directly (``SoftmaxRegression``, ``FashionMNISTDataModule``,
``ChapterFigures``), or ``make_cli`` building model, data module and Trainer (and its run folder, released again).
"Refused" goes through the tool's ``main`` in-process.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

from softmax_lightning import predict
from softmax_lightning.callbacks import MAX_IMAGES, ChapterFigures
from softmax_lightning.checkpoint import read_checkpoint
from softmax_lightning.cli import main, make_cli
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.fashion_mnist import MAX_ITEMS, raw_dir
from softmax_lightning.model import MAX_SCALE, SoftmaxRegression
from softmax_lightning.options import (
    MAX_CONFIG_VALUES,
    MAX_COUNT,
    MAX_SEED,
    check_config_files,
    check_options,
    check_trainer,
    max_cpu_processes,
)
from tests.conftest import ROOT, one_error_line, train_args, write_fake_split

NAME_MAX = 255  # the longest file name Linux file systems take (ext4, tmpfs, btrfs, xfs)


@pytest.fixture
def fake(tmp_path) -> Path:
    """A data_dir with 64 training and 32 test images."""
    d = tmp_path / "fake"
    write_fake_split(raw_dir(d))
    return d


@pytest.fixture
def device_node(tmp_path) -> Path:
    """A character device (``/dev/null``'s numbers) inside ``tmp_path``: never the real ``/dev/null`` as an output."""
    path = tmp_path / "devnull"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        os.mkfifo(path)  # not a regular file either
    return path


def tree(folder: Path) -> dict[str, str]:
    """Everything under ``folder``, by relative path: a file's checksum, or what else it is (a folder too, even
    empty, so that a refusal that leaves an empty folder behind is seen)."""
    found = {}
    for p in folder.rglob("*"):
        mode = os.lstat(p).st_mode
        found[str(p.relative_to(folder))] = (
            "folder"
            if stat.S_ISDIR(mode)
            else f"special {stat.S_IFMT(mode)}"
            if not stat.S_ISREG(mode)
            else hashlib.sha256(p.read_bytes()).hexdigest()
        )
    return found


def refused(capsys, tmp_path: Path, args: list[str], *fragments: str) -> str:
    """``scripts/train.py``'s main refuses ``args``: exit 2, one error line holding ``fragments``, ``tmp_path``
    unchanged (no run folder, no empty folder, nothing written)."""
    before = tree(tmp_path)
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err, *fragments)
    assert tree(tmp_path) == before
    return line


def built(tmp_path: Path, *args: str):
    """``make_cli`` accepts ``args``: model, data module and Trainer are built (nothing trained); its run folder is
    released and removed again."""
    cli = make_cli(train_args(tmp_path / "root", *args))
    cli.run_folder.release(failed=True)
    return cli


def trainer_config(**overrides) -> Namespace:
    """A Trainer configuration as LightningCLI parses it (the project's defaults), with ``overrides``."""
    values = {
        "max_epochs": 10,
        "max_steps": -1,
        "min_epochs": None,
        "min_steps": None,
        "devices": "auto",
        "accelerator": "auto",
        "num_nodes": 1,
        "check_val_every_n_epoch": 1,
        "val_check_interval": None,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": None,
        "reload_dataloaders_every_n_epochs": 0,
        "gradient_clip_val": None,
        "model_registry": None,
        "default_root_dir": None,
    }
    return Namespace(**{**values, **overrides})


# ------------------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize(
    "name,limit,beyond",
    [
        ("lr", MAX_SCALE, MAX_SCALE * (1 + 1e-9)),
        ("lr", 1e-300, 0.0),
        ("lr", 1e-300, -0.5),
        ("init_std", MAX_SCALE, MAX_SCALE * (1 + 1e-9)),
        ("init_std", 0.0, -1e-300),
        ("weight_decay", MAX_SCALE, MAX_SCALE * (1 + 1e-9)),
        ("weight_decay", 0.0, -1e-300),
        ("momentum", 0.0, -1e-300),
        ("momentum", 0.999999, 1.0),
    ],
)
def test_model_number_boundaries(capsys, tmp_path, name, limit, beyond):
    assert SoftmaxRegression(**{name: limit}).hparams[name] == limit
    refused(
        capsys,
        tmp_path,
        train_args(tmp_path / "root", f"--model.{name}={beyond!r}"),
        f"{name} must be",
        f"(--model.{name})",
    )


@pytest.mark.parametrize("name", ["lr", "init_std", "weight_decay", "momentum"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e309", "nan", "inf"])
def test_model_non_finite_numbers_are_refused(capsys, tmp_path, name, value):
    """YAML's ``.nan``/``.inf`` (and ``1e309``, which is inf) reach the model's check; plain ``nan``/``inf`` are
    strings to jsonargparse, refused by its type check. One line either way."""
    line = refused(capsys, tmp_path, train_args(tmp_path / "root", f"--model.{name}={value}"))
    assert f"model.{name}" in line or f"{name} must be" in line, line


@pytest.mark.parametrize(
    "option,good,bad,text",
    [
        ("softmax", "naive", "Naive", "softmax"),
        ("lr_schedule", "cosine", "linear", "lr_schedule"),
    ],
)
def test_model_choices(capsys, tmp_path, option, good, bad, text):
    assert SoftmaxRegression(**{option: good}).hparams[option] == good
    refused(capsys, tmp_path, train_args(tmp_path / "root", f"--model.{option}={bad}"), text)


def test_nesterov_needs_momentum(capsys, tmp_path):
    assert SoftmaxRegression(nesterov=True, momentum=1e-9).hparams.nesterov
    refused(capsys, tmp_path, train_args(tmp_path / "root", "--model.nesterov=true"), "nesterov needs momentum > 0")


@pytest.mark.parametrize("flag", ["--model.num_inputs=784", "--model.num_outputs=10"])
def test_model_sizes_are_not_options(capsys, tmp_path, flag):
    refused(capsys, tmp_path, train_args(tmp_path / "root", flag), "is not an option", "come from the data")


# ------------------------------------------------------------------------------------------------ the data
def test_batch_size_boundaries(capsys, tmp_path):
    assert FashionMNISTDataModule(batch_size=1).hparams.batch_size == 1
    assert FashionMNISTDataModule(batch_size=MAX_ITEMS).hparams.batch_size == MAX_ITEMS
    for beyond in (0, MAX_ITEMS + 1, 2**63, 10**30):
        refused(
            capsys,
            tmp_path,
            train_args(tmp_path / "root", f"--data.batch_size={beyond}"),
            "batch_size must be >= 1 and <= 1000000",
            str(beyond),
            "(--data.batch_size)",
        )


def test_val_size_boundaries(capsys, tmp_path, fake):
    """The limit is the training set's size (64 here): 63 leaves one image to train on, 64 is refused in ``setup``
    after the data is read, and the run folder made for it is removed again."""
    dm = FashionMNISTDataModule(data_dir=str(fake), val_size=63, download=False)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (1, 63)
    args = [
        f"--trainer.default_root_dir={tmp_path / 'root'}",
        f"--data.data_dir={fake}",
        "--data.download=false",
        "--trainer.enable_progress_bar=false",
    ]
    refused(capsys, tmp_path, [*args, "--data.val_size=64"], "val_size must be smaller than the training set (64)")
    refused(capsys, tmp_path, [*args, "--data.val_size=-1"], "val_size must be >= 0")
    refused(capsys, tmp_path, [*args, f"--data.val_size={10**30}"], f"at most {MAX_ITEMS} images")


def test_num_workers_boundaries(capsys, tmp_path):
    top = FashionMNISTDataModule.max_workers
    assert FashionMNISTDataModule(num_workers=top).hparams.num_workers == top  # (no process is started here)
    for beyond in (-1, top + 1):
        refused(
            capsys,
            tmp_path,
            train_args(tmp_path / "root", f"--data.num_workers={beyond}"),
            f"num_workers must be in 0..{top}",
        )


def test_data_dir_boundaries(capsys, tmp_path):
    """Any name the system can look up is accepted (whether the data is there is checked when it is read); an empty
    string or a name longer than the system's limit is refused by name."""
    assert FashionMNISTDataModule(data_dir=str(tmp_path / ("d" * NAME_MAX))).hparams.data_dir
    assert FashionMNISTDataModule(data_dir=str(tmp_path / "données" / "日本語")).hparams.data_dir
    root = tmp_path / "root"
    refused(capsys, tmp_path, [*train_args(root), "--data.data_dir="], "--data.data_dir is an empty string")
    line = refused(
        capsys,
        tmp_path,
        [*train_args(root), f"--data.data_dir={tmp_path / ('d' * (NAME_MAX + 1))}"],
        "--data.data_dir",
        "File name too long",
    )
    assert len(line) < 300  # the path is shortened in the message
    refused(
        capsys, tmp_path, [*train_args(root), f"--data.data_dir={'/'.join(['d' * 200] * 30)}"], "File name too long"
    )  # a whole path beyond the system's limit
    refused(capsys, tmp_path, [*train_args(root), f"--data.data_dir={ROOT / 'README.md'}"], "is not a folder")


@pytest.mark.parametrize("option", ["standardize", "download"])
def test_data_booleans(capsys, tmp_path, option):
    assert FashionMNISTDataModule(**{option: False}).hparams[option] is False
    refused(capsys, tmp_path, train_args(tmp_path / "root", f"--data.{option}=maybe"), f"data.{option}")


# ------------------------------------------------------------------------------------------------ the figures
def test_figures_boundaries(capsys, tmp_path):
    assert ChapterFigures(n_images=1).n_images == 1 and ChapterFigures(n_images=MAX_IMAGES).n_images == MAX_IMAGES
    assert ChapterFigures(labels="zh").labels == "zh"
    for beyond in (0, MAX_IMAGES + 1):
        refused(
            capsys,
            tmp_path,
            train_args(tmp_path / "root", f"--figures.n_images={beyond}"),
            f"n_images must be in 1..{MAX_IMAGES}",
            "(--figures.n_images)",
        )
    for bad in ("fr", "", "EN"):
        refused(
            capsys,
            tmp_path,
            train_args(tmp_path / "root", f"--figures.labels={bad}"),
            "labels must be 'en' or 'zh'",
            "(--figures.labels)",
        )


# ------------------------------------------------------------------------------------------------ the Trainer
COUNTS = [
    ("max_epochs", -1),
    ("max_steps", -1),
    ("min_epochs", 0),
    ("min_steps", 0),
    ("check_val_every_n_epoch", 1),
    ("num_sanity_val_steps", -1),
    ("log_every_n_steps", 0),
    ("reload_dataloaders_every_n_epochs", 0),
]


@pytest.mark.parametrize("name,low", COUNTS)
def test_trainer_count_boundaries(capsys, tmp_path, name, low):
    extra = {"max_steps": 5} if name == "max_epochs" and low == -1 else {}  # -1 epochs needs a step limit
    for limit in (low, MAX_COUNT):
        check_trainer(trainer_config(**{name: limit, **extra}))
    for beyond in (low - 1, MAX_COUNT + 1, 10**30):
        refused(
            capsys,
            tmp_path,
            train_args(tmp_path / "root", "--trainer.max_steps=5", f"--trainer.{name}={beyond}"),
            f"{name} must be in {low}..{MAX_COUNT}",
            f"(--trainer.{name})",
        )


def test_trainer_counts_at_the_limit_build(tmp_path):
    """The whole stack (Lightning too) accepts the largest counts."""
    cli = built(
        tmp_path,
        f"--trainer.max_epochs={MAX_COUNT}",
        f"--trainer.max_steps={MAX_COUNT}",
        f"--trainer.check_val_every_n_epoch={MAX_COUNT}",
        f"--trainer.log_every_n_steps={MAX_COUNT}",
        "--trainer.num_sanity_val_steps=-1",
        f"--trainer.val_check_interval={MAX_COUNT}",
    )
    assert cli.trainer.max_epochs == MAX_COUNT and cli.trainer.max_steps == MAX_COUNT


def test_max_epochs_needs_a_limit(capsys, tmp_path):
    check_trainer(trainer_config(max_epochs=1))
    check_trainer(trainer_config(max_epochs=0, max_steps=3))  # a step limit instead
    refused(capsys, tmp_path, train_args(tmp_path / "root", "--trainer.max_epochs=0"), "max_epochs must be >= 1")


@pytest.mark.parametrize(
    "limit,beyond", [(1.0, 1.0000001), (1e-9, 0.0), (1, 0), (MAX_COUNT, MAX_COUNT + 1), (1e-9, ".nan")]
)
def test_val_check_interval_boundaries(capsys, tmp_path, limit, beyond):
    check_trainer(trainer_config(val_check_interval=limit))
    refused(
        capsys,
        tmp_path,
        train_args(tmp_path / "root", f"--trainer.val_check_interval={beyond}"),
        "val_check_interval must be",
        "(--trainer.val_check_interval)",
    )


@pytest.mark.parametrize(
    "name,stage", [("limit_train_batches", "train"), ("limit_val_batches", "val"), ("limit_test_batches", "test")]
)
def test_batch_fractions_that_leave_no_batch(capsys, tmp_path, fake, name, stage):
    """With 16 images a batch, the fake splits (64 train, 32 test) have 4 and 2 batches: a fraction of 1/4 (1/2)
    keeps one batch, anything less keeps none and is refused before training (the test split's too), with the
    run folder made for it removed again."""
    batches = 4 if stage == "train" else 2
    cli = make_cli(
        [
            "--trainer.default_root_dir=" + str(tmp_path / "root"),
            f"--data.data_dir={fake}",
            "--data.download=false",
            "--data.batch_size=16",
            f"--trainer.{name}={1 / batches}",
        ]
    )
    cli.run_folder.release(failed=True)
    cli.datamodule.trainer = cli.trainer  # (what fit does first)
    cli.datamodule.setup("fit")
    args = [
        f"--trainer.default_root_dir={tmp_path / 'root'}",
        f"--data.data_dir={fake}",
        "--data.download=false",
        "--data.batch_size=16",
        "--trainer.enable_progress_bar=false",
    ]
    refused(
        capsys,
        tmp_path,
        [*args, f"--trainer.{name}={1 / batches * 0.99}"],
        f"{name} {1 / batches * 0.99:g} of the {batches} {stage} batches is none",
        f"(--trainer.{name})",
    )


@pytest.mark.parametrize("beyond", ["1", "-1", ".nan", "0.5"])
def test_gradient_clip_val_only_zero(capsys, tmp_path, beyond):
    check_trainer(trainer_config(gradient_clip_val=0))
    refused(
        capsys,
        tmp_path,
        train_args(tmp_path / "root", f"--trainer.gradient_clip_val={beyond}"),
        "gradient_clip_val must be 0",
        "manual optimization",
    )


def test_devices_on_the_cpu(capsys, tmp_path):
    """At most ``max_cpu_processes()`` CPU processes (none is started here: devices=1 is built, the limit checked)."""
    top = max_cpu_processes()
    check_trainer(trainer_config(accelerator="cpu", devices=top))
    assert built(tmp_path, "--trainer.accelerator=cpu", "--trainer.devices=1").trainer.num_devices == 1
    for beyond in (top + 1, 10**30):
        refused(
            capsys,
            tmp_path,
            train_args(tmp_path / "root", "--trainer.accelerator=cpu", f"--trainer.devices={beyond}"),
            f"devices must be at most {top} CPU processes",
            "(--trainer.devices)",
        )
    for bad, text in (("0", "devices"), ("-1", "devices")):
        refused(
            capsys,
            tmp_path,
            train_args(tmp_path / "root", "--trainer.accelerator=cpu", f"--trainer.devices={bad}"),
            text,
        )


def test_num_nodes(capsys, tmp_path, monkeypatch):
    for name in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "NODE_RANK", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    check_trainer(trainer_config(num_nodes=1))
    refused(capsys, tmp_path, train_args(tmp_path / "root", "--trainer.num_nodes=0"), "num_nodes must be >= 1")
    refused(capsys, tmp_path, train_args(tmp_path / "root", "--trainer.num_nodes=2"), "needs the other machines")


@pytest.mark.parametrize(
    "arg,text",
    [
        # our own checks
        ("--trainer.model_registry=my-model", "--trainer.model_registry"),
        ("--trainer.precision=16-true", "keeps W and b in float16"),
        ("--trainer.precision=bf16-true", "keeps W and b in bfloat16"),
        # Lightning's, in one line
        ("--trainer.accumulate_grad_batches=2", "accumulate_grad_batches=2"),
        ("--trainer.limit_train_batches=1.5", "limit_train_batches"),
        ("--trainer.limit_val_batches=-1", "limit_val_batches"),
        ("--trainer.limit_test_batches=.nan", "limit_test_batches"),
        ("--trainer.overfit_batches=-1", "overfit_batches"),
        ("--trainer.fast_dev_run=-1", "fast_dev_run"),
        ("--trainer.max_time=soon", "not a valid duration"),
        ("--trainer.accelerator=warp", "invalid accelerator"),
        ("--trainer.strategy=warp", "invalid strategy"),
        ("--trainer.precision=7", "trainer.precision"),
        ("--trainer.gradient_clip_algorithm=foo", "gradient_clip_algorithm"),
        ("--trainer.deterministic=maybe", "trainer.deterministic"),
        ("--trainer.profiler=foo", "profiler"),
        ("--trainer.barebones=true", "barebones"),
        ("--trainer.callbacks=foo", "trainer.callbacks"),
        ("--weights_only=false", "weights_only=True only"),
        ("--bogus=1", "unrecognized arguments"),
        ("--trainer.max_epoch=3", "unrecognized arguments"),  # no abbreviations: a typo is not another option
        ("--model.l=0.5", "unrecognized arguments"),
    ],
)
def test_trainer_values_refused(capsys, tmp_path, arg, text):
    refused(capsys, tmp_path, train_args(tmp_path / "root", arg), text)


def test_trainer_values_accepted_by_the_same_stack(tmp_path):
    """The valid side of the rows above, built in one go."""
    cli = built(
        tmp_path,
        "--trainer.limit_train_batches=1.0",
        "--trainer.limit_val_batches=0",
        "--trainer.limit_test_batches=3",
        "--trainer.overfit_batches=0",
        "--trainer.fast_dev_run=false",
        "--trainer.max_time=00:01:00:00",
        "--trainer.accelerator=cpu",
        "--trainer.strategy=auto",
        "--trainer.precision=bf16-mixed",
        "--trainer.accumulate_grad_batches=1",
        "--trainer.gradient_clip_val=0",
        "--trainer.deterministic=true",
    )
    assert cli.trainer.limit_test_batches == 3 and cli.trainer.precision == "bf16-mixed"


def test_default_root_dir_boundaries(capsys, tmp_path):
    top = tmp_path / ("r" * NAME_MAX)
    assert built(tmp_path, f"--trainer.default_root_dir={top}").trainer.default_root_dir == str(top)  # (last wins)
    assert not top.exists()  # made for the run folder, and removed with it
    refused(
        capsys,
        tmp_path,
        [*train_args(tmp_path / "root"), "--trainer.default_root_dir="],
        "--trainer.default_root_dir is an empty string",
    )
    refused(
        capsys,
        tmp_path,
        [*train_args(tmp_path / "root"), f"--trainer.default_root_dir={tmp_path / ('r' * 256)}"],
        "--trainer.default_root_dir",
        "File name too long",
    )
    refused(
        capsys,
        tmp_path,
        [*train_args(tmp_path / "root"), f"--trainer.default_root_dir={ROOT / 'README.md'}"],
        "cannot create a run folder",
        "Not a directory",
    )


# ------------------------------------------------------------------------------------------------ seed, paths, config
def test_seed_everything_boundaries(capsys, tmp_path):
    for limit in (0, MAX_SEED):
        assert check_options([f"--seed_everything={limit}"]) == [f"--seed_everything={limit}"]
        assert FashionMNISTDataModule(seed=limit).hparams.seed == limit
    for beyond, shown in (
        ("-1", "-1"),
        (str(MAX_SEED + 1), str(MAX_SEED + 1)),
        (str(10**30), str(10**30)),
        ("true", "True"),
        ("false", "False"),
    ):
        refused(
            capsys,
            tmp_path,
            train_args(tmp_path / "root", f"--seed_everything={beyond}"),
            f"seed_everything must be an integer in 0..{MAX_SEED}, got {shown}",
            "(--seed_everything)",
        )


def test_ckpt_path_boundaries(capsys, tmp_path):
    """A readable checkpoint of this model (or 'last' with one in the root folder) is accepted; an empty string, a
    name too long, a folder, a device, a junk file are refused, each in one line."""
    model = SoftmaxRegression()
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, good)
    assert read_checkpoint(good)["state_dict"]["W"].shape == (784, 10)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"PK\x03\x04 junk")
    root = train_args(tmp_path / "root")
    for value, text in (
        ("", "--ckpt_path is an empty string"),
        ("c" * 256, "File name too long"),
        (str(tmp_path), "is a folder"),
        ("/dev/zero", "not a regular file"),
        (str(junk), "cannot be loaded safely"),
        ("missing.ckpt", "not found"),
        ("last", "no checkpoint found"),
    ):
        refused(capsys, tmp_path, [*root, f"--ckpt_path={value}"], text)


def test_config_size_boundary(capsys, tmp_path):
    top = tmp_path / "top.yaml"
    top.write_text("#" * ((1 << 20) - 1) + "\n")  # 1 MB of comment: read, and dropped (no settings)
    assert check_config_files(["--config", str(top)]) == []
    beyond = tmp_path / "beyond.yaml"
    beyond.write_text("#" * (1 << 20) + "\n")
    refused(
        capsys,
        tmp_path,
        train_args(tmp_path / "root", f"--config={beyond}"),
        f"{(1 << 20) + 1} bytes",
        "more than the 1048576",
        "--config",
    )


def test_config_values_boundary(capsys, tmp_path):
    def values(n: int) -> Path:  # a YAML list: the list itself and n - 1 numbers
        path = tmp_path / f"v{n}.yaml"
        path.write_text("[" + ",".join(["1"] * (n - 1)) + "]\n")
        return path

    assert check_config_files(["--config", str(values(MAX_CONFIG_VALUES))]) == [
        "--config",
        str(values(MAX_CONFIG_VALUES)),
    ]
    refused(
        capsys,
        tmp_path,
        train_args(tmp_path / "root", f"--config={values(MAX_CONFIG_VALUES + 1)}"),
        f"more than {MAX_CONFIG_VALUES} values",
    )


@pytest.mark.parametrize("flag", ["--config", "--model", "--data", "--trainer", "--figures"])
def test_config_files_that_are_not_regular_files(capsys, tmp_path, flag):
    """A config option (``--config``, or a group's own ``--model FILE`` ...) given a FIFO, a device, a folder or an
    empty string: one line, never a read that hangs."""
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    for value in (fifo, "/dev/zero", tmp_path):
        refused(capsys, tmp_path, train_args(tmp_path / "root", f"{flag}={value}"), "not a regular file", flag)
    nested = tmp_path / "nested.yaml"
    nested.write_text(f"{flag[2:]}: {fifo}\n" if flag != "--config" else f"fit:\n  model: {fifo}\n")
    refused(capsys, tmp_path, train_args(tmp_path / "root", f"--config={nested}"), "not a regular file", str(nested))


def test_config_empty_string_and_long_name(capsys, tmp_path):
    inline = "{trainer: {max_epochs: 3}" + ", model: {lr: 0.5}" * 20 + "}"  # YAML given inline, longer than a name
    assert len(inline) > NAME_MAX and check_options(["--config", inline]) == ["--config", inline]
    assert built(tmp_path, "--config", inline).trainer.max_epochs == 3
    refused(capsys, tmp_path, train_args(tmp_path / "root", "--config="), "--config is an empty string")
    refused(capsys, tmp_path, train_args(tmp_path / "root", f"--config={'c' * 256}.yaml"), "File name too long")


# ------------------------------------------------------------------------------------------------ scripts/predict.py
@pytest.fixture
def ckpt(tmp_path) -> Path:
    """An untrained model's checkpoint, as predict needs it (weights and hyper-parameters)."""
    model = SoftmaxRegression()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.fixture
def png(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "shirt.png"
    Image.fromarray(torch.zeros(20, 20, dtype=torch.uint8).numpy()).save(path)
    return path


def predict_ok(*args) -> tuple:
    """Predict's ``check_options`` accepts ``args`` (nothing is loaded)."""
    return predict.check_options(predict._parser().parse_args([str(a) for a in args]))


def predict_refused(capsys, tmp_path: Path, args: list, *fragments: str) -> str:
    before = tree(tmp_path)
    assert predict.main([str(a) for a in args]) == 2
    out, err = capsys.readouterr()
    line = one_error_line(err, *fragments)
    assert out == "" and tree(tmp_path) == before
    return line


@pytest.mark.parametrize(
    "flag,low,high,extra",
    [
        ("--n", 1, predict.MAX_TEST_IMAGES, []),
        ("--explain-rows", 1, predict.MAX_EXPLAIN_ROWS, ["--explain"]),
    ],
)
def test_predict_count_boundaries(capsys, tmp_path, ckpt, fake, flag, low, high, extra):
    out = ["--ckpt_path", ckpt, "--data.data_dir", fake, "--out", tmp_path / "o" / "p.png", *extra]
    for limit in (low, high):
        predict_ok(*out, flag, limit)
    for beyond in (low - 1, high + 1, 10**30):
        predict_refused(
            capsys, tmp_path, [*out, f"{flag}={beyond}"], f"{flag} must be in {low}..{high}", f"got {beyond}"
        )
    predict_refused(capsys, tmp_path, [*out, flag, "abc"], f"argument {flag}: invalid int value")


def test_predict_reject_below_boundaries(capsys, tmp_path, ckpt, fake):
    out = ["--ckpt_path", ckpt, "--data.data_dir", fake, "--out", tmp_path / "o" / "p.png"]
    for limit in (0.0, 1.0):
        predict_ok(*out, "--reject-below", limit)
    for beyond in (-1e-9, 1.0000001, "nan", "inf", "1e999"):
        predict_refused(capsys, tmp_path, [*out, f"--reject-below={beyond}"], "--reject-below must be in [0, 1]")


def test_predict_choices_and_pairings(capsys, tmp_path, ckpt, fake, png):
    out = ["--ckpt_path", ckpt, "--data.data_dir", fake, "--out", tmp_path / "o" / "p.png"]
    predict_ok(*out, "--labels", "zh")
    predict_refused(capsys, tmp_path, [*out, "--labels", "fr"], "argument --labels: invalid choice")
    predict_ok("--ckpt_path", ckpt, png, "--invert")
    predict_refused(capsys, tmp_path, [*out, "--invert"], "--invert/--no-invert apply to image files")
    predict_refused(capsys, tmp_path, ["--ckpt_path", ckpt, png, "--n", 3], "--n counts test images")
    predict_refused(capsys, tmp_path, [*out, "--explain-rows", 3], "--explain-rows needs --explain")
    predict_refused(capsys, tmp_path, ["--ckpt_path", ckpt, png, "--out", tmp_path / "p.png"], "--out names the")
    predict_refused(capsys, tmp_path, [*out, "--bogus"], "unrecognized arguments")


@pytest.mark.parametrize("flag", ["--ckpt_path", "--root_dir", "--data.data_dir", "--out", "--cost-matrix"])
def test_predict_path_strings(capsys, tmp_path, ckpt, flag):
    """Every path option: a long (255) or non-ASCII name passes the checks; an empty string or a name over the
    system's limit is one line."""
    good = {"--ckpt_path": ckpt}
    base = ["--ckpt_path", ckpt] if flag != "--ckpt_path" else []
    if flag == "--cost-matrix":  # (read while checking: a cost matrix must be there)
        for name in (tmp_path / ("x" * NAME_MAX), tmp_path / "données" / "日本語"):
            name.parent.mkdir(exist_ok=True)
            name.write_text("\n".join(" ".join("0" if i == j else "1" for j in range(10)) for i in range(10)))
            predict_ok(*base, flag, name)
    elif flag in ("--root_dir", "--data.data_dir"):
        predict_ok(*base, flag, tmp_path / ("x" * NAME_MAX))
        predict_ok(*base, flag, tmp_path / "données" / "日本語")
    elif flag == "--out":
        predict_ok(*base, flag, tmp_path / ("x" * (NAME_MAX - 4) + ".png"))
        predict_ok(*base, flag, tmp_path / "données" / "日本語.png")
    else:
        predict_ok(flag, good[flag])
    predict_refused(capsys, tmp_path, [*base, flag, ""], f"{flag} is an empty string")
    predict_refused(capsys, tmp_path, [*base, flag, tmp_path / ("x" * (NAME_MAX + 1))], flag, "File name too long")


def test_predict_out_that_is_not_a_regular_file(capsys, tmp_path, ckpt, fake, device_node):
    """A device (a copy of /dev/null's node), a FIFO, a broken link or a folder at ``--out`` is refused, and left
    exactly as it was (an atomic write would have replaced it with a PNG)."""
    fifo, link = tmp_path / "fifo.png", tmp_path / "broken.png"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "nowhere")
    for out, text in (
        (device_node, "not a regular file"),
        (fifo, "not a regular file"),
        (link, "not a regular file"),
        (tmp_path, "is a folder"),
    ):
        before = os.lstat(out)
        predict_refused(capsys, tmp_path, ["--ckpt_path", ckpt, "--data.data_dir", fake, "--out", out], text, "--out")
        after = os.lstat(out)
        assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)


def test_predict_images(capsys, tmp_path, ckpt, png, device_node):
    predict_ok("--ckpt_path", ckpt, png)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    for image, text in (
        ("", "an image path is an empty string"),
        (tmp_path, "is a folder"),
        (device_node, "not a regular file"),
        (tmp_path / "missing.png", "not found"),
        (tmp_path / ("i" * 256), "File name too long"),
    ):
        predict_refused(capsys, tmp_path, ["--ckpt_path", ckpt, image], text)
    predict_refused(capsys, tmp_path, ["--ckpt_path", ckpt, junk], "is not a readable image")


def test_predict_cost_matrix_size_boundary(capsys, tmp_path, ckpt, png):
    rows = "\n".join(" ".join("0" if i == j else "1" for j in range(10)) for i in range(10)) + "\n"
    top, beyond = tmp_path / "top.txt", tmp_path / "beyond.txt"
    limit = 64 * 1024
    top.write_text(rows + " " * (limit - len(rows)))
    beyond.write_text(rows + " " * (limit - len(rows) + 1))
    assert predict.load_cost_matrix(top).shape == (10, 10)
    predict_refused(
        capsys, tmp_path, ["--ckpt_path", ckpt, "--cost-matrix", beyond, png], f"{limit + 1} bytes", "--cost-matrix"
    )
    bad = tmp_path / "nan.txt"
    bad.write_text(rows.replace("1", "nan", 1))
    predict_refused(capsys, tmp_path, ["--ckpt_path", ckpt, "--cost-matrix", bad, png], "holds a non-finite number")


def test_predict_help_and_usage_errors_return(capsys):
    """In-process, usage errors and --help return their exit code (no SystemExit escapes ``main``)."""
    assert predict.main(["--help"]) == 0
    assert "--cost-matrix" in capsys.readouterr().out
    assert predict.main(["--n"]) == 2
    one_error_line(capsys.readouterr().err, "argument --n")


# ------------------------------------------------------------------------------------------------ scripts/benchmark.py


@pytest.mark.parametrize("flag,top", [("--epochs", 1000), ("--rounds", 100), ("--d2l-epochs", 1000)])
def test_benchmark_count_boundaries(capsys, tmp_path, benchmark, flag, top):
    """The limit passes the count check (the next check, a data_dir that is a file, refuses instead); beyond, the
    count is refused first."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    args = ["--data.data_dir", str(not_a_folder), "--out", str(tmp_path / "b.json")]
    assert benchmark.main([*args, flag, str(top)]) == 2
    assert "is not a folder" in one_error_line(capsys.readouterr().err)
    for beyond in (0, top + 1, 10**30):
        assert benchmark.main([*args, flag, str(beyond)]) == 2
        one_error_line(capsys.readouterr().err, flag, f">= 1 and <= {top}")
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    "project_args,text",
    [
        ("--model.lr 'unbalanced", "cannot be split into options"),
        ("--trainer.max_epochs 3", "may not set --trainer.max_epochs"),
        ("--data.data_dir elsewhere", "may not set --data.data_dir"),
        ("--trainer.default_root_dir x", "may not set --trainer.default_root_dir"),
        ("test", "not 'test'"),
        ("--ckpt_path=last", "not '--ckpt_path'"),
        ("--model.lr 0", "lr must be"),
        ("--trainer.val_check_interval 0", "val_check_interval"),
        ("--bogus 1", "unrecognized"),
        ("--print_config", "prints and stops"),
        ("--help", "prints and stops"),
        ("--config /dev/zero", "not a regular file"),
    ],
)
def test_benchmark_project_args_refused_before_timing(capsys, tmp_path, benchmark, data_dir, project_args, text):
    before = tree(tmp_path)
    code = benchmark.main(
        ["--skip-d2l", "--epochs", "1", "--out", str(tmp_path / "b.json"), f"--project-args={project_args}"]
    )
    out, err = capsys.readouterr()
    assert code == 2 and out == "", out
    one_error_line(err, text)
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "out,text", [("", "--out is an empty string"), ("o" * 256, "File name too long"), (".", "not a regular file")]
)
def test_benchmark_out_refused(capsys, tmp_path, benchmark, out, text):
    assert benchmark.main(["--out", out, "--epochs", "1"]) == 2
    one_error_line(capsys.readouterr().err, text)


def test_benchmark_out_device_is_never_replaced(capsys, tmp_path, benchmark, device_node):
    before = os.lstat(device_node)
    assert benchmark.main(["--out", str(device_node), "--epochs", "1"]) == 2
    one_error_line(capsys.readouterr().err, "not a regular file")
    assert os.lstat(device_node).st_ino == before.st_ino


def test_benchmark_usage_errors_are_one_line(capsys, benchmark):
    assert benchmark.main(["--epochs"]) == 2
    one_error_line(capsys.readouterr().err, "argument --epochs: expected one argument")
    assert benchmark.main(["--epochs", "ten"]) == 2
    one_error_line(capsys.readouterr().err, "invalid int value")


def test_benchmark_into_a_closed_pipe_ends_quietly(tmp_path, fake):
    """A whole (tiny) benchmark whose stdout is a pipe nobody reads: exit 141, no traceback, and the training's own
    lines went to stderr, the table alone to stdout."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the script writes
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/benchmark.py",
            "--skip-d2l",
            "--epochs",
            "1",
            "--rounds",
            "1",
            "--data.data_dir",
            str(fake),
            "--out",
            str(tmp_path / "b.json"),
        ],
        cwd=ROOT,
        stdout=w,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    os.close(w)
    assert proc.returncode == 141, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-2000:]
    assert "floor:" in proc.stderr and "project:" in proc.stderr  # progress, on stderr
