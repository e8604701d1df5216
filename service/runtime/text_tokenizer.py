"""Text to model ids and back, as the manifest's tokenizer spec says.

- "sentencepiece" (mtserve's own models): one SentencePiece model whose ids are the model's.
- "vocab" (imported Marian models): the source text is cut into pieces by the source
  SentencePiece model and the pieces looked up in the model's vocabulary (vocab.json), unknown
  pieces as its `<unk>`; output ids are looked up back into pieces and joined by the target
  SentencePiece model. Special tokens (pad, EOS, unk) never reach the text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import sentencepiece as spm

from service.manifest import Manifest, ModelFileError

WORD_START = "▁"


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def encode_pieces(self, text: str) -> tuple[list[int], list[str]]:
        """The ids of `text` and, one per id, its piece as cut from the text (an unknown one keeps
        its characters, where its id is the unknown token's)."""
        ...

    def decode(self, ids: Sequence[int], replaced: Mapping[int, str] | None = None) -> str:
        """Text of `ids`; `replaced` maps positions in `ids` to pieces that stand there instead
        (unknown tokens replaced from the source)."""
        ...

    def word_starts(self) -> list[bool]:
        """For each id, whether its piece begins a word (where long inputs may be cut)."""
        ...

    def id_to_piece(self, i: int) -> str: ...

    def encode_target(self, text: str) -> list[int]:
        """The ids of target-language `text`, as the decoder would write them (a lexical table's
        training pairs)."""
        ...


class SentencePieceTokenizer:
    def __init__(self, path: Path) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=str(path))

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def encode_pieces(self, text: str) -> tuple[list[int], list[str]]:
        pieces = list(self.sp.encode(text, out_type=str))
        return [self.sp.piece_to_id(p) for p in pieces], pieces

    def decode(self, ids: Sequence[int], replaced: Mapping[int, str] | None = None) -> str:
        if not replaced:
            return str(self.sp.decode(list(ids)))
        return str(self.sp.decode_pieces([replaced.get(j) or self.sp.id_to_piece(i) for j, i in enumerate(ids)]))

    def word_starts(self) -> list[bool]:
        return [self.sp.id_to_piece(i).startswith(WORD_START) for i in range(self.sp.get_piece_size())]

    def id_to_piece(self, i: int) -> str:
        return str(self.sp.id_to_piece(i))

    def encode_target(self, text: str) -> list[int]:
        return self.encode(text)


class VocabTokenizer:
    def __init__(
        self,
        source: Path,
        target: Path,
        vocab: Path,
        unk: int,
        skip: Sequence[int],
        target_vocab: Path | None = None,
    ) -> None:
        """`vocab` maps source pieces to ids, and target ones too unless `target_vocab` is given."""
        self.source = spm.SentencePieceProcessor(model_file=str(source))
        self.target = spm.SentencePieceProcessor(model_file=str(target))
        self.ids = _read_vocab(vocab)
        target_ids = self.ids if target_vocab is None else _read_vocab(target_vocab)
        self.pieces = {i: piece for piece, i in target_ids.items()}
        self.target_ids = target_ids
        self.unk = unk
        self.skip = frozenset(skip)

    def encode(self, text: str) -> list[int]:
        return self.encode_pieces(text)[0]

    def encode_pieces(self, text: str) -> tuple[list[int], list[str]]:
        pieces = list(self.source.encode(text, out_type=str))
        return [self.ids.get(piece, self.unk) for piece in pieces], pieces

    def decode(self, ids: Sequence[int], replaced: Mapping[int, str] | None = None) -> str:
        replaced = replaced or {}
        pieces = [
            replaced[j] if j in replaced else self.pieces[i]
            for j, i in enumerate(ids)
            if j in replaced or (i not in self.skip and i in self.pieces)
        ]
        # A piece the target model lacks (the vocabulary is shared) comes back raw: its ▁ still a space.
        return str(self.target.decode_pieces(pieces)).replace(WORD_START, " ").strip()

    def id_to_piece(self, i: int) -> str:
        return str(self.pieces.get(i, ""))

    def encode_target(self, text: str) -> list[int]:
        return [self.target_ids.get(piece, self.unk) for piece in self.target.encode(text, out_type=str)]

    def word_starts(self) -> list[bool]:
        size = max(self.pieces) + 1
        return [self.pieces.get(i, "").startswith(WORD_START) for i in range(size)]


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(path, f"not a JSON vocabulary ({exc})") from exc
    if not isinstance(ids, dict):
        raise ModelFileError(path, "not a JSON object of pieces and ids")
    return ids


def load_text_tokenizer(model_dir: Path, manifest: Manifest) -> TextTokenizer:
    files, special = manifest.files, manifest.special_ids
    if manifest.tokenizer.kind == "vocab":
        skip = [special.pad, special.eos, special.unk, *([special.bos] if special.bos is not None else [])]
        return VocabTokenizer(
            model_dir / files["source_tokenizer"],
            model_dir / files["target_tokenizer"],
            model_dir / files["vocab"],
            special.unk,
            skip,
            model_dir / files["target_vocab"] if "target_vocab" in files else None,
        )
    return SentencePieceTokenizer(model_dir / files["tokenizer"])
