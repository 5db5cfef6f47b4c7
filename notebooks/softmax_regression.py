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
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from IPython.display import Image, display
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from tqdm import tqdm

from softmax_lightning import figures
from softmax_lightning.callbacks import ChapterFigures
from softmax_lightning.confusions import ConfusionExamples, most_confused_pairs
from softmax_lightning.data import FashionMNISTDataModule, class_names
from softmax_lightning.functional import accuracy, cross_entropy, cross_entropy_naive, evidence, softmax_naive
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
print(
    f"train: {len(data.train_set)} images, test: {len(data.test_set)}; "
    f"{len(train_iter)} minibatches of {batch_size} per epoch; one image: {tuple(data.test_set.X.shape[1:])}"
)
for label, (en, zh) in enumerate(zip(class_names("en"), class_names("zh"))):
    print(label, zh, en)

# %% [markdown]
# ## 2. 初始化模型参数 · Initializing the model parameters
#
# `W ~ N(0, 0.01²)` of shape `(784, 10)` and `b = 0` of shape `(10,)` are the parameters of `SoftmaxRegression`.
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
# The chapter's `evaluate_accuracy(net, data_iter)` and its `Accumulator`, in plain PyTorch: the number of right
# predictions and the number of predictions, summed over the minibatches.


# %%
class Accumulator:
    """Sums over n variables (the chapter's cell)."""

    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def reset(self):
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx):
        return self.data[idx]


def evaluate_accuracy(net, data_iter):
    """The model's accuracy on a data set (the chapter's cell)."""
    if isinstance(net, torch.nn.Module):
        net.eval()  # evaluation mode
    metric = Accumulator(2)  # right predictions, predictions
    with torch.no_grad():
        for X, y in data_iter:
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


print(f"evaluate_accuracy(net, test_iter) = {evaluate_accuracy(net, test_iter):.4f}")
_ = net.train()  # back to training mode (the chapter's train_epoch_ch3 does this for an nn.Module)

# %% [markdown]
# In Lightning, the same loop is the `Trainer`'s test loop: `SoftmaxRegression.test_step` feeds every test minibatch
# to a torchmetrics accuracy, the chapter's `Accumulator` as a metric object. Same number:

# %% tags=["untrained_accuracy"]
evaluator = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
round(evaluator.test(net, datamodule=data, verbose=False)[0]["test_acc"], 4)

# %% [markdown]
# The chapter expects random weights to score near chance, 1 in 10 (its own draw scored 0.171). This draw (seed 0)
# scores 0.0328, a third of chance: a random `W` does not guess evenly. Every image is light pixels on black, and
# they share a bright central blob, so the class whose random template happens to weigh that blob highest wins for
# most images, whatever they show. With seed 0, two classes (Shirt and Sneaker) take 88% of the predictions:

# %%
with torch.no_grad():
    untrained_preds = net(data.test_set.X).argmax(1)  # (10000,): the predicted class of every test image
counts = torch.bincount(untrained_preds, minlength=10)
with figures.new_figure((6.4, 2.4)) as (fig, names):
    ax = fig.subplots()
    ax.bar(range(10), counts.numpy(), color="tab:blue")
    ax.axhline(1000, color="0.4", ls="--", lw=1)  # each class has 1000 test images
    ax.set_xticks(range(10), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="test images")
    ax.set_title(
        "what the untrained model (seed 0) predicts for the 10000 test images\n(dashed: 1000, the images "
        "of each class)",
        fontsize=9,
    )
    fig.subplots_adjust(bottom=0.3, top=0.84, left=0.11, right=0.98)
display(Image(figures.save_png(fig)))

# %% [markdown]
# Other draws pile up on other classes, so the untrained accuracy depends on the draw far more than "near 0.1"
# suggests; it averages about 0.1 only over many draws:

# %%
for seed in range(6):
    torch.manual_seed(seed)
    W0 = torch.normal(0, 0.01, size=(784, 10))  # the chapter's draw; b = 0
    preds0 = (data.test_set.X.reshape(-1, 784) @ W0).argmax(1)
    top2 = torch.bincount(preds0, minlength=10).topk(2).values.sum().item()
    print(
        f"seed {seed}: accuracy {(preds0 == data.test_set.y).float().mean():.4f}, "
        f"the two most predicted classes take {top2 / 100:.0f}% of the predictions"
    )

# %% [markdown]
# ## 7. 训练 · Training
#
# ### The chapter's loop, in plain PyTorch
#
# First the chapter's own `train_epoch_ch3` and `train_ch3`, written out, on the same `train_iter` and `test_iter`.
# Two details make it the very computation the Lightning run below makes, number for number:
#
# * the same start: `W ~ N(0, 0.01²)` drawn right after seeding with 0, `b = 0` (the `W` of `net` above);
# * the same minibatches: `train_iter` shuffles with `randperm` seeded with `seed + epoch` (`EpochShuffle`), so
#   calling `set_epoch(epoch)` before each epoch, as Lightning does, gives Lightning's order.
#
# One change from the chapter's cell: `net` returns logits (`X @ W + b`) and the loss is `cross_entropy` from logits,
# the stable form `SoftmaxRegression` trains with (exercises 1-3); the chapter applies `softmax_naive`, then
# `cross_entropy_naive`: the same numbers wherever those are finite.

