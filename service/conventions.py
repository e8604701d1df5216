"""Token and language conventions shared by training, export and serving.

This module is torch-free on purpose: the service imports it to read a model
directory without pulling in the training stack.
"""

from __future__ import annotations

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

LANGUAGES: Final = ("en", "fr")


def language_tag(lang: str) -> str:
    """The decoder start token that asks for output in `lang` (e.g. `<2fr>`)."""
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}; expected one of {LANGUAGES}")
    return f"<2{lang}>"


# Pieces SentencePiece reserves as user-defined symbols, in id order after the
# four control ids above. Their ids are therefore fixed: <mask>=4 ... <2fr>=8.
USER_SYMBOLS: Final = (MASK, CLS, SEP, *(language_tag(lang) for lang in LANGUAGES))
MASK_ID: Final = 4
CLS_ID: Final = 5
SEP_ID: Final = 6
LANG_TAG_IDS: Final = {lang: 7 + i for i, lang in enumerate(LANGUAGES)}
# Every reserved piece and the id the tokenizer must give it.
RESERVED_IDS: Final = {
    PAD: PAD_ID, UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID, MASK: MASK_ID, CLS: CLS_ID, SEP: SEP_ID,
    **{language_tag(lang): i for lang, i in LANG_TAG_IDS.items()},
}  # fmt: skip
SPECIAL_IDS: Final = frozenset(RESERVED_IDS.values())

# Files every model directory holds.
TOKENIZER_FILE: Final = "spm.model"
CONFIG_FILE: Final = "config.json"
WEIGHTS_FILE: Final = "model.pt"
EVAL_FILE: Final = "eval.json"


def parse_direction(direction: str) -> tuple[str, str]:
    """Split `en-fr` into `("en", "fr")`, checking both languages."""
    parts = direction.split("-")
    if len(parts) != 2 or parts[0] == parts[1] or any(p not in LANGUAGES for p in parts):
        raise ValueError(f"direction must be one of en-fr, fr-en; got {direction!r}")
    return parts[0], parts[1]


# One maximum-length rule for every decoder (PyTorch reference, ONNX runtime, benchmarks):
# at most MAX_LENGTH_A · source tokens + MAX_LENGTH_B target tokens, EOS included, capped.
MAX_LENGTH_A: Final = 2.0
MAX_LENGTH_B: Final = 10
MAX_LENGTH_CAP: Final = 256


def max_target_length(source_tokens: int) -> int:
    return min(MAX_LENGTH_CAP, int(MAX_LENGTH_A * source_tokens) + MAX_LENGTH_B)
