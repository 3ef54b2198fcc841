"""A training run on disk: ``runs/NAME/{config.yaml, checkpoint.pt, history.json, keep_probs.json}``.

``checkpoint.pt`` is rewritten atomically every ``train.checkpoint_every`` epochs /
``train.checkpoint_every_steps`` steps, on SIGINT, after the last epoch (before BN calibration
and the other post-training steps) and at the end (``complete: True``); :func:`resume_run`
continues an unfinished run exactly where its checkpoint left it, and starts a run that stopped
before its first checkpoint over from its ``config.yaml``. Writers hold the run's lock and only
replace recognisable runs (:mod:`bnn_nested.runs.rundir`).
"""

from __future__ import annotations

import io
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader

from bnn_nested.config import Config, ConfigError, build_config, import_modules, load_config
from bnn_nested.data import DATASETS, DataSplits, load_dataset
from bnn_nested.evaluation.calibration import (
    TEMPERATURE_FILE,
    calibrated_predict,
    load_temperatures,
    temperature_for,
)
from bnn_nested.evaluation.ordering import keep_probs_now, write_ordering_report
from bnn_nested.evaluation.prediction import predict
from bnn_nested.io import (
    JsonFileError,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    first_line,
    is_number,
    read_json,
)
from bnn_nested.models import build_model
from bnn_nested.models.registry import MODELS, check_model_options
from bnn_nested.nest import (
    NestifiedModel,
    check_plain_state,
    init_ordering_from_importance,
    load_plain_weights,
    order_by_importance,
    plain_copy,
    read_plain_state,
)
from bnn_nested.nn.batchnorm import nested_norms, recalibrate_bn
from bnn_nested.regularization.config import build_regularizer
from bnn_nested.runs.rundir import (
    RunExistsError,
    RunLock,
    check_replaceable,
    clear_run,
    is_empty,
    is_run_dir,
    remove_orphans,
    write_marker,
)
from bnn_nested.safeyaml import read_text_file, safe_load
from bnn_nested.threads import apply_threads
from bnn_nested.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    nonfinite_tensors,
    read_checkpoint,
    require_finite,
    require_keys,
    save_checkpoint,
)
from bnn_nested.training.distributed import (
    DistContext,
    EpochSampler,
    env_world_size,
    setup_distributed,
)
from bnn_nested.training.optim import Precision, resolve_device
from bnn_nested.training.samplers import SAMPLERS, build_sampler
from bnn_nested.training.tensorboard import LOG_DIR, TensorBoardLogger, require_tensorboard
from bnn_nested.training.trainer import Trainer, TrainingInterrupted

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def build_model_for(cfg: Config, splits: DataSplits) -> NestifiedModel:
    """The model a config describes, with ordering units configured by its width sampler."""
    sampler = build_sampler(cfg.ordering)
    return build_model(cfg.model, sampler.ordering_kwargs(), splits.input_shape, splits.num_classes)


def make_loaders(
    cfg: Config,
    splits: DataSplits,
    dist: DistContext | None = None,
    device: torch.device | str = "cpu",
) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    """Train / val / test loaders. The training order of epoch ``e`` depends only on
    ``(cfg.seed, e)`` (:class:`EpochSampler`), so a resumed run sees the same batches; with
    ``world_size`` ranks each takes ``data.batch_size / world_size`` examples of every global batch.
    Pinned memory on CUDA. The val loader is ``None`` for data without a validation split
    (``splits.has_val``): training then logs no ``val_acc`` and re-estimates no batch norm for it."""
    dist = dist or DistContext()
    if cfg.data.batch_size % dist.world_size:
        raise ValueError(
            f"data.batch_size ({cfg.data.batch_size}) is the global batch and must be divisible "
            f"by the number of processes ({dist.world_size})"
        )
    pin = torch.device(device).type == "cuda"
    kw: dict[str, Any] = {"num_workers": cfg.data.num_workers, "pin_memory": pin}
    sampler = EpochSampler(splits.train, cfg.seed, dist.rank, dist.world_size)
    train = DataLoader(
        splits.train,
        batch_size=cfg.data.batch_size // dist.world_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(cfg.seed),
        **kw,
    )
    val = (
        DataLoader(
            splits.val,
            batch_size=cfg.data.eval_batch_size,
            generator=torch.Generator().manual_seed(cfg.seed),
            **kw,
        )
        if splits.has_val
        else None
    )
    test = DataLoader(
        splits.test,
        batch_size=cfg.data.eval_batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
        **kw,
    )
    return train, val, test


