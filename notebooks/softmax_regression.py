# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: softmax-lightning (.venv)
#     language: python
#     name: softmax-lightning
# ---

# %% [markdown]
# # softmax回归的从零开始实现 · Softmax regression from scratch
#
# The d2l chapter, cell by cell, computed with this repository's package `softmax_lightning` instead of code pasted
# into the notebook: the same hand-written `W`, `b`, softmax, cross-entropy and SGD, then the same model trained by
# the Lightning `Trainer`, with the chapter's training curves growing live below the training cell.
#
# 本笔记本按原章节的八个小节排列；每个小节用本项目的包 `softmax_lightning` 计算原章节的单元格，并给出其输出。
#
# Runs offline on the same data as `python scripts/train.py` (`data/FashionMNIST/raw/`, or Debian's
# `dataset-fashion-mnist`). Open it with `make notebook`; [README.md](README.md) in this folder says how the stored
# outputs are made.

# %%
import inspect
import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from IPython.display import Image, display
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from tqdm import tqdm

from softmax_lightning import figures
from softmax_lightning.functional import accuracy, cross_entropy, cross_entropy_naive, softmax_naive
from softmax_lightning.callbacks import ChapterFigures
from softmax_lightning.data import FashionMNISTDataModule, class_names
from softmax_lightning.model import SoftmaxRegression

# The repository root, whether Jupyter started in notebooks/ or in the root: `data/` and `lightning_logs/` are the
# same folders `python scripts/train.py` uses. SOFTMAX_LIGHTNING_ROOT_DIR moves the run folders elsewhere (the
# tests and scripts/build_notebook.py point it at a temporary folder).
REPO = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "pyproject.toml").is_file())
ROOT_DIR = Path(os.environ.get("SOFTMAX_LIGHTNING_ROOT_DIR", REPO))
torch.set_printoptions(precision=4)
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no "GPU available", no tips
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # a torch/Lightning version notice

# %% [markdown]
# ## 1. 下载Fashion-MNIST数据集 · Loading Fashion-MNIST
#
# The chapter's `d2l.load_data_fashion_mnist(batch_size)` is `FashionMNISTDataModule`: both splits parsed once from
# the IDX files and held in memory, scaled to [0, 1], served in minibatches of 256.

# %%
batch_size = 256
data = FashionMNISTDataModule(data_dir=str(REPO / "data"), batch_size=batch_size)
data.prepare_data()  # finds the four IDX files; downloads only if no local copy exists
data.setup()
train_iter, test_iter = data.train_dataloader(), data.test_dataloader()
print(f"train: {len(data.train_set)} images, test: {len(data.test_set)}; "
      f"{len(train_iter)} minibatches of {batch_size} per epoch; one image: {tuple(data.test_set.X.shape[1:])}")
for label, (en, zh) in enumerate(zip(class_names("en"), class_names("zh"))):
    print(label, zh, en)

# %% [markdown]
# ## 2. 初始化模型参数 · Initializing the model parameters
#
# `W ~ N(0, 0.01)` of shape `(784, 10)` and `b = 0` of shape `(10,)` are the parameters of `SoftmaxRegression`.
# Seeding with 0 first gives the same `W`, and so the same run, as `python scripts/train.py` (`seed_everything: 0`).

# %%
L.seed_everything(0, verbose=False)
net = SoftmaxRegression(num_inputs=784, num_outputs=10, lr=0.1)
net.W.shape, net.b.shape, round(net.W.detach().std().item(), 4)

# %% [markdown]
# ## 3. 定义softmax操作 · Defining softmax
#
# Summing along one axis, keeping it (`keepdim=True`):

# %%
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
X.sum(0, keepdim=True), X.sum(1, keepdim=True)

# %% [markdown]
# The chapter's `softmax` is `softmax_naive` (exp, row sums, divide). Every entry becomes non-negative and every
# row sums to 1. `softmax` gives the same numbers without overflowing (exercise 1, below).

# %%
X = torch.normal(0, 1, (2, 5))
X_prob = softmax_naive(X)
X, X_prob, X_prob.sum(1)

# %% [markdown]
# ## 4. 定义模型 · Defining the model
#
# The chapter's `net(X)`, `softmax(X.reshape(-1, 784) @ W + b)`, is `SoftmaxRegression.forward`: a minibatch of
# images in, one row of ten class probabilities per image out.

# %%
X, y = next(iter(test_iter))
with torch.no_grad():
    y_hat = net(X)
X.shape, y_hat.shape, y_hat.sum(1)[:4]

# %% [markdown]
# ## 5. 定义损失函数 · Defining the loss function
#
# Two samples, three classes: `y` indexes the probability of each sample's true class.

# %%
y = torch.tensor([0, 2])
y_hat = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]])
y_hat[[0, 1], y], y_hat[[0, 0], y], y_hat[[1, 0], y]

# %% [markdown]
# The chapter's `cross_entropy(y_hat, y)`, on probabilities, is `cross_entropy_naive`:

# %% tags=["cross_entropy"]
cross_entropy_naive(y_hat, y)

# %% [markdown]
# Training uses `cross_entropy`, which takes logits (scores before softmax) and never forms a probability that
# could underflow to 0 (exercise 2). `log(y_hat)` is a valid logit vector, so it gives the same numbers:

# %%
cross_entropy(torch.log(y_hat), y)

# %% [markdown]
# ## 6. 求分类精度 · Classification accuracy
#
# `accuracy` counts the rows whose argmax is the true class: the first sample is wrong (predicts 2, not 0), the
# second right, so the accuracy is 1 / 2.

# %% tags=["accuracy"]
float(accuracy(y_hat, y) / len(y))

# %% [markdown]
# The chapter's `evaluate_accuracy(net, test_iter)` (with its `Accumulator`) is the `Trainer`'s test loop:
# `SoftmaxRegression.test_step` feeds every test minibatch to a torchmetrics accuracy. With random weights the model
# is guessing, so its accuracy is near chance, 1 in 10; the exact value depends on the draw of `W` (the chapter's
# scored 0.171).

# %% tags=["untrained_accuracy"]
evaluator = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
round(evaluator.test(net, datamodule=data, verbose=False)[0]["test_acc"], 4)

# %% [markdown]
# ## 7. 训练 · Training
#
# The chapter's `train_ch3(net, train_iter, test_iter, cross_entropy, num_epochs, updater)` with `lr = 0.1` is
# `Trainer.fit`: `SoftmaxRegression.training_step` takes the hand-written SGD step (`ChapterSGD`) on every minibatch,
# the test split is evaluated after every epoch, and `ChapterFigures` plays the chapter's `Animator`: in a notebook
# it shows the curves below and redraws them in place after every epoch (one figure that grows). It also writes
# them to `curves.png` in the run folder, with `predictions.png`, `weights.png` and `confusion.png` at the end. The
# progress bar leaves one line per epoch. First, the step itself: the chapter's `l.sum().backward();
# updater(X.shape[0])`, through Lightning's manual optimization.

# %%
print(inspect.getsource(SoftmaxRegression.training_step))

# %%
class EpochBar(TQDMProgressBar):
    """Lightning's progress bar, one line per epoch in a notebook: no nested validation bar (a terminal draws it with
    cursor moves, which a notebook cannot follow: it would print a new line for each redraw)."""

    def init_validation_tqdm(self) -> tqdm:
        return tqdm(disable=True)


# %% tags=["train"]
num_epochs = 10
trainer = L.Trainer(
    max_epochs=num_epochs,
    logger=TensorBoardLogger(ROOT_DIR),  # the run folder: lightning_logs/version_N, as for scripts/train.py
    callbacks=[ChapterFigures(labels="en"), EpochBar(refresh_rate=50, leave=True)],
    num_sanity_val_steps=0,  # the chapter evaluates after each epoch, not before
    enable_model_summary=False,
)
trainer.fit(net, datamodule=data)

# %% [markdown]
# The trained model on the test split (the chapter's last "test acc"), and where the run's files are:

# %% tags=["test_accuracy"]
test_acc = trainer.test(net, datamodule=data, verbose=False)[0]["test_acc"]
print(f"test_acc = {test_acc:.4f}")
print(f"run folder: {Path(trainer.log_dir).relative_to(ROOT_DIR)} (open it in TensorBoard: "
      f"tensorboard --logdir lightning_logs)")

# %% [markdown]
# ## 8. 预测 · Prediction
#
# The chapter's `predict_ch3(net, test_iter)`: the first 16 test images, each titled with its true class over the
# predicted one (red: wrong) and the model's confidence. `labels="zh"` draws the chapter's Chinese class names
# (needs a CJK font, e.g. `fonts-noto-cjk`).

# %%
X, y = data.test_set.X[:16], data.test_set.y[:16]
with torch.no_grad():
    probs, preds = net(X).max(1)
display(Image(figures.save_png(figures.plot_predictions(X, y, preds, labels="en", probs=probs))))

# %% [markdown]
# ## 练习 · Exercises
#
# Each exercise is answered by running code; [docs/exercises.md](../docs/exercises.md) has the question, the
# output and an explanation. From the repository root:
#
# 1. The naive softmax overflows (hint: `exp(50)`): `python -m softmax_lightning.exercises 1`, run below.
# 2. The naive cross-entropy leaves the log's domain: `python -m softmax_lightning.exercises 2`.
# 3. The fix for both, in training: `python -m softmax_lightning.exercises 3` (trains twice on the real data).
# 4. Is the most probable class always the best answer (medical diagnosis)? Bayes decisions under a cost matrix, a
#    reject option, calibration: `python -m softmax_lightning.exercises 4`.
# 5. A huge vocabulary: the cost of the full softmax against sampled softmax:
#    `python -m softmax_lightning.exercises 5`.
#
# `make exercises` runs all five.

# %%
from softmax_lightning.exercises import exercise1

exercise1()
