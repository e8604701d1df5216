"""Model directories: weights, config and tokenizer side by side."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm
import torch

from model.config import ModelConfig
from model.tokenizer import check_conventions, load_tokenizer
from model.transformer import Transformer
from service.conventions import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE

StateDict = dict[str, torch.Tensor]


def average_state_dicts(states: Sequence[StateDict]) -> StateDict:
    """Element-wise mean of parameters (fp32), as in Vaswani et al.'s checkpoint averaging."""
    if not states:
        raise ValueError("no checkpoints to average")
    return {key: sum(s[key].float() for s in states) / len(states) for key in states[0]}  # type: ignore[misc]


def write_model_dir(out: Path, cfg: ModelConfig, state: StateDict, tokenizer: Path) -> None:
    """Weights in fp16 (half the size, no measurable BLEU change), config.json and spm.model."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, out / WEIGHTS_FILE)
    cfg.save(out / CONFIG_FILE)
    if tokenizer.resolve() != (out / TOKENIZER_FILE).resolve():
        shutil.copyfile(tokenizer, out / TOKENIZER_FILE)


def load_model_dir(model_dir: Path) -> tuple[Transformer, spm.SentencePieceProcessor]:
    """The model (fp32, eval mode) and tokenizer stored in `model_dir`."""
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"model directory {model_dir} lacks {name}")
    cfg = ModelConfig.load(model_dir / CONFIG_FILE)
    model = Transformer(cfg)
    state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    tokenizer = load_tokenizer(model_dir / TOKENIZER_FILE)
    check_conventions(tokenizer, cfg.languages)
    if tokenizer.vocab_size() != cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size()} pieces, config says {cfg.vocab_size}")
    return model.eval(), tokenizer
