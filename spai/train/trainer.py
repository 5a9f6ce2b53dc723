"""The training loop: two stages, AdamW + per-iteration cosine schedule, AMP, accumulation, clipping, DDP,
per-epoch validation, atomic checkpoints every epoch, ``best.pth``, exact resume and a NaN guard."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from spai.data.csv_dataset import CSVImageDataset, EpochTaggedSampler, collate_train, read_split_csv
from spai.data.transforms import TrainTransform
from spai.errors import CalibrationError, ConfigError, DataError, SPAIError
from spai.files import atomic_path
from spai.lazy import lazy_import
from spai.model.checkpoint import load_state_dict_strict, read_checkpoint_file, save_checkpoint, save_payload
from spai.model.config import Config
from spai.train import distributed as dist_utils
from spai.train.calibration import DEFAULT_FPRS, DEFAULT_METHOD, calibration_summary
from spai.train.evaluate import evaluate_scores, make_eval_loader, score_loader
from spai.train.losses import total_loss
from spai.train.metrics import MetricsLog
from spai.train.params import build_optimizer, set_stage, stage_for_epoch
from spai.train.schedule import CosineWarmupSchedule
from spai.train.state import capture_rng, latest_checkpoint, restore_rng

tqdm_module = lazy_import("tqdm")

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """What ``spai train`` passes in (``cfg`` already has --opt / --epochs applied)."""

    cfg: Config
    data_csv: str | os.PathLike
    output: str | os.PathLike
    val_csv: str | os.PathLike | None = None
    root: str | os.PathLike | None = None
    resume: bool = False
    workers: int | None = None
    strict: bool = False
    device: str | None = None
    progress: bool = True
    tensorboard: bool = True
    calibration: str | None = DEFAULT_METHOD  # calibrate best.pth on the validation split (None: leave it raw)
    calibration_fprs: tuple[float, ...] = DEFAULT_FPRS


class ForwardWithAux(nn.Module):
    """``images -> (logits, aux)`` so DDP sees the consistency-loss inputs as outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        aux: dict[str, torch.Tensor] = {}
        return self.model(images, aux=aux), aux


@dataclass
class Trainer:
    """State of one run; build it with :func:`build_trainer`."""

    opts: TrainOptions
    model: Any
    device: torch.device
    train_loader: DataLoader
    sampler: EpochTaggedSampler
    val_dataset: CSVImageDataset | None
    optimizer: torch.optim.Optimizer
    schedule: CosineWarmupSchedule
    scaler: Any
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    start_epoch: int = 0
    stage: int = 0
    wrapped: nn.Module | None = None
    best_score: list[float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    skipped_missing: int = 0

    @property
    def cfg(self) -> Config:
        return self.opts.cfg

    @property
    def output(self) -> Path:
        return Path(self.opts.output)


# --- setup ----------------------------------------------------------------------------------------------------
def resolve_device(requested: str | None, local_rank: int) -> torch.device:
    """``cuda:<local_rank>`` when available (or asked), else CPU."""
    if requested in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested} asked for a GPU but CUDA is not available here.")
    return torch.device(requested)


def resolve_amp(cfg: Config, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """(autocast dtype or None, GradScaler or None) from TRAIN.AMP: auto = bf16 if supported else fp16 on GPU,
    fp32 on CPU."""
    mode = str(cfg.TRAIN.AMP).lower()
    if mode not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"TRAIN.AMP must be auto, bf16, fp16 or fp32, got {cfg.TRAIN.AMP!r}.")
    if device.type != "cuda" or mode == "fp32":
        return None, None
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "bf16":
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _load_records(csv_path: Any, split: str, opts: TrainOptions, what: str) -> tuple[list, int]:
    records, missing = read_split_csv(csv_path, split, opts.root, strict=opts.strict)
    if missing:
        log.warning("%s: skipped %d missing image(s) of split %r (first: %s)", csv_path, len(missing), split,
                    missing[0])
    if not records and what == "training":
        raise DataError(f"{csv_path} has no usable {split!r} rows for {what}; check the 'split' column "
                        "(train/val/test) and the image paths.")
    return records, len(missing)