def check_run_dir(out: str | Path, overwrite: bool = False) -> None:
    """Refuse an existing non-empty ``out`` unless ``overwrite`` and it is a bnn-nested run that
    holds only files bnn-nested writes (:func:`~bnn_nested.runs.rundir.check_replaceable`).
    Nothing is touched."""
    if str(out).strip() == "":
        raise RunExistsError("--out: empty path; name the run directory to create")
    out = Path(out)
    if out.is_symlink():
        target = os.readlink(out)
        raise RunExistsError(
            f"--out: {out} is a symbolic link (to {target[:200]}); runs are not written through "
            "links: give the folder itself"
        )
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"--out: {out} exists and is not a directory")
    if out.exists() and not is_empty(out):
        if not overwrite:
            raise RunExistsError(f"{out} already exists; pass --overwrite to replace it")
        check_replaceable(out)


def prepare_run_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Create ``out`` and mark it as a run; with ``overwrite`` replace a run that was there. Call
    while holding the run's lock (:class:`~bnn_nested.runs.rundir.RunLock`)."""
    out = Path(out)
    check_run_dir(out, overwrite)
    write_marker(out)  # first: a kill while clearing leaves a run the next --overwrite accepts
    clear_run(out)
    return out


def resume_command(out: str | Path, world_size: int = 1, cfg: Config | None = None) -> str:
    """The command that resumes ``out`` (with ``world_size`` processes under torchrun; with
    ``--allow-import`` when ``cfg`` imports modules, which ``--resume`` refuses without it)."""
    trust = " --allow-import" if cfg is not None and imports_code(cfg) else ""
    if world_size > 1:
        return f"torchrun --nproc_per_node={world_size} -m bnn_nested train --resume {out}{trust}"
    return f"bnn-nested train --resume {out}{trust}"


def imports_code(cfg: Config) -> bool:
    """Does the config import modules (``imports``, or ``model.name: import``)?"""
    return bool(cfg.imports) or cfg.model.name == "import"


#: Input shape and class count of the data sets whose shapes are known without reading them
#: (ImageFolder's are not), so a bad model config fails before any data is loaded.
KNOWN_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "digits": (64,),
    "mnist5k": (1, 28, 28),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
}
KNOWN_NUM_CLASSES: dict[str, int] = {
    "digits": 10,
    "mnist5k": 10,
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "svhn": 10,
}


def validate_run(cfg: Config) -> torch.device:
    """Checks that need no data (run before anything is written or loaded); returns the device."""

    import_modules(cfg)  # the config's ``imports``: user modules that register models / data
    MODELS[cfg.model.name]  # unknown names: one line listing the accepted ones
    check_model_options(cfg.model)  # e.g. model.variant given to an mlp
    DATASETS[cfg.data.name]
    SAMPLERS[cfg.ordering.sampler]
    shape = KNOWN_INPUT_SHAPES.get(cfg.data.name)
    if shape is not None:  # build the model without memory: groups, hidden sizes, variants
        n_classes = KNOWN_NUM_CLASSES[cfg.data.name] - len(cfg.data.held_out_classes)
        try:
            with torch.device("meta"):
                kw = build_sampler(cfg.ordering).ordering_kwargs()
                meta = build_model(cfg.model, kw, shape, n_classes)
            if cfg.model.init_from:  # shapes, no memory
                path = cfg.model.init_from
                check_plain_state(read_plain_state(path), meta.net.state_dict(), path)
        except ValueError as err:
            msg = str(err)
            raise ValueError(msg if msg.startswith("model") else f"model: {msg}") from None
    if cfg.train.log == "tensorboard":
        require_tensorboard()
    device = resolve_device(cfg.train.device)
    Precision(cfg.train.precision, device)  # fp16 needs CUDA: refused before any file is written
    world = env_world_size()
    if cfg.data.batch_size % world:
        raise ValueError(
            f"data.batch_size ({cfg.data.batch_size}) must be divisible by WORLD_SIZE ({world})"
        )
    return device


