"""`mtserve eval`: sacreBLEU and chrF of the PyTorch beam search, and masked-LM accuracy."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
import sentencepiece as spm
import torch
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.significance import PairedTest, Result

from model import corpus
from model.artifacts import load_model_dir
from model.batching import mask_tokens, pad
from model.beam import beam_search
from model.tokenizer import tag_id
from model.train_config import training_data_config
from model.transformer import Transformer
from service.conventions import EOS_ID, EVAL_FILE, FIRST_LANGUAGE_TAG_ID, PAD_ID
from service.languages import ModelLanguages
from service.manifest import DEFAULT_MODEL_DIR

log = logging.getLogger("mtserve.eval")

GOLDEN_SENTENCES = 200  # the golden check scores the first 200 test2016 sentences
GOLDEN_MARGIN = 0.5
MLM_SEED = 1234


@dataclass(frozen=True)
class TranslationScores:
    bleu: float
    chrf: float
    sentences: int
    decode_seconds: float
    bleu_signature: str


def translate(
    model: Transformer,
    sp: spm.SentencePieceProcessor,
    sources: list[str],
    target_lang: str,
    beam_size: int = 5,
    length_penalty: float = 1.0,
    batch_size: int = 64,
) -> list[str]:
    """Best hypothesis per source sentence, decoded in length-sorted batches, order kept."""
    ids = [[*s, EOS_ID] for s in sp.encode(sources)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        results = beam_search(model, [ids[i] for i in chunk], tag_id(sp, target_lang), beam_size, length_penalty)
        for i, hyps in zip(chunk, results, strict=True):
            out[i] = sp.decode(hyps[0].tokens)
    return out


def score_translations(hypotheses: list[str], references: list[str], seconds: float) -> TranslationScores:
    """Cased, detokenized sacreBLEU with the 13a tokenizer, and chrF."""
    bleu = BLEU(tokenize="13a")
    result = bleu.corpus_score(hypotheses, [references])
    chrf = sacrebleu.corpus_chrf(hypotheses, [references])
    return TranslationScores(
        round(result.score, 2), round(chrf.score, 2), len(hypotheses), round(seconds, 1), str(bleu.get_signature())
    )


def paired_bootstrap_p(
    hypotheses: list[str], baseline: list[str], references: list[str], resamples: int = 1000
) -> float:
    """sacreBLEU's paired bootstrap resampling (Koehn, 2004) of the BLEU difference between two systems'
    translations of the same sentences: the chance that a difference as large arises from the choice
    of sentences alone. sacreBLEU seeds the resampling (SACREBLEU_SEED), so a pair gets the same p each time."""
    test = PairedTest([("baseline", baseline), ("system", hypotheses)], {"BLEU": BLEU(tokenize="13a")},
                      [references], test_type="bs", n_samples=resamples)  # fmt: skip
    _, results = test()
    system = results["BLEU"][1]
    assert isinstance(system, Result) and system.p_value is not None  # every system after the baseline has one
    return float(system.p_value)


@torch.no_grad()
def mlm_accuracy(model: Transformer, sp: spm.SentencePieceProcessor, sentences: list[str]) -> dict[str, float]:
    """Top-1/top-5 accuracy at BERT-masked positions (15%, 80/10/10), fixed seed."""
    rng = np.random.default_rng(MLM_SEED)
    hits1 = hits5 = total = 0
    encoded = [[*s, EOS_ID] for s in sp.encode(sentences)]
    for start in range(0, len(encoded), 128):
        ids = pad(encoded[start : start + 128])
        reserved = FIRST_LANGUAGE_TAG_ID + len(model.cfg.languages)
        inputs, labels = mask_tokens(ids, rng, model.cfg.vocab_size, reserved=reserved)
        picked = labels != PAD_ID
        hidden = model.encode(inputs, inputs != PAD_ID)
        top5 = model.mlm_logits(hidden[picked]).topk(5, dim=-1).indices  # [N, 5]
        gold = labels[picked][:, None]
        hits1 += int((top5[:, :1] == gold).sum())
        hits5 += int((top5 == gold).any(-1).sum())
        total += int(picked.sum())
    return {"top1": round(hits1 / total, 4), "top5": round(hits5 / total, 4), "masked_tokens": total}


def evaluate_split(
    model: Transformer,
    sp: spm.SentencePieceProcessor,
    sources: list[str],
    references: list[str],
    target_lang: str,
    beam_size: int,
    length_penalty: float = 1.0,
    batch_size: int = 64,
) -> tuple[TranslationScores, list[str]]:
    start = time.perf_counter()
    hyps = translate(model, sp, sources, target_lang, beam_size, length_penalty, batch_size)
    return score_translations(hyps, references, time.perf_counter() - start), hyps


def model_languages(model: Transformer, sp: spm.SentencePieceProcessor) -> ModelLanguages:
    cfg = model.cfg
    return ModelLanguages(cfg.languages, {lang: tag_id(sp, lang) for lang in cfg.languages}, cfg.directions)


def _load_split(
    args: argparse.Namespace, model_dir: Path, direction: tuple[str, str]
) -> tuple[str, list[str], list[str]]:
    if "," in args.split:
        src_file, ref_file = (Path(p) for p in args.split.split(","))
        sources, references = corpus.read_lines(src_file), corpus.read_lines(ref_file)
        if len(sources) != len(references):
            raise SystemExit(f"{src_file} has {len(sources)} lines but {ref_file} has {len(references)}")
        name = src_file.name
    else:
        data_dir = corpus.resolve_data_dir(args.data_dir)
        sources, references = corpus.split_texts(training_data_config(args, model_dir), data_dir, args.split, direction)
        name = args.split
    if args.limit:
        sources, references, name = sources[: args.limit], references[: args.limit], f"{name}[:{args.limit}]"
    return name, sources, references


def _mlm_report(args: argparse.Namespace, model_dir: Path, model: Transformer, sp: Any) -> dict[str, Any]:
    """Masked-LM accuracy on the validation split, in each of its languages."""
    data = training_data_config(args, model_dir)
    split = data.validation_split
    if not split:
        return {}
    data_dir = corpus.resolve_data_dir(args.data_dir)
    langs = data.split_langs(split)
    sources, targets = corpus.split_texts(data, data_dir, split, langs)
    return {langs[0]: mlm_accuracy(model, sp, sources), langs[1]: mlm_accuracy(model, sp, targets)}


def update_eval_file(path: Path, key: str, direction: str, entry: dict[str, Any]) -> None:
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault(key, {})[direction] = entry
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def run_eval_command(args: argparse.Namespace) -> int:
    model_dir = args.model or DEFAULT_MODEL_DIR
    try:
        model, sp = load_model_dir(model_dir)
        languages = model_languages(model, sp)
        direction = languages.parse_direction(args.direction) if args.direction else languages.directions[0]
        name, sources, references = _load_split(args, model_dir, direction)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"mtserve eval: {exc}") from exc
    direction_name = f"{direction[0]}-{direction[1]}"
    scores, hyps = evaluate_split(
        model, sp, sources, references, direction[1], args.beam_size, args.length_penalty, args.batch_size
    )
    entry: dict[str, Any] = {**scores.__dict__, "beam_size": args.beam_size, "length_penalty": args.length_penalty}
    if name == f"test2016[:{GOLDEN_SENTENCES}]" and args.beam_size == 5:
        entry["floor"] = round(scores.bleu - GOLDEN_MARGIN, 2)
    report: dict[str, Any] = {"split": name, "direction": direction_name, **entry}
    if args.output:
        args.output.write_text("\n".join(hyps) + "\n")
    if not args.no_mlm:
        report["mlm"] = _mlm_report(args, model_dir, model, sp)
    print(json.dumps(report, indent=2))
    if not args.no_write:
        update_eval_file(model_dir / EVAL_FILE, name, direction_name, entry)
        if "mlm" in report:
            results = json.loads((model_dir / EVAL_FILE).read_text())
            results["mlm_val"] = report["mlm"]
            (model_dir / EVAL_FILE).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0