def build_datasets(opts: TrainOptions) -> tuple[CSVImageDataset, CSVImageDataset | None, int]:
    """Training dataset (split train), validation dataset (split val of --val or of the training CSV) and the
    number of missing files skipped."""
    cfg = opts.cfg
    limits = {"max_pixels": cfg.DATA.MAX_IMAGE_PIXELS, "max_bytes": cfg.DATA.MAX_IMAGE_BYTES}
    train_records, missing = _load_records(opts.data_csv, "train", opts, "training")
    val_records, val_missing = _load_records(opts.val_csv or opts.data_csv, "val", opts, "validation")
    if not val_records:
        log.warning("no validation rows (split 'val'): metrics will only hold the training loss")
    train = CSVImageDataset(train_records, TrainTransform(cfg), seed=int(cfg.SEED), **limits)
    val = CSVImageDataset(val_records, None, seed=int(cfg.SEED), **limits) if val_records else None
    return train, val, missing + val_missing


def build_train_loader(cfg: Config, dataset: CSVImageDataset, workers: int, device: torch.device
                       ) -> tuple[DataLoader, EpochTaggedSampler]:
    """Shuffled (DistributedSampler, seeded per epoch), drop_last, pinned memory on GPU."""
    world = torch.distributed.get_world_size() if dist_utils.is_distributed() else 1
    batch = int(cfg.DATA.BATCH_SIZE)
    if len(dataset) < batch * world:
        raise DataError(f"{len(dataset)} training images are fewer than one batch (DATA.BATCH_SIZE {batch} x "
                        f"{world} process(es)); lower DATA.BATCH_SIZE or add data.")
    base = DistributedSampler(dataset, num_replicas=world, rank=dist_utils.rank(), shuffle=True,
                              seed=int(cfg.SEED), drop_last=True)
    sampler = EpochTaggedSampler(base)
    extra = {"prefetch_factor": int(cfg.DATA.PREFETCH_FACTOR), "persistent_workers": True} if workers else {}
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        collate_fn=collate_train, pin_memory=bool(cfg.DATA.PIN_MEMORY) and device.type == "cuda",
                        generator=torch.Generator().manual_seed(int(cfg.SEED)), **extra)
    return loader, sampler


def build_trainer(opts: TrainOptions, local_rank: int = 0) -> Trainer:
    """Model, data, optimizer, schedule and AMP for ``opts``; resumes when asked."""
    import spai

    cfg = opts.cfg
    device = resolve_device(opts.device, local_rank)
    torch.manual_seed(int(cfg.SEED))
    model = spai.create_model(cfg, device=device)
    train_ds, val_ds, missing = build_datasets(opts)
    workers = int(cfg.DATA.NUM_WORKERS if opts.workers is None else opts.workers)
    loader, sampler = build_train_loader(cfg, train_ds, workers, device)
    accumulation = max(1, int(cfg.TRAIN.ACCUMULATION_STEPS))
    steps = max(1, len(loader) // accumulation)
    epochs = int(cfg.TRAIN.EPOCHS)
    optimizer = build_optimizer(model, cfg)
    schedule = CosineWarmupSchedule(optimizer, cfg.TRAIN.BASE_LR, epochs * steps,
                                    int(cfg.TRAIN.WARMUP_EPOCHS) * steps, cfg.TRAIN.WARMUP_LR, cfg.TRAIN.MIN_LR)
    amp_dtype, scaler = resolve_amp(cfg, device)
    trainer = Trainer(opts, model, device, loader, sampler, val_ds, optimizer, schedule, scaler, amp_dtype, steps,
                      skipped_missing=missing)
    if opts.resume:
        resume(trainer)
    return trainer


def resume(trainer: Trainer) -> None:
    """Load the newest complete ``ckpt_epoch_N.pth`` in the output directory (weights, optimizer, schedule,
    scaler, RNG states, history) and continue at epoch N + 1."""
    found = latest_checkpoint(trainer.output)
    if found is None:
        log.info("--resume: no checkpoint in %s yet, starting from scratch", trainer.output)
        return
    path, data = found
    load_state_dict_strict(trainer.model, data["model"], str(path))
    trainer.optimizer.load_state_dict(data["optimizer"])
    trainer.schedule.load_state_dict(data["lr_scheduler"])
    if trainer.scaler is not None and data.get("scaler"):
        trainer.scaler.load_state_dict(data["scaler"])
    rng = data.get("rng") or []
    if rng:
        restore_rng(rng[dist_utils.rank()] if dist_utils.rank() < len(rng) else rng[0])
    trainer.start_epoch = int(data["epoch"]) + 1
    trainer.best_score = data.get("best_score")
    trainer.history = list(data.get("history") or [])
    trainer.last_checkpoint = path
    log.info("resumed from %s: continuing at epoch %d of %d", path, trainer.start_epoch, trainer.cfg.TRAIN.EPOCHS)


def enter_stage(trainer: Trainer, epoch: int) -> None:
    """Switch ``requires_grad`` for the epoch's stage and (re)wrap in DDP: DDP records trainable params once."""
    stage = stage_for_epoch(epoch, trainer.cfg.TRAIN.FUSION_ONLY_EPOCHS)
    if stage == trainer.stage and trainer.wrapped is not None:
        return
    trainer.stage = stage
    set_stage(trainer.model, stage)
    wrapped: nn.Module = ForwardWithAux(trainer.model)
    if dist_utils.is_distributed():
        ids = [trainer.device.index] if trainer.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids, broadcast_buffers=False)
    trainer.wrapped = wrapped


