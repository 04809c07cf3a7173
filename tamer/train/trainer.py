"""The training loop shared by both stages.

The trainer knows nothing of a model's insides: a *task* (see :class:`Task`) names its modules and optimizers and
yields ``(optimizer_name, loss, logs)`` for a batch. The trainer wraps modules in DistributedDataParallel when
``torchrun`` started several processes, runs forward passes under autocast and backward passes outside it,
accumulates gradients, steps optimizers, the learning-rate schedule and the EMA, watches for NaN/Inf, validates,
writes PNG grids, JSONL metrics and atomic checkpoints, and resumes all of it exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from tamer.checkpoints import CheckpointError
from tamer.devices import autocast, data_loader_workers, resolve_memory_format, resolve_precision
from tamer.errors import TrainingDiverged  # noqa: F401 (re-exported)
from tamer.imageio import save_image
from tamer.progress import progress_bar
from tamer.train import resume as ckpt
from tamer.train.config import TrainConfig, effective_ema_decay, steps_for_data
from tamer.train.curves import write_curves
from tamer.train.data_order import ResumableSampler, SeededItems
from tamer.train.distributed import DistributedContext, all_reduce_mean, barrier, setup
from tamer.train.selection import BEST_FOLDER, Best, export_best, improved, save_best
from tamer.train.summary import time_estimate

#: the steps after the first whose time estimates the run's (printed once, with a warning for days)
TIMED_STEPS = 5



class Task(Protocol):
    model_name: str  # the module that is exported, validated and averaged by EMA
    best_metric: tuple[str, str]  # the validation figure that picks the exported model, and "min" or "max"

    def modules(self) -> dict[str, nn.Module]: ...

    # optimizer name -> its parameters, or AdamW parameter groups (which may set their own weight decay)
    def parameter_groups(self, weight_decay: float) -> dict[str, list]: ...

    def step(self, modules: dict[str, nn.Module], batch: Any,
             step: int) -> Iterator[tuple[str, torch.Tensor, dict]]: ...

    def validate(self, model: nn.Module, batches: Iterator[Any]) -> dict[str, float]: ...

    def images(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]: ...

    def export(self, model: nn.Module, directory: Path) -> None: ...

    def state_dict(self) -> dict: ...  # the task's own running state (tensors and plain values), for resume

    def load_state_dict(self, state: dict) -> None: ...


def image_steps(step: int, every: int) -> bool:
    """1, 2, 5, 10, 20, 50, ... below ``every``, then every ``every`` steps."""
    if step % every == 0:
        return True
    magnitude = 10 ** int(math.log10(step)) if step > 0 else 1
    return step < every and step in (magnitude, 2 * magnitude, 5 * magnitude)


def learning_rate_factor(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class Trainer:
    def __init__(self, task: Task, config: TrainConfig, train_data: Dataset, run_dir: str | Path,
                 val_data: Dataset | None = None, run_config: dict | None = None,
                 context: DistributedContext | None = None):
        self.ctx = context or setup(config.device)
        config, steps_note = steps_for_data(config, len(train_data), self.ctx.world_size)
        if steps_note and self.ctx.is_main:
            print(steps_note)
        self.task, self.config, self.run = task, config, Path(run_dir)
        self.device = self.ctx.device
        self.precision = resolve_precision(config.precision, self.device)  # auto resolved once, here
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", self.ctx.world_size))
        self.num_workers, note = data_loader_workers(config.num_workers, local_processes)
        if note and self.ctx.is_main:
            print(note)
        self.val_data = val_data
        modules = task.modules()
        self.memory_format = resolve_memory_format(config.memory_format, self.device, list(modules.values()))
        self.run_config = {**(run_config or {}), "resolved_precision": self.precision.name,
                           "resolved_memory_format": "channels_last" if self.memory_format == torch.channels_last
                           else "contiguous",  # in the setting's own words
                           "resolved_steps": config.steps}
        torch.manual_seed(config.seed + self.ctx.rank)

        self.raw = {name: module.to(self.device, memory_format=self.memory_format)
                    for name, module in modules.items()}
        self.wrapped = {name: self._wrap(module) for name, module in self.raw.items()}
        self.optimizers = {name: torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas),
                                                   weight_decay=config.weight_decay)
                           for name, groups in task.parameter_groups(config.weight_decay).items()}
        self.lr_factor = learning_rate_factor(config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.name == "fp16")
        model = self.raw[task.model_name]
        ema_decay, self.ema_note = effective_ema_decay(config)
        if self.ema_note and self.ctx.is_main:
            print(f"note: {self.ema_note}")
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None)

        self.sampler = ResumableSampler(len(train_data), config.seed, self.ctx.rank, self.ctx.world_size)
        if len(self.sampler) < config.batch_size:
            raise ValueError(f"data: {len(train_data)} items give this process {len(self.sampler)}, fewer than "
                             f"train.batch_size={config.batch_size}")
        self.train_data = SeededItems(train_data, config.seed)
        self.step, self.epoch, self.position = 0, 0, 0
        self.best: Best | None = None  # the best validation so far, whose model is in RUN/best
        self.last_validation: dict[str, float] = {}
        self.summary = ""  # which model RUN/model holds, and why (printed at the end)
        self._writer = None
        self._curves_failed = False

    # -- set-up helpers ---------------------------------------------------------------------------------------
    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.ctx.enabled or not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def _autocast(self):
        return autocast(self.device, self.precision)

    def _batches(self) -> Iterator[Any]:
        """Training batches forever, keeping (epoch, position) current for checkpoints."""
        while True:
            self.sampler.set_position(self.epoch, self.position * self.config.batch_size)
            # A generator of its own keeps the loader from drawing on the global RNG, which a resume would shift.
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.epoch)
            loader = DataLoader(self.train_data, batch_size=self.config.batch_size, sampler=self.sampler,
                                num_workers=self.num_workers, drop_last=True, generator=generator,
                                pin_memory=self.device.type == "cuda")
            for batch in loader:
                self.position += 1
                yield _to(batch, self.device)
            self.epoch, self.position = self.epoch + 1, 0

    def exported_model(self) -> nn.Module:
        """The model to export and validate: EMA weights with the live buffers when EMA is on."""
        model = self.raw[self.task.model_name]
        if self.ema is None:
            return model
        averaged = self.ema.module
        for mine, live in zip(averaged.buffers(), model.buffers()):
            mine.copy_(live)
        return averaged

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, float]:
        if resume:
            self.restore()
        if self.ctx.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
            (self.run / "config.json").write_text(json.dumps(self.run_config, indent=2) + "\n")
        batches = self._batches()
        accum = self.config.grad_accum
        progress = progress_bar(total=self.config.steps, initial=self.step, disable=not self.ctx.is_main,
                        desc=f"train {self.task.model_name}", dynamic_ncols=True)
        last_logs: dict[str, float] = {}
        started = time.perf_counter()
        timed: list[float] = []  # compute time of this process's steps 2..TIMED_STEPS + 1 (step 1 warms up)
        while self.step < self.config.steps:
            step_started = time.perf_counter()
            self._set_learning_rates()
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            for micro in range(accum):
                batch = next(batches)
                sync = micro == accum - 1
                with contextlib.ExitStack() as stack:
                    if not sync:
                        for module in self.wrapped.values():
                            if isinstance(module, DistributedDataParallel):
                                stack.enter_context(module.no_sync())
                    for name, loss, logs in self._losses(batch):
                        self._check_finite(name, loss)
                        self.scaler.scale(loss / accum).backward()
                        for key, value in logs.items():
                            totals[key] = totals.get(key, 0.0) + float(value) / accum
            self._optimizer_steps()
            self.step += 1
            if self.ema is not None:
                self.ema.update_parameters(self.raw[self.task.model_name])
            last_logs = totals
            timed.append(time.perf_counter() - step_started)
            if len(timed) == TIMED_STEPS + 1 and self.ctx.is_main:
                progress.write(time_estimate(sum(timed[1:]) / TIMED_STEPS, (self.step - TIMED_STEPS + 1, self.step),
                                             self.config.steps - self.step))
            progress.update(1)
            progress.set_postfix({k: f"{v:.4g}" for k, v in list(totals.items())[:4]})
            self._after_step(totals, batch, started)
        progress.close()
        if self.ctx.is_main:
            self.summary = self._export_final(self.run / "model")
            print(self.summary)
        barrier()
        return last_logs

    def _export_final(self, final: Path) -> str:
        """``RUN/model``: the best validated model when there was validation, else the last; says which and why."""
        steps, kind = self.config.steps, " (EMA weights)" if self.ema is not None else ""
        last = ckpt.step_folder(self.run, self.step) / "model"
        if self.val_data is None or self.best is None or not (self.run / BEST_FOLDER).is_dir():
            self.task.export(self.exported_model(), final)
            why = "no val_data to choose by" if self.val_data is None else "no validation figure to choose by"
            return f"exported the last step, {self.step}, to {final}{kind}: {why}"
        export_best(self.run, final)
        b = self.best
        figure = f"held-out {b.metric} {b.value:.4g}"
        if b.step == self.step:
            return f"exported step {b.step} (the last) to {final}{kind}: it has the best {figure}"
        latest = self.last_validation.get(b.metric)
        then = f" against {latest:.4g} at step {self.step}" if latest is not None else ""
        return (f"exported step {b.step} of {steps} to {final}{kind}: it has the best {figure}{then} "
                f"({'lower' if b.mode == 'min' else 'higher'} is better); the last step's model is {last}")

    def _losses(self, batch) -> Iterator[tuple[str, torch.Tensor, dict]]:
        """The task's losses, each forward pass under autocast, each backward pass (by the caller) outside it."""
        steps = self.task.step(self.wrapped, batch, self.step)
        while True:
            with self._autocast():
                try:
                    item = next(steps)
                except StopIteration:
                    return
            yield item

    def _optimizer_steps(self) -> None:
        for name, optimizer in self.optimizers.items():
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if all(p.grad is None for p in params):
                continue  # this optimizer had no loss this step (e.g. the discriminator before it starts)
            if self.config.max_grad_norm:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
            self.scaler.step(optimizer)
        self.scaler.update()

    def _set_learning_rates(self) -> None:
        """The schedule is a function of the step alone, so resuming needs no scheduler state."""
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = self.config.lr * self.lr_factor(self.step)

    def _check_finite(self, name: str, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            last = ckpt.latest_checkpoint(self.run)
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingDiverged(f"step {self.step + 1}: the {name} loss is {loss.item()}; stopped, {where}. "
                                   "Lower train.lr, try precision=fp32 or bf16, or resume with --resume.")

    def _after_step(self, logs: dict[str, float], batch: Any, started: float) -> None:
        c = self.config
        if self.step % c.log_every == 0 or self.step == c.steps:
            logs = self._mean_over_ranks(logs)  # every rank joins; the log shows the whole global batch
            if self.ctx.is_main:
                record = {"step": self.step, "epoch": self.epoch, "lr": c.lr * self.lr_factor(self.step - 1),
                          "elapsed_s": round(time.perf_counter() - started, 3), **logs}
                self._log(record)
        if self.ctx.is_main and image_steps(self.step, c.image_every):
            with torch.no_grad():
                model = self.exported_model()
                was_training = model.training
                model.eval()
                for name, grid in self.task.images(model, batch).items():
                    save_image(grid, self.run / "images" / f"step-{self.step:08d}-{name}.png")
                model.train(was_training)
        if self.val_data is not None and (self.step % c.val_every == 0 or self.step == c.steps):
            self.validate()
        if self.step % c.checkpoint_every == 0 or self.step == c.steps:
            self.save_checkpoint()
            if self.ctx.is_main:
                self._write_curves()

    def _write_curves(self) -> None:
        """``RUN/curves.png`` from metrics.jsonl; a missing matplotlib or a drawing error never stops training."""
        if self._curves_failed:
            return
        try:
            write_curves(self.run)
        except Exception as error:  # noqa: BLE001 - a picture is not worth a run
            self._curves_failed = True
            print(f"note: {self.run / 'curves.png'} not written ({error}); metrics.jsonl has the numbers")

    def _mean_over_ranks(self, logs: dict[str, float]) -> dict[str, float]:
        if self.ctx.world_size == 1 or not logs:
            return logs
        values = all_reduce_mean(torch.tensor(list(logs.values()), dtype=torch.float64, device=self.device))
        return dict(zip(logs, values.tolist()))

    def validate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.ctx.is_main:
            loader = DataLoader(self.val_data, batch_size=self.config.batch_size, shuffle=False,
                                num_workers=self.num_workers)
            model = self.exported_model()
            was_training = model.training
            model.eval()
            batches = (_to(b, self.device) for i, b in zip(range(self.config.val_batches), loader))
            with torch.no_grad(), self._autocast():
                metrics = self.task.validate(model, batches)
            self._log({"step": self.step, **{f"val/{k}": v for k, v in metrics.items()}})
            self.last_validation = metrics
            metric, mode = getattr(self.task, "best_metric", (None, "min"))
            new = improved(self.best, metrics, metric, mode, self.step) if metric else None
            if new is not None:
                self.best = new
                save_best(self.run, new, lambda folder: self.task.export(model, folder))
            model.train(was_training)
        barrier()
        return metrics

    def _log(self, record: dict) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        with open(self.run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.config.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(self.run / "tensorboard")
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, record["step"])

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        # Rank 0 creates the folder; the others only need its name to write their RNG states into it.
        tmp = ckpt.temporary_folder(self.run, self.step) if self.ctx.is_main else \
            ckpt.temporary_path(self.run, self.step)
        barrier()
        try:
            self._write_checkpoint(tmp)
        except OSError as error:  # a full disk: no stale .tmp folder, and a message that says what is needed
            raise ckpt.write_failed(tmp, error, self.run) from error
        barrier()
        if self.ctx.is_main:
            ckpt.finish(tmp, self.config.keep_checkpoints)
        barrier()
        return ckpt.step_folder(self.run, self.step)

    def _write_checkpoint(self, tmp: Path) -> None:
        ckpt.save_state(ckpt.rng_state(self.device), tmp / f"rng-rank{self.ctx.rank}.pt")
        if self.ctx.is_main:
            for name, module in self.raw.items():
                ckpt.save_weights(module, tmp / f"{name}.safetensors")
            if self.ema is not None:
                ckpt.save_weights(self.ema, tmp / "ema.safetensors")
            self.task.export(self.exported_model(), tmp / "model")
            ckpt.save_state({
                "step": self.step, "epoch": self.epoch, "position": self.position,
                "world_size": self.ctx.world_size,
                "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
                "scaler": self.scaler.state_dict(),
                "task": self.task.state_dict(),
                "best": None if self.best is None else vars(self.best).copy(),
            }, tmp / "training_state.pt")

    def restore(self) -> bool:
        """Load the newest intact checkpoint of the run, if any; returns whether one was found.

        Every file of a checkpoint is read back before any is applied; a damaged checkpoint (a truncated file, a
        disk error) is skipped with a note naming it, and the one before it is used.
        """
        found = ckpt.newest_intact_checkpoint(self.run, list(self.raw), self.ema is not None, self.ctx.rank,
                                              report=print if self.ctx.is_main else lambda _: None)
        if found is None:
            if ckpt.completed_checkpoints(self.run):
                raise CheckpointError(f"--resume: every checkpoint in {self.run / 'checkpoints'} is damaged "
                                      "(see above); remove them, or start again with --overwrite")
            if self.ctx.is_main:
                print(f"--resume: no checkpoint in {self.run / 'checkpoints'}, starting from step 0")
            return False
        folder, files = found
        state = files["state"]
        if state.get("world_size") != self.ctx.world_size:
            raise ValueError(f"{folder}: written by {state.get('world_size')} processes, resumed with "
                             f"{self.ctx.world_size}; the data order would differ")
        device = self.device
        for name, module in self.raw.items():
            ckpt.load_weights(module, files["weights"][name], folder / f"{name}.safetensors")
        if self.ema is not None:
            ckpt.load_weights(self.ema, files["weights"]["ema"], folder / "ema.safetensors")
        try:
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            self.scaler.load_state_dict(state["scaler"])
            self.task.load_state_dict(state["task"])
        except (KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{folder / 'training_state.pt'}: does not fit this run ({error!r}); was it "
                                  "written with another config? Resume with the run's own config.json") from None
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.best = Best(**state["best"]) if state.get("best") else None  # older checkpoints have none
        ckpt.set_rng_state(files["rng"], device)
        if self.ctx.is_main:
            print(f"resumed from {folder} at step {self.step}")
        return True


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch
