"""The one typed training configuration, read from a TOML file and overridden by flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from model.config import ModelConfig
from model.data_config import TOP_LEVEL_KEYS, DataConfig, parse_data_config

# The architecture keys a training config sets; the rest of ModelConfig describes imported models.
_MODEL_KEYS = {"d_model", "n_heads", "d_ff", "encoder_layers", "decoder_layers", "dropout", "pre_norm"}
ARCHITECTURE_KEYS = frozenset({"vocab_size", *_MODEL_KEYS} - {"dropout"})


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = ""  # empty: --data-dir, $MTSERVE_DATA_DIR, or ../shared/data
    out_dir: str = "runs/pilot"
    init_from: str = ""  # a model directory whose weights and tokenizer training starts from
    vocab_size: int = ModelConfig.vocab_size
    max_len: int = 128  # pairs with a longer side (in tokens) are left out of training
    copy_spans: float = 0.0  # synthetic copies per pair with a shared name/number (model/augment.py)
    # model (defaults: ModelConfig's)
    d_model: int = ModelConfig.d_model
    n_heads: int = ModelConfig.n_heads
    d_ff: int = ModelConfig.d_ff
    encoder_layers: int = ModelConfig.encoder_layers
    decoder_layers: int = ModelConfig.decoder_layers
    dropout: float = ModelConfig.dropout
    pre_norm: bool = ModelConfig.pre_norm
    # objectives
    label_smoothing: float = 0.1
    mlm_weight: float = 0.3
    mlm_prob: float = 0.15
    mlm_tokens: int = 1024  # masked-LM batch size in tokens, per step
    nsp_weight: float = 0.0  # next-sentence prediction, off by default
    nsp_pairs: int = 32
    # optimisation
    max_tokens: int = 4096  # translation batch size in padded target+source tokens
    lr: float = 7e-4
    warmup_steps: int = 1000
    schedule: str = "inverse_sqrt"  # or "linear": to zero at the end of max_minutes/max_steps
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    max_steps: int = 0  # 0: no step limit
    max_minutes: float = 0.0  # 0: no time limit; counts training time across resumes
    seed: int = 1
    threads: int = 0  # 0: torch's default
    device: str = "auto"  # auto, cpu or cuda
    bf16: bool = True  # autocast to bf16 where the hardware has fast bf16 kernels (else fp32)
    compile_loss: bool = True
    # bookkeeping
    log_every: int = 50
    checkpoint_minutes: float = 5.0
    checkpoint_steps: int = 0  # also checkpoint every N steps when > 0
    keep_checkpoints: int = 5
    average_last: int = 5  # the final model averages this many last checkpoints
    # languages, [[corpora]], [[monolingual]], [[heldout]], validation (model/data_config.py)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):  # as train_config.json stores it
            self.data = parse_data_config(_without_empty(self.data))
        if self.max_steps <= 0 and self.max_minutes <= 0:
            raise ValueError("set max_steps or max_minutes, or training never ends")
        if not 0 <= self.mlm_prob <= 1:
            raise ValueError(f"mlm_prob must lie in [0, 1], got {self.mlm_prob}")
        if self.schedule not in ("inverse_sqrt", "linear"):
            raise ValueError(f"schedule must be 'inverse_sqrt' or 'linear', got {self.schedule!r}")
        self.model_config()  # validates the architecture early

    def model_config(
        self, languages: tuple[str, ...] = (), directions: tuple[tuple[str, str], ...] = ()
    ) -> ModelConfig:
        values = {k: getattr(self, k) for k in _MODEL_KEYS}
        return ModelConfig(vocab_size=self.vocab_size, languages=languages, directions=directions, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _without_empty(data: dict[str, Any]) -> dict[str, Any]:
    """A stored DataConfig as the TOML form: entries without their empty (unset) file keys."""
    out = dict(data)
    for key in ("corpora", "heldout"):
        out[key] = [{k: v for k, v in e.items() if v != ""} for e in data.get(key, [])]
    for key in ("corpora", "heldout"):
        for entry in out[key]:
            entry["langs"] = list(entry["langs"])
    out["monolingual"] = [{**e, "files": list(e["files"])} for e in data.get("monolingual", [])]
    return out


def _field_types() -> dict[str, type]:
    """The scalar fields: each a TOML key and a flag."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig) if f.name != "data"}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (`--max-minutes 45`), all defaulting to 'not given'."""
    for name, kind in _field_types().items():
        convert: Any = _parse_bool if kind is bool else kind
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=f"cfg_{name}", type=convert, default=None, metavar=kind.__name__.upper()
        )


def load_config(file: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the TOML file, then flags. Unknown or mistyped keys are rejected.

    The data keys (languages, [[corpora]], ...) are parsed by model/data_config.py; a `data`
    override (a stored config) replaces them.
    """
    types_ = _field_types()
    values: dict[str, Any] = {}
    data: Any = None
    if file is not None:
        with open(file, "rb") as handle:
            values = tomllib.load(handle)
        data_keys = {k: values.pop(k) for k in list(values) if k in TOP_LEVEL_KEYS}
        if data_keys:
            data = parse_data_config(data_keys)
        unknown = sorted(set(values) - set(types_))
        if unknown:
            raise ValueError(
                f"{file}: unknown config keys {unknown}; known keys: {sorted(set(types_) | TOP_LEVEL_KEYS)}"
            )
        for key, value in values.items():
            want = types_[key]
            ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
            if not ok or (want is int and isinstance(value, bool)):
                raise ValueError(f"{file}: {key} must be {want.__name__}, got {value!r}")
            values[key] = want(value)
    values |= {k: v for k, v in overrides.items() if v is not None}
    if "data" not in values and data is not None:
        values["data"] = data
    return TrainConfig(**values)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, f"cfg_{name}") for name in _field_types()}


def training_data_config(args: argparse.Namespace, model_dir: Path) -> DataConfig:
    """The splits and corpora a model knows: --config, else the train_config.json it was trained with."""
    file = args.config or model_dir / "train_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: pass --config, the training config that declares the splits")
    if file.suffix == ".json":
        return TrainConfig(**json.loads(file.read_text())).data
    return load_config(file, {}).data