def _autocast(trainer: Trainer) -> contextlib.AbstractContextManager:
    if trainer.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=trainer.device.type, dtype=trainer.amp_dtype)


def _nan_error(trainer: Trainer, epoch: int, step: int, parts: dict[str, float]) -> SPAIError:
    last = trainer.last_checkpoint or "none yet"
    return SPAIError(f"training stopped: the loss became NaN/inf at epoch {epoch}, step {step} "
                     f"(loss parts: {parts}). The last good checkpoint is intact: {last}. Lower TRAIN.BASE_LR, "
                     "set TRAIN.CLIP_GRAD, or use TRAIN.AMP fp32/bf16, then resume with --resume.")


def optimizer_step(trainer: Trainer, iteration: int) -> float:
    """Schedule, unscale, clip and step; returns the learning rate used."""
    lr = trainer.schedule.step(iteration)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    if trainer.scaler is not None:
        trainer.scaler.unscale_(trainer.optimizer)
    if trainer.cfg.TRAIN.CLIP_GRAD:
        torch.nn.utils.clip_grad_norm_(params, float(trainer.cfg.TRAIN.CLIP_GRAD))
    if trainer.scaler is not None:
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
    else:
        trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return lr


def _micro_step(trainer: Trainer, batch: dict[str, Any], sync: bool, scale: float) -> tuple[float, dict, int]:
    """Forward + backward of one batch; returns (loss, parts, images)."""
    images = batch["images"].to(trainer.device, non_blocking=True).float().div_(255.0)
    labels = batch["labels"].to(trainer.device, non_blocking=True)
    no_sync = getattr(trainer.wrapped, "no_sync", None)
    ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
    with ctx:
        with _autocast(trainer):
            logits, aux = trainer.wrapped(images)
        loss, parts = total_loss(trainer.cfg, logits.float(), labels, aux)
        bad = dist_utils.any_rank(not math.isfinite(float(loss.detach())), trainer.device)
        if bad:
            return float("nan"), parts, 0
        scaled = loss * scale
        (trainer.scaler.scale(scaled) if trainer.scaler is not None else scaled).backward()
    return float(loss.detach()), parts, len(labels)


def _report_errors(trainer: Trainer, errors: list[tuple[int, str]]) -> None:
    if not errors:
        return
    if trainer.opts.strict:
        raise DataError(f"{len(errors)} image(s) could not be decoded (first: {errors[0][1]}); fix or remove "
                        "them, or drop --strict to skip unreadable images.")
    for _, message in errors:
        log.warning("skipped unreadable image: %s", message)


def train_one_epoch(trainer: Trainer, epoch: int) -> dict[str, Any]:
    """One pass over the training data; returns loss, image count, skipped count, seconds and images/s."""
    accumulation = max(1, int(trainer.cfg.TRAIN.ACCUMULATION_STEPS))
    trainer.model.train()
    trainer.sampler.set_epoch(epoch)
    total, images, skipped, start = 0.0, 0, 0, time.perf_counter()
    usable = trainer.steps_per_epoch * accumulation
    bar = tqdm_module.tqdm(trainer.train_loader, total=usable, desc=f"epoch {epoch} (stage {trainer.stage})",
                           unit="batch", disable=not (trainer.opts.progress and dist_utils.rank() == 0),
                           dynamic_ncols=True)
    lr = trainer.schedule.lr_at(epoch * trainer.steps_per_epoch)
    for i, batch in enumerate(bar):
        if i >= usable:
            break
        _report_errors(trainer, batch["errors"])
        skipped += len(batch["errors"])
        sync = (i + 1) % accumulation == 0
        if len(batch["labels"]):
            loss, parts, n = _micro_step(trainer, batch, sync, 1.0 / accumulation)
            if not math.isfinite(loss):
                raise _nan_error(trainer, epoch, i, parts)
            total, images = total + loss * n, images + n
        if sync:
            lr = optimizer_step(trainer, epoch * trainer.steps_per_epoch + i // accumulation)
        rate = images / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(loss=f"{total / max(images, 1):.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
    bar.close()
    seconds = time.perf_counter() - start
    world_images = images * (torch.distributed.get_world_size() if dist_utils.is_distributed() else 1)
    return {"train_loss": dist_utils.mean_over_ranks(total / max(images, 1), trainer.device), "lr": lr,
            "train_images": world_images, "skipped_images": skipped, "epoch_seconds": seconds,
            "images_per_s": world_images / max(seconds, 1e-9)}


def score_validation(trainer: Trainer, desc: str = "validate") -> dict[str, Any]:
    """:func:`score_loader` over the validation set at original resolution (over all ranks)."""
    cfg = trainer.cfg
    batch = int(cfg.DATA.VAL_BATCH_SIZE or cfg.DATA.BATCH_SIZE)
    workers = int(cfg.DATA.NUM_WORKERS if trainer.opts.workers is None else trainer.opts.workers)
    loader = make_eval_loader(trainer.val_dataset, batch, min(workers, 2))
    scores = score_loader(trainer.model, loader, trainer.opts.progress and dist_utils.rank() == 0, desc)
    _report_errors(trainer, [e for e in scores["errors"]])
    return scores


def validate(trainer: Trainer) -> dict[str, Any]:
    """Validation metrics at original resolution (val_loss, val_auc, val_ap, val_acc)."""
    if trainer.val_dataset is None:
        return {}
    cfg = trainer.cfg
    scores = score_validation(trainer)
    metrics = evaluate_scores(cfg, scores)
    if metrics["auc"] is None:
        log.warning("validation set has a single class: AUC is undefined (reported as empty/null)")
    return {f"val_{k}": metrics[k] for k in ("loss", "auc", "ap", "acc")}


def _score(row: dict[str, Any]) -> list[float] | None:
    """Model selection key: validation AUC, ties broken by the lower validation loss (AUC saturates early on easy
    data while the logits are still uncalibrated); minus the loss alone when AUC is undefined."""
    loss = -float(row["val_loss"]) if row.get("val_loss") is not None else None
    if row.get("val_auc") is not None:
        return [float(row["val_auc"]), loss if loss is not None else float("-inf")]
    return [loss] if loss is not None else None


def _improves(score: list[float] | None, best: Any) -> bool:
    if score is None:
        return False
    if best is None or len(best) != len(score):  # also a best_score from an older checkpoint (a float)
        return best is None or not isinstance(best, list)
    return tuple(score) > tuple(best)


def save_epoch(trainer: Trainer, epoch: int, row: dict[str, Any]) -> Path:
    """``ckpt_epoch_<epoch>.pth`` (full training state, atomic) and ``best.pth`` when the score improves."""
    rng = dist_utils.all_gather_objects(capture_rng())
    score = _score(row)
    improved = _improves(score, trainer.best_score)
    if improved:
        trainer.best_score = score
    path = trainer.output / f"ckpt_epoch_{epoch}.pth"
    if dist_utils.rank() == 0:
        save_checkpoint(trainer.model, path, optimizer=trainer.optimizer.state_dict(),
                        lr_scheduler=trainer.schedule.state_dict(),
                        scaler=trainer.scaler.state_dict() if trainer.scaler is not None else None,
                        epoch=epoch, stage=trainer.stage, rng=rng, metrics=row, history=trainer.history,
                        best_score=trainer.best_score)
        if improved:
            with atomic_path(trainer.output / "best.pth", fsync=True) as tmp:
                shutil.copyfile(path, tmp)
    dist_utils.barrier()
    trainer.last_checkpoint = path
    return path


def calibrate_best(trainer: Trainer) -> dict[str, Any] | None:
    """Calibrate ``best.pth`` on the validation split, as ``spai calibrate --split val`` would (its weights are
    loaded into the model first): the ``calibration`` entry is added in place, atomically. A validation set
    that cannot calibrate (one class, too few real images for every target FPR) leaves best.pth uncalibrated,
    with a warning."""
    from spai.train.testing import calibration_entry

    best = trainer.output / "best.pth"
    if not trainer.opts.calibration or trainer.val_dataset is None or not best.is_file():
        return None
    data = read_checkpoint_file(best)
    load_state_dict_strict(trainer.model, data["model"], str(best))
    scores = score_validation(trainer, "calibrate")
    val_csv = trainer.opts.val_csv or trainer.opts.data_csv
    try:
        entry = calibration_entry(scores, val_csv, "val", trainer.opts.calibration, trainer.opts.calibration_fprs)
    except CalibrationError as e:
        log.warning("best.pth left uncalibrated: %s", e)
        return None
    if dist_utils.rank() == 0:
        entry["checkpoint"] = str(best)
        save_payload({**data, "calibration": entry}, best)
        log.info("calibrated best.pth (epoch %s) on the validation split:\n%s", data.get("epoch"),
                 calibration_summary(entry))
    dist_utils.barrier()
    return entry


def setup_logging(output: Path) -> None:
    """INFO to stderr and ``train.log`` on rank 0; warnings only on the other ranks."""
    logger = logging.getLogger("spai")
    logger.setLevel(logging.INFO if dist_utils.rank() == 0 else logging.WARNING)
    for handler in list(logger.handlers):
        if getattr(handler, "_spai_train", False):
            logger.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if dist_utils.rank() == 0:
        handlers.append(logging.FileHandler(output / "train.log"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._spai_train = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def run_epochs(trainer: Trainer) -> list[dict[str, Any]]:
    """Train from ``start_epoch`` to TRAIN.EPOCHS; returns the metric history."""
    metrics_log = MetricsLog(trainer.output, trainer.history, trainer.opts.tensorboard) \
        if dist_utils.rank() == 0 else None
    try:
        for epoch in range(trainer.start_epoch, int(trainer.cfg.TRAIN.EPOCHS)):
            enter_stage(trainer, epoch)
            row = {"epoch": epoch, "stage": trainer.stage, **train_one_epoch(trainer, epoch), **validate(trainer)}
            row["skipped_images"] = row.get("skipped_images", 0) + (trainer.skipped_missing if epoch == 0 else 0)
            trainer.history.append(row)
            if metrics_log is not None:
                metrics_log.history = trainer.history[:-1]
                metrics_log.add(row)
            save_epoch(trainer, epoch, row)
            log.info("epoch %d stage %d: train_loss %.4f val_loss %s val_auc %s val_acc %s (%.1f s, %.1f img/s)",
                     epoch, trainer.stage, row["train_loss"], _fmt(row.get("val_loss")), _fmt(row.get("val_auc")),
                     _fmt(row.get("val_acc")), row["epoch_seconds"], row["images_per_s"])
    finally:
        if metrics_log is not None:
            metrics_log.close()
    return trainer.history


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def train(opts: TrainOptions) -> list[dict[str, Any]]:
    """Run (or resume) a training run described by ``opts``; returns the per-epoch metric history."""
    _, _, local_rank = dist_utils.init_distributed()
    output = Path(opts.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Cannot create output directory {output}: {e.strerror}.") from e
    setup_logging(output)
    trainer = build_trainer(opts, local_rank)
    if trainer.start_epoch >= int(trainer.cfg.TRAIN.EPOCHS):
        log.info("nothing to do: %s already holds epoch %d of %d", output, trainer.start_epoch - 1,
                 trainer.cfg.TRAIN.EPOCHS)
        return trainer.history
    log.info("training %s on %s: %d train images, %d val images, %d steps/epoch, AMP %s",
             trainer.cfg.MODEL.NAME, trainer.device, len(trainer.train_loader.dataset),
             len(trainer.val_dataset) if trainer.val_dataset is not None else 0, trainer.steps_per_epoch,
             trainer.amp_dtype or "off (fp32)")
    history = run_epochs(trainer)
    calibrate_best(trainer)
    return history