def train_run(cfg: Config, out: str | Path, quiet: bool = False, overwrite: bool = False) -> Path:
    """Train the configured model and write the run directory. Returns its path.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every rank calls this; only rank 0 writes.

    Example::

        out = train_run(load_config("configs/digits_mlp.yaml"), "runs/demo")
        run = load_run(out); run.model, run.config, run.splits
    """
    device = validate_run(cfg)
    check_run_dir(out, overwrite)
    out = Path(out)
    ctx = setup_distributed(device)
    created = False
    lock = RunLock(out)
    try:
        ctx.barrier()  # every rank has checked ``out`` before rank 0 creates it
        if ctx.is_main:
            created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # a second writer stops here, before anything is deleted
            prepare_run_dir(out, overwrite)  # checked again under the lock
            atomic_write_text(out / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return _train(cfg, out, ctx, quiet)
    except Exception:
        if ctx.is_main and created and lock.held and not (out / CHECKPOINT).exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping
        raise
    finally:
        lock.release()
        ctx.close()


def resume_run(
    run_dir: str | Path,
    quiet: bool = False,
    device: str | None = None,
    allow_import: bool = False,
) -> Path:
    """Continue an unfinished run from ``run_dir/checkpoint.pt`` (same result as never stopping).

    Args:
        run_dir: a run directory written by :func:`train_run`.
        device: ``cpu`` | ``cuda`` | ``auto`` to override the stored ``train.device``.
        allow_import: trust the run's config to import modules (``imports``, ``model.name:
            import``): a run directory may come from someone else, and importing runs code, so
            such a run is refused without it, as by ``evaluate`` and the other readers
            (:func:`check_run_imports`).

    Raises:
        CheckpointError: missing, corrupt, truncated or incompatible checkpoint (one line naming
            the file; the file is never modified); :class:`RunImportRefused` (a subclass) for a
            config that imports modules without ``allow_import``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    path = run_dir / CHECKPOINT
    lock = RunLock(run_dir)
    writable = is_run_dir(run_dir) or path.is_file()  # else: an error below, nothing written
    if writable and _rank_zero():  # rank 0 writes: it holds the lock
        lock.acquire()
    try:
        if lock.held:
            remove_orphans(run_dir)  # temporary files of writes a kill interrupted
        if not path.exists() and is_run_dir(run_dir) and (run_dir / CONFIG).is_file():
            # stopped before its first checkpoint
            return _start_over(run_dir, quiet, device, allow_import)
        state = load_checkpoint(path)
        require_keys(
            path, state, ("config", "model", "optimizer", "generator", "step", "epoch", "rng")
        )
        try:
            raw = dict(state["config"])
            if device is not None:
                raw["train"] = {**raw.get("train", {}), "device": device}
            cfg = build_config(raw)
        except (ConfigError, TypeError) as err:
            raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from None
        if state.get("complete", False):
            raise ValueError(
                f"{run_dir}: run already finished (epoch {state['epoch']}/{cfg.train.epochs}); "
                "nothing to resume"
            )
        if isinstance(state["model"], dict):
            require_finite(path, state["model"])
        check_run_imports(cfg, allow_import, path)
        dev = validate_run(cfg)
        ctx = setup_distributed(dev)
        try:
            saved_world = state.get("world_size", 1)
            if not isinstance(saved_world, int) or saved_world < 1:
                raise CheckpointError(f"{path}: incompatible checkpoint (world_size)")
            if state.get("batch_in_epoch", 0) and saved_world != ctx.world_size:
                raise CheckpointError(
                    f"{path}: saved mid-epoch by {saved_world} process(es); resume it with: "
                    f"{resume_command(run_dir, saved_world, cfg)}"
                )
            return _train(cfg, run_dir, ctx, quiet, resume=(path, state))
        finally:
            ctx.close()
    finally:
        lock.release()


def _rank_zero() -> bool:
    """This process is rank 0 of its job (or the only one), before the context is set up."""

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def _start_over(run_dir: Path, quiet: bool, device: str | None, allow_import: bool) -> Path:
    """Train a run that stopped before its first checkpoint from the start, in place, from its
    ``config.yaml`` (deterministic: the result is that of an uninterrupted run)."""

    overrides = [f"train.device={device}"] if device is not None else []
    try:
        cfg = load_config(run_dir / CONFIG, overrides)
    except ConfigError as err:
        raise CheckpointError(
            f"{run_dir}: stopped before its first checkpoint and its config.yaml is unusable "
            f"({str(err)[:200]}); start it again with train --overwrite"
        ) from None
    check_run_imports(cfg, allow_import, run_dir / CONFIG)
    dev = validate_run(cfg)
    ctx = setup_distributed(dev)
    try:
        if ctx.is_main:
            (run_dir / TEACHER_FILE).unlink(missing_ok=True)  # rewritten from the config
        return _train(cfg, run_dir, ctx, quiet)
    finally:
        ctx.close()


def _train(
    cfg: Config,
    out: Path,
    ctx: DistContext,
    quiet: bool,
    resume: tuple[Path, dict[str, Any]] | None = None,
) -> Path:
    apply_threads(cfg.train.threads)  # results are bit-identical only at the same thread count
    seed_everything(cfg.seed)  # identical on every rank: same masks and widths on all of them
    splits = load_dataset(cfg.data, seed=cfg.seed)
    model = build_model_for(cfg, splits)
    train_loader, val_loader, _ = make_loaders(cfg, splits, ctx, ctx.device)

    def checkpointer(trainer: Trainer, reason: str) -> Path:
        if ctx.is_main:
            _save_or_explain(out, trainer, cfg, splits, complete=False)
        return out / CHECKPOINT

    hint = resume_command(out, ctx.world_size, cfg)
    try:
        if resume is None:
            teacher = prepare_from_trained(cfg, model, splits, train_loader, out, ctx)
        else:
            teacher = load_teacher(cfg, model, out)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted before the first checkpoint; {hint} starts it over"
            if resume is None
            else f"interrupted while loading; checkpoint {resume[0]} is unchanged; {hint}"
        ) from None
    trainer = Trainer(
        model,
        cfg,
        n_train=splits.num_train,
        regularizer=build_regularizer(cfg.regularization),
        device=ctx.device,
        quiet=quiet,
        dist=ctx,
        checkpointer=checkpointer,
        teacher=teacher,
    )
    if resume is None or cfg.ordering.init != "importance":  # else the init is not rebuilt here
        trainer.initial_keep_probs = keep_probs_now(model)  # before any step (for ordering.md)
    if resume is not None:
        path, state = resume
        trainer.setup(train_loader)
        try:
            trainer.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
            first = first_line(err)
            raise CheckpointError(f"{path}: incompatible checkpoint ({first})") from None
        trainer.last_checkpoint = (path, trainer.step)
    bn_loader = calibration_loader(splits, cfg.data.eval_batch_size) if ctx.is_main else None
    logger = None
    if ctx.is_main and cfg.train.log == "tensorboard":  # after the resumed state is loaded
        logger = TensorBoardLogger(out / LOG_DIR, trainer, cfg.eval.widths, val_loader, bn_loader)
    try:
        trainer.fit(train_loader, val_loader, bn_loader=bn_loader, on_epoch_end=logger)
    except TrainingInterrupted as err:
        raise TrainingInterrupted(f"{err}; resume with: {hint}", err.checkpoint) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the guard was in place
        last = trainer.last_checkpoint
        kept = f"last checkpoint {last[0]} (step {last[1]}) kept" if last else "no checkpoint yet"
        raise TrainingInterrupted(f"interrupted; {kept}; resume with: {hint}") from None
    finally:
        if logger is not None:
            logger.close()
    if ctx.is_main:
        _finish(out, trainer, cfg, splits, model, ctx, hint)
    return out


def _finish(
    out: Path,
    trainer: Trainer,
    cfg: Config,
    splits: DataSplits,
    model: NestifiedModel,
    ctx: DistContext,
    hint: str,
) -> None:
    """The steps after the last epoch (rank 0): BN calibration, history, ordering report and the
    final checkpoint marked ``complete``. The trained state is checkpointed first, so an interrupt
    here loses nothing: ``--resume`` repeats these steps from that checkpoint (same result)."""
    path = _save_or_explain(out, trainer, cfg, splits, complete=False)
    trainer.last_checkpoint = (path, trainer.step)
    try:
        recalibrate_bn_widths(model, splits, cfg.eval.widths, cfg.data.eval_batch_size, ctx.device)
        atomic_write_json(out / "history.json", trainer.history)
        write_ordering_report(
            model,
            out,
            getattr(trainer, "initial_keep_probs", None),
            getattr(trainer, "posterior_history", None),
        )
        bad = nonfinite_tensors(model.state_dict())
        if bad:  # never mark a run complete whose weights are NaN / Inf
            raise FloatingPointError(
                f"non-finite weights after training in {len(bad)} tensor(s) "
                f"({', '.join(bad[:3])[:200]}); {path} (step {trainer.step}) kept, not complete"
            )
        _save_or_explain(out, trainer, cfg, splits, complete=True)  # last: marks the run done
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted after training, during batch-norm calibration and the final save; "
            f"checkpoint {path} (step {trainer.step}) kept; resume with: {hint}",
            path,
        ) from None


def _save_or_explain(
    out: Path, trainer: Trainer, cfg: Config, splits: DataSplits, complete: bool
) -> Path:
    """:func:`save_run_checkpoint`; a failed write (e.g. disk full) names the checkpoint kept."""
    try:
        return save_run_checkpoint(out, trainer, cfg, splits, complete=complete)
    except OSError as err:
        last = trainer.last_checkpoint
        kept = (
            f"the last checkpoint {last[0]} (step {last[1]}) is kept"
            if last is not None and Path(last[0]).exists()
            else "no earlier checkpoint exists"
        )
        reason = err.strerror or str(err)
        raise type(err)(
            err.errno,
            f"could not write {out / CHECKPOINT} at step {trainer.step} ({reason}); {kept}",
        ) from None


#: Batches of the training split used for Taylor importance (Molchanov et al. 2019 use a few
#: hundred examples; 20 batches of 64 is 1,280).
TAYLOR_BATCHES = 20
TEACHER_FILE = "teacher.pt"


def _teacher_copy(model: NestifiedModel, path: str | None) -> nn.Module:
    """The plain network (mean weights, full-width BN statistics), loaded from ``path`` if given."""
    teacher = plain_copy(model)
    if path is not None:
        state = read_plain_state(path, "train.teacher")
        check_plain_state(state, teacher.state_dict(), path, "train.teacher")
        teacher.load_state_dict(state)
    return teacher


def prepare_from_trained(
    cfg: Config, model: NestifiedModel, splits: DataSplits, loader, out: Path, ctx: DistContext
) -> nn.Module | None:
    """From trained weights (issue: "from a trained network"): load ``model.init_from``, keep the
    teacher, order channels by importance, start the ordering posteriors at the importance profile,
    calibrate BN per width. Returns the teacher (or ``None``)."""
    if cfg.model.init_from:
        load_plain_weights(model, cfg.model.init_from)
    teacher = None
    if cfg.train.teacher:
        path = None if cfg.train.teacher == "original" else cfg.train.teacher
        teacher = _teacher_copy(model, path)
        if ctx.is_main:  # kept in the run, so --resume needs nothing outside it
            buf = io.BytesIO()
            torch.save(teacher.state_dict(), buf)
            atomic_write(out / TEACHER_FILE, lambda f: f.write(buf.getvalue()))
    if cfg.model.order == "importance":
        batches = TAYLOR_BATCHES if cfg.model.importance == "taylor" else None
        data = loader if cfg.model.importance == "taylor" else None
        profile = order_by_importance(model, cfg.model.importance, data, batches)
        if cfg.ordering.init == "importance":
            init_ordering_from_importance(model, profile)
    if cfg.model.init_from:
        recalibrate_bn_widths(model, splits, cfg.eval.widths, cfg.data.eval_batch_size, ctx.device)
    return teacher


def load_teacher(cfg: Config, model: NestifiedModel, out: Path) -> nn.Module | None:
    """The teacher a run kept in ``teacher.pt`` (resume)."""
    if not cfg.train.teacher:
        return None
    path = out / TEACHER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: the run's teacher is missing; cannot resume distillation")
    return _teacher_copy(model, str(path))


def recalibrate_bn_widths(
    model: NestifiedModel,
    splits: DataSplits,
    widths: list[float],
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> bool:
    """Re-estimate batch-norm statistics of ``widths`` on the training split (one pass, per width;
    docs/METHODS.md#batch-norm-per-width), on ``device`` (``None``: the model's). Returns ``False``
    (and does nothing) for models without nested batch norm."""
    if not nested_norms(model):
        return False
    recalibrate_bn(model, calibration_loader(splits, batch_size), widths, device=device)
    return True


def calibration_loader(splits: DataSplits, batch_size: int) -> DataLoader:
    """The training split, unshuffled: what batch norm is re-estimated on, at the end of training
    (:func:`recalibrate_bn_widths`) and before each epoch's ``val_acc`` (so the two agree)."""
    return DataLoader(splits.train, batch_size=batch_size)


def save_run_checkpoint(
    out: Path, trainer: Trainer, cfg: Config, splits: DataSplits, complete: bool = True
) -> Path:
    """Write ``out/checkpoint.pt`` (trainer state + config + data meta); ``complete`` marks the
    final one (a complete run cannot be resumed)."""
    state = trainer.state_dict()
    state["config"] = cfg.to_dict()
    state["complete"] = complete
    state["world_size"] = trainer.dist.world_size
    state["meta"] = {
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "num_train": splits.num_train,
    }
    return save_checkpoint(out / CHECKPOINT, state)


def _json_kind(value: Any) -> str:
    """JSON's name for the type of a decoded value (``null``, ``an array``, ...)."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else "true/false"
    kinds = ((str, "a string"), ((int, float), "a number"), (list, "an array"))
    return next((name for t, name in kinds if isinstance(value, t)), "a value")


def check_temperature_file(path: Path) -> None:
    """A run's stored temperatures have the layout ``evaluate --calibrate temperature`` writes
    (``{"step": int, "widths": {width: {"temperature": number > 0}}}``); else a one-line
    ``ValueError`` naming the file and what is wrong (not Python's ``KeyError`` text). A missing
    file is fine (no temperatures)."""
    if not path.exists():
        return
    try:
        doc = read_json(path, "temperature file")
    except JsonFileError as err:
        raise ValueError(f"{err}; refit with evaluate --calibrate temperature") from None
    what = None
    if not isinstance(doc, dict):
        what = f"JSON {_json_kind(doc)}, not an object"
    elif not isinstance(doc.get("widths"), dict):
        what = "no 'widths' mapping"
    elif "step" in doc and (not isinstance(doc["step"], int) or isinstance(doc["step"], bool)):
        what = "'step' is not an integer"
    else:
        for w, entry in doc["widths"].items():
            try:
                ok_width = 0.0 < float(w) <= 1.0
            except ValueError:
                ok_width = False
            t = entry.get("temperature") if isinstance(entry, dict) else None
            if not ok_width:
                what = f"width {w[:40]!r} is not a number in (0, 1]"
            elif not (is_number(t, finite=True) and t > 0):
                what = f"width {w[:40]}: no 'temperature' number > 0"
            if what:
                break
    if what:
        raise ValueError(
            f"{path}: malformed temperature file ({what}); refit with evaluate --calibrate "
            "temperature, or delete it"
        )


#: :meth:`LoadedRun.config_edits` of a ``config.yaml`` that is not a YAML mapping.
UNREADABLE = "<unreadable>"


@dataclass
class LoadedRun:
    model: NestifiedModel
    config: Config
    splits: DataSplits
    checkpoint: dict[str, Any]
    run_dir: Path | None = None
    #: ``{"step", "sha256"}`` of the checkpoint file: caches computed from the run are keyed by it
    checkpoint_id: dict[str, Any] | None = None

    def temperatures(self) -> dict[float, float]:
        """Temperature per width stored in the run (``calibration/temperature.json``, fitted on
        this checkpoint's step; ``{}`` if none); see :mod:`bnn_nested.evaluation.calibration`."""

        if self.run_dir is None:
            return {}
        check_temperature_file(self.run_dir / TEMPERATURE_FILE)
        step = self.checkpoint.get("step")
        if not isinstance(step, int) or isinstance(step, bool):  # a damaged checkpoint's step
            step = -1  # matches no fit: stored temperatures are ignored (with a warning)
        return load_temperatures(self.run_dir, step)

    def predict(
        self, x: torch.Tensor, width: float, samples: int | None = None, calibrated: bool = True
    ) -> torch.Tensor:
        """``(S, B, C)`` probabilities at ``width`` (``samples`` default ``eval.samples``), with
        the run's stored temperature of that width applied when ``calibrated``."""

        t = temperature_for(self.temperatures(), width) if calibrated else 1.0
        return calibrated_predict(self.model, x, width, samples or self.config.eval.samples, t)

    def samples_identical(self, width: float = 1.0, n: int = 16) -> bool:
        """Whether the model's Monte-Carlo samples are all the same network (point weights and no
        dropout or other noise): two samples of ``n`` examples agree to float rounding. Their
        mutual information is then rounding noise, not uncertainty."""
        data = self.splits.val if self.splits.has_val else self.splits.test
        x = torch.stack([data[i][0] for i in range(min(n, len(data)))])
        x = x.to(next(self.model.parameters()).device)
        probs = predict(self.model, x, width, samples=2, chunk=None)
        return bool((probs[0] - probs[1]).abs().max() <= 1e-6)

    @property
    def complete(self) -> bool:
        """The checkpoint is the final one of a finished run."""
        return bool(self.checkpoint.get("complete", False))

    def unfinished_note(self, run_dir: str | Path) -> str | None:
        """One line saying the run is unfinished (``None`` for a finished run)."""
        if self.complete:
            return None
        epoch, step = self.checkpoint.get("epoch", "?"), self.checkpoint.get("step", "?")
        return (
            f"{run_dir} is unfinished (checkpoint at epoch {epoch}/{self.config.train.epochs}, "
            f"step {step}); these numbers are from that checkpoint; finish it with: "
            f"bnn-nested train --resume {run_dir}"
        )

    def config_edits(self) -> list[str]:
        """Dotted keys where the run's ``config.yaml`` differs from the config in its checkpoint
        (the one every command uses: the checkpoint's weights were trained under it), e.g.
        ``["eval.samples"]``; ``[UNREADABLE]`` for a file that is not a YAML mapping; ``[]`` when
        they agree or there is no ``config.yaml``."""
        if self.run_dir is None or not (self.run_dir / CONFIG).exists():
            return []
        try:
            saved = safe_load(read_text_file(self.run_dir / CONFIG, "config"))
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict):
            return [UNREADABLE]
        return _differing_keys(saved, self.checkpoint.get("config", {}))

    def recalibrate_bn(self, widths: list[float]) -> list[float]:
        """Calibrate batch norm for the ``widths`` that training did not (those outside
        ``eval.widths``); returns them."""
        new = [w for w in widths if w not in self.config.eval.widths]
        if new:
            recalibrate_bn_widths(self.model, self.splits, new, self.config.data.eval_batch_size)
        return new


class RunImportRefused(CheckpointError):
    """A run's config would import modules (run code) and the reader did not allow it."""


def check_run_imports(cfg: Config, allow_import: bool, path: str | Path) -> None:
    """Import the modules a run's config names (``imports``; ``model.name: import`` is imported
    when the model is built) only if the reader trusts the run: a run directory may come from
    someone else, and importing runs code. Without ``allow_import`` raise
    :class:`RunImportRefused` (one line naming ``path`` and ``--allow-import``)."""
    if not allow_import:
        names = [cfg.model.target] if cfg.model.name == "import" else []
        names += list(cfg.imports)
        if names:
            shown = ", ".join(repr(str(n)[:80]) for n in names[:3])
            raise RunImportRefused(
                f"{path}: its config imports {shown} (importing runs that code); pass "
                "--allow-import (allow_import=True) only for runs you trust"
            )
    import_modules(cfg)


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (sorted)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differing_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix[:-1] or "config"]


def read_run_checkpoint(
    run_dir: str | Path,
    keys: tuple[str, ...] = ("config", "model"),
    map_location: Any = "cpu",
    allow_import: bool = False,
) -> tuple[Path, dict[str, Any], str, Config]:
    """Open a run directory's checkpoint: ``(path, state, sha256, config)``.

    The one reader :func:`load_run` and :func:`~bnn_nested.runs.pretrained.from_run` share: the
    directory and checkpoint must exist (a run stopped before its first checkpoint says how to
    finish it), the file is read ``weights_only``, ``keys`` must be present, a state-dict model
    must be finite, and the config must validate. A config that imports modules (``imports``,
    ``model.name: import``) is refused unless ``allow_import`` (:func:`check_run_imports`); with
    it the ``imports`` are imported (the registered models and data sets rebuild the run).

    Raises:
        FileNotFoundError: no such directory.
        CheckpointError: one line naming the file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    path = run_dir / CHECKPOINT
    if not path.exists() and is_run_dir(run_dir):
        raise CheckpointError(
            f"{run_dir}: no checkpoint yet (the run stopped or is still before its first one); "
            f"finish it with: bnn-nested train --resume {run_dir}"
        )
    state, digest = read_checkpoint(path, map_location=map_location)
    require_keys(path, state, keys)
    if isinstance(state["model"], dict):
        require_finite(path, state["model"])
    try:
        cfg = build_config(state["config"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from None
    check_run_imports(cfg, allow_import, path)
    return path, state, digest, cfg


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", allow_import: bool = False
) -> LoadedRun:
    """Rebuild the trained model, its config and its data splits from a run directory.

    ``allow_import``: trust the run's config to import modules (its ``imports``, ``model.name:
    import``); without it such a run is refused (:class:`RunImportRefused`), as
    :func:`~bnn_nested.runs.pretrained.from_pretrained` refuses such a directory."""
    run_dir = Path(run_dir)
    _, state, digest, cfg = read_run_checkpoint(
        run_dir, map_location=device, allow_import=allow_import
    )
    splits = load_dataset(cfg.data, seed=cfg.seed)
    model = build_model_for(cfg, splits)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        first = first_line(err)
        raise CheckpointError(
            f"{run_dir / CHECKPOINT}: incompatible checkpoint ({first})"
        ) from None
    model.to(device).eval()
    step = state.get("step")
    ident = {"step": step if isinstance(step, int) else -1, "sha256": digest}
    return LoadedRun(model, cfg, splits, state, run_dir, ident)
