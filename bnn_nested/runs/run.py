"""Training a run into ``runs/NAME/{config.yaml, checkpoint.pt, history.json, keep_probs.json}``.

``checkpoint.pt`` is rewritten atomically every ``train.checkpoint_every`` epochs /
``train.checkpoint_every_steps`` steps, on SIGINT, after the last epoch (before BN calibration
and the other post-training steps) and at the end (``complete: True``); :func:`resume_run`
continues an unfinished run exactly where its checkpoint left it, and starts a run that stopped
before its first checkpoint over from its ``config.yaml``. Writers hold the run's lock and only
replace recognisable runs (:mod:`bnn_nested.runs.rundir`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import yaml

from bnn_nested.config import Config, ConfigError, build_config, load_config
from bnn_nested.data import DataSplits, load_dataset
from bnn_nested.evaluation.ordering import keep_probs_now, write_ordering_report
from bnn_nested.io import atomic_write_json, atomic_write_text, first_line
from bnn_nested.nest import NestifiedModel
from bnn_nested.regularization.config import build_regularizer
from bnn_nested.runs.batchnorm import calibration_loader, recalibrate_bn_widths
from bnn_nested.runs.build import (
    build_model_for,
    check_run_imports,
    imports_code,
    make_loaders,
    seed_everything,
    validate_run,
)
from bnn_nested.runs.fromtrained import TEACHER_FILE, load_teacher, prepare_from_trained
from bnn_nested.runs.loaded import LoadedRun, load_run
from bnn_nested.runs.rundir import (
    RunLock,
    check_run_dir,
    is_run_dir,
    prepare_run_dir,
    remove_orphans,
)
from bnn_nested.runs.runfiles import CHECKPOINT, CONFIG, save_run_checkpoint
from bnn_nested.threads import apply_threads
from bnn_nested.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    nonfinite_tensors,
    require_finite,
    require_keys,
)
from bnn_nested.training.distributed import DistContext, setup_distributed
from bnn_nested.training.tensorboard import LOG_DIR, TensorBoardLogger
from bnn_nested.training.trainer import Trainer, TrainingInterrupted

#: ``train_run`` and ``resume_run`` live here; ``load_run``, ``LoadedRun`` and ``validate_run``
#: are re-exported for code that imported them from this module.
__all__ = ["LoadedRun", "load_run", "resume_command", "resume_run", "train_run", "validate_run"]


def resume_command(out: str | Path, world_size: int = 1, cfg: Config | None = None) -> str:
    """The command that resumes ``out`` (with ``world_size`` processes under torchrun; with
    ``--allow-import`` when ``cfg`` imports modules, which ``--resume`` refuses without it)."""
    trust = " --allow-import" if cfg is not None and imports_code(cfg) else ""
    if world_size > 1:
        return f"torchrun --nproc_per_node={world_size} -m bnn_nested train --resume {out}{trust}"
    return f"bnn-nested train --resume {out}{trust}"


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
