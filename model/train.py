"""`mtserve train`: translation in both directions plus masked-LM (and optional NSP) on the encoder.

Runs alone or under `torchrun --nproc_per_node=N` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from model import batching
from model.artifacts import average_state_dicts, load_model_dir, write_model_dir
from model.objectives import TrainingObjectives
from model.plots import plot_loss_curve
from model.prepare import init_model_config, prepare_run
from model.tokenizer import check_conventions, load_tokenizer
from model.train_config import ARCHITECTURE_KEYS, TrainConfig
from model.training_data import load_training_data, model_languages
from model.transformer import Transformer
from service.conventions import FIRST_LANGUAGE_TAG_ID, PAD_ID, TOKENIZER_FILE

log = logging.getLogger("mtserve.train")

LOG_COLUMNS = (
    "step",
    "epoch",
    "lr",
    "mt_loss",
    "mlm_loss",
    "nsp_loss",
    "nsp_acc",
    "val_mt_nll",
    "tokens_per_s",
    "minutes",
)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size())


def lr_at(step: int, cfg: TrainConfig, progress: float = 0.0) -> float:
    """Linear warmup to cfg.lr, then decay: inverse square root, or linear to zero at the budget's end.

    `progress` is the spent fraction of the budget (time or steps, whichever runs out first), so
    a time-limited run ends at lr 0 whatever its speed.
    """
    warmup = min(1.0, step / cfg.warmup_steps)
    if cfg.schedule == "linear":
        return cfg.lr * warmup * max(0.0, 1.0 - progress)
    return cfg.lr * min(warmup, math.sqrt(cfg.warmup_steps / max(step, 1)))


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs on fast kernels here. On a CPU without AVX-512 BF16, oneDNN has no
    bf16 matrix multiply and autocast falls back to a reference loop, many times slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return True
    log.warning("this CPU has no bf16 matrix instructions (AVX-512 BF16): training in fp32 instead")
    return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: TrainConfig, data_dir: Path, resume: bool) -> None:
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        if resume and not self._checkpoints():
            raise FileNotFoundError(f"--resume: no checkpoints in {self.ckpt_dir}")
        init = init_model_config(cfg) if cfg.init_from else None
        if init is not None:
            cfg = dataclasses.replace(cfg, **{k: getattr(init, k) for k in ARCHITECTURE_KEYS})
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.bf16 = cfg.bf16 and bf16_supported(self.device)
        self.ctx = setup_distributed(self.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        if self.ctx.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            prepare_run(cfg, data_dir)
        if self.ctx.world_size > 1:
            dist.barrier()
        torch.manual_seed(cfg.seed + self.ctx.rank)
        sp = load_tokenizer(self.out_dir / TOKENIZER_FILE)
        check_conventions(sp, cfg.data.languages)
        self.languages = model_languages(cfg, sp, init)
        self.data = load_training_data(cfg, data_dir, self.out_dir, self.languages)
        self.model = Transformer(cfg.model_config()).to(self.device)
        if init is not None and not resume:
            base, _ = load_model_dir(Path(cfg.init_from))
            self.model.load_state_dict(base.state_dict())
            log.info("starting from the weights of %s", cfg.init_from)
        objectives = TrainingObjectives(
            self.model,
            cfg.label_smoothing,
            cfg.mlm_weight,
            cfg.nsp_weight,
            cfg.compile_loss and self.device.type == "cpu",
        )
        self.objectives: torch.nn.Module = objectives
        if self.ctx.world_size > 1:
            self.objectives = DistributedDataParallel(
                objectives, find_unused_parameters=cfg.nsp_weight == 0 or cfg.mlm_weight == 0
            )
        decay = [p for n, p in self.model.named_parameters() if p.dim() > 1]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() <= 1]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.98),
            eps=1e-9,
        )
        shard = {"rank": self.ctx.rank, "world_size": self.ctx.world_size}
        self.mt_stream = batching.BatchStream(self.data.translation_sources, cfg.max_tokens, cfg.seed, **shard)
        self.mlm_stream = (
            batching.BatchStream(self.data.mlm_sources, cfg.mlm_tokens, cfg.seed + 1, **shard)
            if self.data.mlm_sources
            else None
        )
        self.step, self.elapsed = 0, 0.0
        if resume:
            self._load_latest()

    # --- checkpoints ---------------------------------------------------------

    def _checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("step_*.pt"))

    def _save_checkpoint(self) -> None:
        rng_states = [torch.get_rng_state()]
        if self.ctx.world_size > 1:
            gathered: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        if not self.ctx.main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "mt_stream": self.mt_stream.state_dict(),
            "mlm_stream": self.mlm_stream.state_dict() if self.mlm_stream else None,
            "rng_states": rng_states,
            "config": self.cfg.to_dict(),
        }
        path = self.ckpt_dir / f"step_{self.step:08d}.pt"
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)  # a crash mid-write never leaves a half checkpoint
        for old in self._checkpoints()[: -max(self.cfg.keep_checkpoints, self.cfg.average_last)]:
            old.unlink()

    def _load_latest(self) -> None:
        checkpoints = self._checkpoints()
        state = torch.load(checkpoints[-1], map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.mt_stream.load_state_dict(state["mt_stream"])
        if self.mlm_stream and state["mlm_stream"]:
            self.mlm_stream.load_state_dict(state["mlm_stream"])
        torch.set_rng_state(state["rng_states"][self.ctx.rank])
        if self.ctx.main:
            self._truncate_log(self.step)
            log.info("resumed from %s (step %d, %.1f min)", checkpoints[-1].name, self.step, self.elapsed / 60)

    # --- logging -------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.out_dir / "train_log.csv"

    def _truncate_log(self, step: int) -> None:
        if not self.log_path.exists():
            return
        with open(self.log_path) as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= step]
        self._write_log(rows, mode="w")

    def _write_log(self, rows: list[dict[str, Any]], mode: str = "a") -> None:
        new = mode == "w" or not self.log_path.exists()
        with open(self.log_path, mode, newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    # --- the loop ------------------------------------------------------------

    def translation_examples(self, codes: np.ndarray) -> list[batching.Example]:
        return self.data.translation_examples(self.mt_stream, codes)

    def _batch(self) -> dict[str, Tensor]:
        batch = batching.translation_batch(self.translation_examples(self.mt_stream.next()))
        rng = np.random.default_rng([self.cfg.seed, self.step, self.ctx.rank])
        if self.mlm_stream is not None:
            sentences = self.data.mlm_sentences(self.mlm_stream, self.mlm_stream.next())
            reserved = FIRST_LANGUAGE_TAG_ID + len(self.languages.languages)
            batch |= batching.mlm_batch(sentences, rng, self.cfg.vocab_size, self.cfg.mlm_prob, reserved)
        if self.data.captions:
            batch |= batching.nsp_batch(self.data.captions, self.cfg.nsp_pairs, rng, self.cfg.max_len)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self) -> dict[str, float]:
        self.step += 1
        lr = lr_at(self.step, self.cfg, self._progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self._batch()
        self.objectives.train()
        with self._autocast():
            losses = self.objectives(batch)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["lr"] = lr
        out["tokens"] = float((batch["tgt_out"] != PAD_ID).sum())
        return out

    @torch.no_grad()
    def validation_nll(self) -> float:
        """Per-token NLL (no smoothing) on the validation split, in every trained direction it holds."""
        self.model.eval()
        total, count = 0.0, 0
        examples = self.data.validation
        if not examples:
            return float("nan")
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].src))
        for start in range(0, len(order), 64):
            batch = batching.translation_batch([examples[i] for i in order[start : start + 64]])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self._autocast():
                logits = self.model(batch["src"], batch["tgt_in"])
            labels = batch["tgt_out"].flatten()
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), labels, ignore_index=PAD_ID, reduction="sum"
                )
            )
            count += int((labels != PAD_ID).sum())
        return total / count

    def _should(self, last_ckpt: float) -> tuple[bool, bool]:
        """(stop, checkpoint), agreed by all ranks."""
        cfg = self.cfg
        stop = (cfg.max_steps > 0 and self.step >= cfg.max_steps) or (
            cfg.max_minutes > 0 and self.elapsed >= cfg.max_minutes * 60
        )
        ckpt = time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60 or (
            cfg.checkpoint_steps > 0 and self.step % cfg.checkpoint_steps == 0
        )
        if self.ctx.world_size > 1:
            flags = torch.tensor([float(stop), float(ckpt)])
            dist.broadcast(flags, src=0)
            stop, ckpt = bool(flags[0]), bool(flags[1])
        return stop, ckpt

    def _progress(self) -> float:
        """Spent fraction of the step or time budget, whichever is further along."""
        spent = [0.0]
        if self.cfg.max_minutes > 0:
            spent.append(self.elapsed / (self.cfg.max_minutes * 60))
        if self.cfg.max_steps > 0:
            spent.append(self.step / self.cfg.max_steps)
        return min(1.0, max(spent))

    def _eta_minutes(self, steps_per_s: float) -> float:
        remaining = []
        if self.cfg.max_minutes > 0:
            remaining.append(self.cfg.max_minutes - self.elapsed / 60)
        if self.cfg.max_steps > 0 and steps_per_s > 0:
            remaining.append((self.cfg.max_steps - self.step) / steps_per_s / 60)
        return max(0.0, min(remaining))

    def run(self) -> Path | None:
        """Train to the step or time limit; return the final model directory (rank 0)."""
        cfg = self.cfg
        window: dict[str, list[float]] = {}
        window_start = last_ckpt = time.monotonic()
        tokens = 0.0
        pending: list[dict[str, Any]] = []
        while True:
            t0 = time.monotonic()
            stats = self.train_step()
            self.elapsed += time.monotonic() - t0
            tokens += stats.pop("tokens") * self.ctx.world_size
            for k, v in stats.items():
                window.setdefault(k, []).append(v)
            stop, ckpt = self._should(last_ckpt)
            if self.step % cfg.log_every == 0 or stop or ckpt:
                now = time.monotonic()
                row = self._log_row(
                    window, tokens / max(now - window_start, 1e-9), len(window["lr"]) / (now - window_start)
                )
                pending.append(row)
                window, tokens, window_start = {}, 0.0, now
            if ckpt or stop:
                if self.ctx.main:
                    pending[-1]["val_mt_nll"] = round(self.validation_nll(), 4)
                    log.info("step %d: validation NLL %.4f", self.step, pending[-1]["val_mt_nll"])
                    self._write_log(pending)
                    plot_loss_curve(self.log_path, self.out_dir / "loss_curve.png")
                pending = []
                self._save_checkpoint()
                last_ckpt = time.monotonic()
            if stop:
                break
        return self._finish() if self.ctx.main else None

    def _log_row(self, window: dict[str, list[float]], tokens_per_s: float, steps_per_s: float) -> dict[str, Any]:
        def mean(key: str) -> float | str:
            values = window.get(key)
            return round(sum(values) / len(values), 4) if values else ""

        row = {
            "step": self.step,
            "epoch": self.mt_stream.epoch,
            "lr": f"{window['lr'][-1]:.3e}",
            "mt_loss": mean("mt"),
            "mlm_loss": mean("mlm"),
            "nsp_loss": mean("nsp"),
            "nsp_acc": mean("nsp_acc"),
            "val_mt_nll": "",
            "tokens_per_s": round(tokens_per_s),
            "minutes": round(self.elapsed / 60, 2),
        }
        if self.ctx.main:
            log.info(
                "step %d | epoch %d | mt %.3f | mlm %s | lr %s | %d tgt tok/s | %.1f min | ETA %.1f min",
                self.step, row["epoch"], row["mt_loss"], row["mlm_loss"] or "-", row["lr"],
                row["tokens_per_s"], self.elapsed / 60, self._eta_minutes(steps_per_s),
            )  # fmt: skip
        return row

    def _finish(self) -> Path:
        checkpoints = self._checkpoints()[-self.cfg.average_last :]
        states = [torch.load(p, map_location="cpu", weights_only=False)["model"] for p in checkpoints]
        final = self.out_dir / "model"
        model_cfg = self.cfg.model_config(self.languages.languages, self.languages.directions)
        write_model_dir(final, model_cfg, average_state_dicts(states), self.out_dir / TOKENIZER_FILE)
        for name in ("train_log.csv", "loss_curve.png", "train_config.json"):
            if (self.out_dir / name).exists():
                (final / name).write_bytes((self.out_dir / name).read_bytes())
        with open(self.log_path) as handle:
            rows = list(csv.DictReader(handle))
        summary = {
            "steps": self.step,
            "train_minutes": round(self.elapsed / 60, 2),
            "mean_target_tokens_per_s": round(sum(float(r["tokens_per_s"]) for r in rows) / max(len(rows), 1)),
            "averaged_checkpoints": [p.name for p in checkpoints],
            "world_size": self.ctx.world_size,
            "init_from": self.cfg.init_from or None,
            "bf16": self.bf16,
        }
        (final / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("wrote %s (%s)", final, summary)
        return final


def train(cfg: TrainConfig, data_dir: Path, resume: bool = False) -> Path | None:
    trainer = Trainer(cfg, data_dir, resume)
    try:
        written = trainer.run()
        if trainer.ctx.world_size > 1:
            # Rank 0 writes the model alone: the others wait for it rather than tear their side of
            # the group down while it still runs (a rank that did so once aborted at exit in CI).
            dist.barrier()
        return written
    finally:
        if trainer.ctx.world_size > 1:
            dist.destroy_process_group()
