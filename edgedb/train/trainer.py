"""Fine-tuning a DBNet on the user's images: the training loop.

Random crops of the training images (augmented), the DB paper's labels and loss, Adam
with a short warm-up and polynomial decay, and a validation pass that runs the model the
way ``EdgeDetector`` will (its resize, box formation and ICDAR metric): by default once,
on the final (averaged) weights, or every ``val_every`` steps keeping the best checkpoint.
A model no better than the base on validation is not offered as a result.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from edgedb._extras import import_optional
from edgedb._checks import integer_at_least, seed_value, thread_count
from edgedb._files import save_onnx
from edgedb.errors import InvalidInputError, ModelError
from edgedb.spec import ModelSpec

log = logging.getLogger(__name__)

TRAIN_EXTRA = ("pip install 'dbnet-edge[train]', or pip install -e '.[train]' in a checkout (PyTorch; a CPU build: "
               "pip install torch --index-url https://download.pytorch.org/whl/cpu)")


def import_torch():
    return import_optional("torch", "fine-tuning", TRAIN_EXTRA, name="PyTorch")


def free_cores() -> int:
    """Cores this process may use that are not busy (1-minute load average)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = int(round(os.getloadavg()[0]))
    except OSError:
        busy = 0
    return max(1, min(available, available - busy + 1))


@dataclass
class Scores:
    precision: float
    recall: float
    hmean: float

    def __str__(self) -> str:
        return f"P {self.precision:.3f}  R {self.recall:.3f}  H {self.hmean:.3f}"


@dataclass
class FinetuneResult:
    """What training produced. ``model`` is the best checkpoint's ONNX (the base's
    interface), or None when no checkpoint beat the base on validation."""

    base: Scores
    best: Scores
    best_step: int
    steps: int
    seconds: float
    model: Optional[object] = None
    history: list = field(default_factory=list)  # (step, loss terms, validation hmean or None)

    @property
    def improved(self) -> bool:
        return self.model is not None

    def save(self, path: Union[str, Path]) -> Path:
        if self.model is None:
            raise ModelError(f"not writing {path}: no checkpoint beat the base model on validation "
                             f"(base hmean {self.base.hmean:.3f}, best {self.best.hmean:.3f}); try more steps, a "
                             "lower --lr, or more training images")
        path = Path(path)
        if not path.parent.is_dir():
            raise InvalidInputError(f"output folder {path.parent} does not exist")
        save_onnx(self.model, path)
        return path


class Validator:
    """Scores a model on held-back samples as EdgeDetector would run it: frames prepared
    by the detector's resize policy (once), box formation with the detector's defaults,
    the ICDAR 2015 protocol."""

    def __init__(self, samples: Sequence, *, limit_side_len: int = 736, limit_type: str = "min",
                 box_options: Optional[dict] = None, stride: int = 32):
        from edgedb.boxes import DEFAULT_BOXES
        from edgedb.evaluation import GroundTruthBox
        from edgedb.preprocess import prepare_limit

        self.box_options = {**DEFAULT_BOXES, **(box_options or {})}
        self.items = []
        for sample in samples:
            truth = [GroundTruthBox(np.asarray(p, np.float32), "###" if ignored else "", bool(ignored))
                     for p, ignored in zip(sample.polygons, sample.ignore)]
            self.items.append((prepare_limit(sample.image, limit_side_len, limit_type, stride), truth))

    def __call__(self, net) -> Scores:
        from edgedb.boxes import boxes_from_prob
        from edgedb.evaluation import evaluate
        from edgedb.train.model import prob_map

        net.train(False)
        results = []
        for prepared, truth in self.items:
            prob = prob_map(net, prepared.frame)
            ch, cw = prepared.content
            boxes = boxes_from_prob(np.ascontiguousarray(prob[:ch, :cw]), dest_size=prepared.original,
                                    **self.box_options)
            results.append((boxes, truth))
        summary = evaluate(results)
        return Scores(summary.precision, summary.recall, summary.hmean)