# %%
lr, num_epochs = 0.1, 10
torch.manual_seed(0)  # as L.seed_everything(0) before SoftmaxRegression(): the same draw
W = torch.normal(0, 0.01, size=(784, 10), requires_grad=True)
b = torch.zeros(10, requires_grad=True)
assert torch.equal(W, net.W), "the plain loop starts from the Lightning model's W"


def net_plain(X):
    """The chapter's net, up to its softmax: the logits ``X @ W + b``, shape (batch, 10)."""
    return X.reshape(-1, W.shape[0]) @ W + b


def updater(batch_size):
    """d2l.sgd([W, b], lr, batch_size): param -= lr * grad / batch_size. Written as ChapterSGD writes it,
    grad * (lr / batch_size), which rounds the same way (lr * grad / batch_size can differ in the last bit)."""
    with torch.no_grad():
        for param in (W, b):
            param -= param.grad * (lr / batch_size)
            param.grad.zero_()


def train_epoch_ch3(net, train_iter, loss, updater):
    """One epoch (the chapter's cell, with the custom updater): mean training loss and accuracy."""
    metric = Accumulator(3)  # sum of training losses, right predictions, samples
    for X, y in train_iter:
        y_hat = net(X)
        l = loss(y_hat, y)
        l.sum().backward()
        updater(X.shape[0])
        metric.add(float(l.sum().detach()), accuracy(y_hat, y), y.numel())
    return metric[0] / metric[2], metric[1] / metric[2]


def train_ch3(net, train_iter, test_iter, loss, num_epochs, updater):
    """The chapter's training function; one printed line per epoch instead of its Animator."""
    history = []
    for epoch in range(num_epochs):
        train_iter.sampler.set_epoch(epoch)  # the epoch's shuffle: randperm seeded with seed + epoch
        train_loss, train_acc = train_epoch_ch3(net, train_iter, loss, updater)
        test_acc = evaluate_accuracy(net, test_iter)
        history.append((train_loss, train_acc, test_acc))
        print(f"epoch {epoch + 1}: train loss {train_loss:.4f}, train acc {train_acc:.4f}, test acc {test_acc:.4f}")
    return history


start = time.perf_counter()
plain_history = train_ch3(net_plain, train_iter, test_iter, cross_entropy, num_epochs, updater)
print(f"{num_epochs} epochs in {time.perf_counter() - start:.1f} s")

# %% [markdown]
# ### The same training in Lightning
#
# `Trainer.fit` runs that loop for `SoftmaxRegression`. What Lightning takes over: the epoch and minibatch loops and
# the per-epoch `set_epoch`; moving the model and each batch to the device (`--trainer.accelerator gpu` and the same
# code runs on a GPU, or on several with DDP); the evaluation after each epoch; the chapter's `Accumulator`s, as
# torchmetrics objects, with logging to TensorBoard; checkpoints (`last.ckpt`, from which a run resumes exactly);
# the progress bar; and callbacks such as `ChapterFigures`. What stays ours: the model, the loss and the SGD step.
# `SoftmaxRegression.training_step` is the body of `train_epoch_ch3`'s loop, the chapter's `l.sum().backward();
# updater(X.shape[0])`, through Lightning's manual optimization:

# %%
print(inspect.getsource(SoftmaxRegression.training_step))

# %% [markdown]
# `ChapterFigures` plays the chapter's `Animator`: in a notebook it shows the curves below and redraws them in place
# after every epoch (one figure that grows). It also writes them to `curves.png` in the run folder, with
# `predictions.png`, `weights.png` and `confusion.png` at the end. The progress bar leaves one line per epoch.
#
# A word on names: Lightning evaluates a *validation* set after each epoch and calls its numbers `val_loss` and
# `val_acc`. With the default data module (`val_size=0`) the validation set **is the test split**, as in the
# chapter, so `val_acc` is the chapter's "test acc". (`FashionMNISTDataModule(val_size=5000)`, or
# `--data.val_size 5000` for `scripts/train.py`, holds out 5000 training images for validation instead; the test
# split is then touched only by `trainer.test`.)


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
    callbacks=[chapter_figures := ChapterFigures(labels="en", val_name="test"), EpochBar(refresh_rate=50, leave=True)],
    num_sanity_val_steps=0,  # the chapter evaluates after each epoch, not before
    enable_model_summary=False,
)
trainer.fit(net, datamodule=data)

# %% [markdown]
# The trained model on the test split (the chapter's last "test acc"), and where the run's files are:

# %% tags=["test_accuracy"]
test_acc = trainer.test(net, datamodule=data, verbose=False)[0]["test_acc"]
print(f"test_acc = {test_acc:.4f}")
print(
    f"run folder: {Path(trainer.log_dir).relative_to(ROOT_DIR)} (open it in TensorBoard: "
    f"tensorboard --logdir lightning_logs)"
)

# %% [markdown]
# The two trainings side by side, epoch by epoch (Lightning's numbers from `ChapterFigures.history`), and the
# weights they end with:

# %% tags=["loops_agree"]
print(f"{'epoch':>5}  {'train loss':>21}  {'train acc':>17}  {'test acc':>17}   (plain loop | Lightning)")
for (loss_p, acc_p, test_p), row in zip(plain_history, chapter_figures.history):
    print(
        f"{row['epoch']:>5}  {loss_p:.6f} | {row['train_loss']:.6f}  {acc_p:.5f} | {row['train_acc']:.5f}  "
        f"{test_p:.5f} | {row['val_acc']:.5f}"
    )
gaps = {
    "W": (W - net.W).abs().max().item(),
    "b": (b - net.b).abs().max().item(),
    "train loss": max(abs(p[0] - r["train_loss"]) for p, r in zip(plain_history, chapter_figures.history)),
    "test acc": max(abs(p[2] - r["val_acc"]) for p, r in zip(plain_history, chapter_figures.history)),
}
print("largest differences: " + ", ".join(f"{k} {v:.2g}" for k, v in gaps.items()))

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
# ### Why this prediction? · 为什么这样预测
#
# Softmax regression explains itself exactly. A logit is a sum over pixels, `logit_k = b_k + Σ_i x_i · W[i, k]`, so
# the image times class k's template, pixel by pixel (`functional.evidence`), shows where the evidence for class k
# comes from: red pixels speak for it, blue against, and each map summed, plus `b_k`, is the logit. Below, the first
# right and the first wrong prediction on the test split, each with the evidence maps of its three most probable
# classes (one colour scale per row) and its probabilities (green: the true class; red: a wrong prediction).
# `python scripts/predict.py --explain` draws the same figure, for test images or your own photos.

# %%
with torch.no_grad():
    hits = net(data.test_set.X).argmax(1) == data.test_set.y  # (10000,): which test images it gets right
right, wrong = int(hits.nonzero()[0]), int((~hits).nonzero()[0])  # the first of each
Xe = data.test_set.X[[right, wrong]]  # (2, 1, 28, 28)
with torch.no_grad():
    logits = net.logits(Xe)
fig = figures.plot_explain(
    Xe,
    logits,
    evidence(Xe, net.W.detach()),
    labels="en",
    trues=data.test_set.y[[right, wrong]],
    captions=[f"test image #{right}", f"test image #{wrong}"],
)
display(Image(figures.save_png(fig)))

# %% [markdown]
# Between two classes, only the difference of their templates matters: `logit_a - logit_b = b_a - b_b +
# Σ_i x_i · (W[i, a] - W[i, b])`. The pixels where `W[:, a] - W[:, b]` is far from zero are the ones that separate
# `a` from `b`. Here are the three pairs of classes the trained model confuses most on the test split (a pair counts
# its mistakes both ways), with test images mistaken each way. Take T-shirt/top and Shirt: the blue stripes down both
# sides of their difference are where long sleeves hang, and they speak for Shirt; so long-sleeved T-shirts are
# taken for shirts, and the shirts taken for T-shirts have short sleeves. A linear model weighs single pixels: it
# cannot tell a collar or buttons from a print on a T-shirt, so a printed T-shirt can be taken for a shirt too.

# %%
matrix, examples = torch.zeros(10, 10, dtype=torch.long), ConfusionExamples(per_pair=4)
with torch.no_grad():
    for X, y in test_iter:  # as the validation loop feeds a callback: (images, labels, predictions)
        preds = net.logits(X).argmax(1)
        matrix += torch.bincount(y * 10 + preds, minlength=100).reshape(10, 10)  # true rows, predicted columns
        examples.update(X, y, preds)
pairs = most_confused_pairs(matrix)
print("most confused pairs:", [(class_names()[a], class_names()[b]) for a, b in pairs])
display(Image(figures.save_png(figures.plot_confusions(net.W, pairs, examples.examples, labels="en", matrix=matrix))))

# %% [markdown]
# ## 练习 · Exercises
#
# Each exercise is answered by running code; [docs/exercises.md](../docs/exercises.md) has the question, the
# output and an explanation. From the repository root:
#
# 1. What goes wrong with the naive softmax? The chapter's hint, `exp(50)`, shows how fast `exp` grows: about
#    5.2e21, still finite in float32 (whose largest number is about 3.4e38). `exp` overflows to `inf` in float32
#    once its argument passes about 88.7 (709.8 in float64), and then the naive softmax gives `inf / inf = nan`:
#    `python -m softmax_lightning.exercises 1`, run below.
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
