"""Token and language conventions shared by training, export and serving.

This module is torch-free on purpose: the service imports it to read a model
directory without pulling in the training stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

PAD: Final = "<pad>"
UNK: Final = "<unk>"
BOS: Final = "<s>"
EOS: Final = "</s>"
MASK: Final = "<mask>"
CLS: Final = "<cls>"
SEP: Final = "<sep>"

PAD_ID: Final = 0
UNK_ID: Final = 1
BOS_ID: Final = 2
EOS_ID: Final = 3

# A model's languages come from its training config; each gets a decoder start token `<2xx>`,
# reserved in the tokenizer right after the control symbols, in the config's order. The
# exported manifest records the resulting ids; nothing else assumes them.
CONTROL_SYMBOLS: Final = (MASK, CLS, SEP)
MASK_ID: Final = 4
CLS_ID: Final = 5
SEP_ID: Final = 6
FIRST_LANGUAGE_TAG_ID: Final = 7
CONTROL_IDS: Final = {PAD: PAD_ID, UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID, MASK: MASK_ID, CLS: CLS_ID, SEP: SEP_ID}
SPECIAL_IDS: Final = frozenset(CONTROL_IDS.values())


def language_tag(lang: str) -> str:
    """The decoder start token that asks for output in `lang` (e.g. `<2fr>`)."""
    return f"<2{lang}>"


def user_symbols(languages: Sequence[str]) -> list[str]:
    """The pieces a tokenizer reserves after the four SentencePiece control ids, in id order."""
    return [*CONTROL_SYMBOLS, *(language_tag(lang) for lang in languages)]


def reserved_ids(languages: Sequence[str]) -> dict[str, int]:
    """Every reserved piece and the id a tokenizer trained for `languages` gives it."""
    tags = {language_tag(lang): FIRST_LANGUAGE_TAG_ID + i for i, lang in enumerate(languages)}
    return {**CONTROL_IDS, **tags}


# Files every model directory holds.
TOKENIZER_FILE: Final = "spm.model"
CONFIG_FILE: Final = "config.json"
WEIGHTS_FILE: Final = "model.pt"
EVAL_FILE: Final = "eval.json"


# One maximum-length rule for every decoder (PyTorch reference, ONNX runtime, benchmarks):
# at most MAX_LENGTH_A · source tokens + MAX_LENGTH_B target tokens, EOS included, capped.
MAX_LENGTH_A: Final = 2.0
MAX_LENGTH_B: Final = 10
MAX_LENGTH_CAP: Final = 256


def max_target_length(source_tokens: int) -> int:
    return min(MAX_LENGTH_CAP, int(MAX_LENGTH_A * source_tokens) + MAX_LENGTH_B)