def _learning_rate(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (1 - (step - warmup) / max(1, steps - warmup)) ** 0.9  # the DB paper's poly decay


def finetune(
    train: Sequence,
    val: Optional[Sequence] = None,
    *,
    base: Union[str, Path] = "ppocrv4-det",
    spec: Optional[ModelSpec] = None,
    steps: int = 200,
    batch_size: int = 8,
    crop: int = 384,
    lr: float = 3e-4,
    loss: str = "db",
    binary_loss: str = "bce",
    scale: tuple[float, float] = (0.7, 1.4),
    ema: float = 0.95,
    freeze: float = 0.0,
    val_every: Optional[int] = None,
    val_fraction: float = 0.1,
    threads: Optional[int] = None,
    device: Optional[str] = None,
    seed: int = 0,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tunes ``base`` on ``train`` samples (``edgedb.train.data.Sample``).

    Args:
        train: training samples (image, polygons, ignore flags).
        val: validation samples; default: ``val_fraction`` of ``train``, held back.
        base: zoo name or DBNet ONNX file (an export or a model edgedb wrote).
        spec: the base's spec when edgedb cannot tell it.
        steps, batch_size, crop: optimizer steps, crops per step, crop side in pixels.
        lr: Adam's peak learning rate (warm-up over the first 5% of steps, then poly decay).
        loss: ``"db"`` (Ls + Lb + 10 Lt, with a threshold head) or ``"prob"`` (Ls only).
        binary_loss: ``"dice"`` or ``"bce"`` for Lb.
        scale: range of the random scale of the crops (log-uniform; 1 is the size the
            detector runs images at). Defaults (bench/RESULTS.md, chosen by cross-validation):
            200 steps of 8 crops of 384 px at 3e-4, BCE for Lb, scale 0.7..1.4, EMA 0.95.
        ema: decay of the moving average of the weights that is validated and exported
            (0 for the raw weights).
        freeze: fraction of the base's weights, from the input on, kept fixed.
        val_every: steps between validations, the best checkpoint kept (default: ``steps``,
            the final weights validated once against the base: with a few validation
            images, choosing among checkpoints chose noise; bench/RESULTS.md).
        threads: CPU threads, at most this machine's cores (default: the free cores).
        device: ``"cpu"``, ``"cuda"`` (default: CUDA when available).
        seed: random seed, 0 .. 2**32 - 1 (numpy's and PyTorch's range).

    Raises:
        InvalidInputError: no training samples, bad numbers.
        MissingDependencyError: PyTorch is not installed.
    """
    torch = import_torch()
    from edgedb.train.data import batches
    from edgedb.train.loss import db_loss
    from edgedb.train.model import TrainableDBNet, load_base

    train = list(train)
    if not train:
        raise InvalidInputError("no training images")
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("crop", crop, 64)):
        integer_at_least(name, value, low)
    if not 0 <= freeze < 1:
        raise InvalidInputError(f"freeze must be a fraction in [0, 1), not {freeze!r}")
    if not lr > 0:
        raise InvalidInputError(f"lr must be positive, not {lr!r}")
    threads = thread_count("threads", threads)
    seed = seed_value("seed", seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if val is None:
        if len(train) < 2:
            raise InvalidInputError("give validation images (val) or at least two training images to split")
        order = rng.permutation(len(train))
        held = max(1, int(round(len(train) * val_fraction)))
        val = [train[i] for i in order[:held]]
        train = [train[i] for i in order[held:]]
    torch.set_num_threads(threads or free_cores())
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    model, spec = load_base(base, spec)
    net = TrainableDBNet(model, spec, threshold_head=loss == "db").to(device)
    if freeze:
        log.info("kept %d weight tensors of the base fixed", net.freeze_early(freeze))
    validator = Validator(val, stride=spec.stride)
    base_scores = _validate(net, validator, device)
    log.info("base model on %d validation images: %s", len(val), base_scores)

    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    warmup = max(1, steps // 20)
    val_every = val_every or steps
    stream = batches(train, batch_size, rng, crop=(crop, crop), scale=tuple(scale))
    best_scores, best_step, best_state = base_scores, 0, None
    # Validation and export use an exponential moving average of the weights: with a few
    # dozen images, single steps move the map a lot and a 10-image validation picks
    # lucky noise; the average is the steadier model.
    average = _WeightAverage(net, ema) if ema else None
    history = []
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(range(steps), desc="fine-tune", unit="step", disable=not progress)
    for step in bar:
        net.train(True)
        batch = next(stream)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, lr, warmup)
        images = torch.from_numpy(batch["image"]).to(device)
        labels = {k: torch.from_numpy(batch[k]).to(device)
                  for k in ("shrink", "shrink_mask", "threshold", "threshold_mask")}
        prob, thresh = net(images)
        total, terms = db_loss(prob, thresh, labels, mode=loss, binary_loss=binary_loss)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if average is not None:
            average.update(net)
        hmean = None
        if (step + 1) % val_every == 0 or step + 1 == steps:
            live = average.swap_in(net) if average is not None else None
            scores = _validate(net, validator, device)
            hmean = scores.hmean
            if scores.hmean > best_scores.hmean:
                best_scores, best_step, best_state = scores, step + 1, net.state()
            if live is not None:
                net.load_state(live)
            bar.set_postfix(loss=f"{terms.total:.3f}", val_h=f"{scores.hmean:.3f}", best=f"{best_scores.hmean:.3f}")
        else:
            bar.set_postfix(loss=f"{terms.total:.3f}", best=f"{best_scores.hmean:.3f}")
        history.append((step + 1, terms, hmean))
    bar.close()
    seconds = time.perf_counter() - start
    exported = None
    if best_state is not None:
        net.load_state(best_state)
        net.to("cpu")
        exported = net.export()
    return FinetuneResult(base_scores, best_scores, best_step, steps, seconds, exported, history)


class _WeightAverage:
    """An exponential moving average of every trained tensor (and BN statistics), with a
    bias correction for the first steps."""

    def __init__(self, net, decay: float):
        self.decay, self.updates = decay, 0
        self.state = {k: v.float() if v.is_floating_point() else v for k, v in net.state().items()}

    def update(self, net) -> None:
        import torch

        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for key, value in net.tensors().items():
                if value.is_floating_point():
                    self.state[key].mul_(decay).add_(value, alpha=1 - decay)
                else:
                    self.state[key].copy_(value)

    def swap_in(self, net) -> dict:
        """Loads the average into ``net``; returns the live weights to load back."""
        live = net.state()
        net.load_state(self.state)
        return live


def _validate(net, validator, device: str):
    """Validation runs on the CPU (its frames and box formation are there)."""
    if device == "cpu":
        return validator(net)
    net.to("cpu")
    try:
        return validator(net)
    finally:
        net.to(device)
