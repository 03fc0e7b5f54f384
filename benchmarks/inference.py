"""Corpus scoring: the batched, length-bucketed path against the reference's approach.

The reference scores one document at a time, each padded to max_length (and truncated to
it), with the backbone as transformers ships it (eager attention for XGLM, padding mask); it is
also run on our kernels (SDPA, causal without a mask) to separate batching from kernels. All
use the same checkpoint and documents — the web text of --web (JSONL) when present, else a
generated mix of lengths — in one session; prints documents/s, tokens/s and the ratios (not a
test). The batched path runs capped at one window per document (the reference's work) in fp32
and in bf16 (the backbone's weights in bf16), and then on every window of long documents, split
into tokenizing and the model alone (per batch budget, with MFU); on a GPU it
counts the host syncs of score_windows. The workflow's stages on a shard (tokenize_scorer_shard,
then score_shard on its windows): benchmarks/score_shard.py.

    python benchmarks/inference.py                          # CPU: a small XGLM scorer
    python benchmarks/inference.py --scorer results/scorer  # a trained checkpoint instead
    python benchmarks/inference.py --preset xglm-125m --compare-max-tokens 65536
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from lqs import splits
from lqs.corpus import CorpusReading
from lqs.scorer import Scorer, ScorerModel, compute_dtype, load, save_scorer, spearman
from lqs.stages import train_tokenizer as train_tokenizer_stage
from lqs.tokenize import tokenize_windows

WEB = Path(".bench/web.jsonl")  # web documents, JSONL with a text field (benchmarks/gpu.sh: $WEB)
PRESETS = {
    "cpu-small": dict(d_model=256, ffn_dim=1024, num_layers=4, attention_heads=4, docs=300),
    # KoboldAI/fairseq-dense-125M: XGLM, 12 layers × 768, 12 heads, ffn 3072.
    "xglm-125m": dict(d_model=768, ffn_dim=3072, num_layers=12, attention_heads=12, docs=3000),
}


def documents(n: int, web: Path = WEB) -> list[str]:
    if web.exists():
        with open(web, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        return texts[:n]
    rng = random.Random(0)
    words = "the of data model learn score token corpus window batch quality gradient".split()
    # Web-like length mix: mostly short pages, a long tail of long ones.
    return [" ".join(rng.choice(words) for _ in range(int(rng.lognormvariate(5.5, 1.0)) + 5)) for _ in range(n)]


def plan_corpus(workdir: Path, paths: list[Path]) -> tuple[str, str]:
    """The corpus plan of `paths` in one shard ("0"), as the workflow writes it (under
    workdir/plans): the plan file's path and the digest of the shard's splits, which the stages
    reading it check."""
    plan = splits.build_plan([str(p) for p in paths], {}, [p.stat().st_size for p in paths], 1, None)
    return plan.write(str(workdir / "plans")), splits.splits_sha256(plan.shard("0").splits)


def build_scorer(workdir: Path, texts: list[str], preset: dict, max_length: int) -> Path:
    from transformers import AutoTokenizer, XGLMConfig, XGLMModel

    corpus = workdir / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    plan, sha256 = plan_corpus(workdir, [corpus])
    train_tokenizer_stage.train_tokenizer(plan, str(workdir / "tokenizer"), train_tokenizer_stage.Settings(
        CorpusReading(sha256, "text", 10**9), vocab_size=8192, on_bad_record="error"))
    tokenizer = AutoTokenizer.from_pretrained(workdir / "tokenizer")
    torch.manual_seed(0)
    config = XGLMConfig(vocab_size=len(tokenizer), max_position_embeddings=max_length + 2,
                        pad_token_id=tokenizer.pad_token_id,
                        **{k: v for k, v in preset.items() if k != "docs"})
    save_scorer(ScorerModel(XGLMModel(config)), tokenizer, workdir / "scorer", {"max_length": max_length})
    return workdir / "scorer"


def stock_reference_model(path: Path, scorer) -> ScorerModel:
    """The checkpoint's backbone as transformers loads it by default, as the reference runs it:
    its own attention implementation (eager for XGLM), always given the padding mask; the
    scorer's head on top."""
    from transformers import AutoModel

    model = ScorerModel(AutoModel.from_pretrained(path, use_safetensors=True))
    model.head, model.causal = scorer.model.head, False  # causal False: the mask is always passed
    return model.to(scorer.device).eval()


@torch.inference_mode()
def reference(scorer, texts: list[str], model: ScorerModel | None = None) -> tuple[list[float], int]:
    """One document at a time, truncated and padded to max_length, bf16 autocast on GPU only;
    through `model` (the stock one) instead of the scorer's when given."""
    max_length, device, model = scorer.max_length, scorer.device, model or scorer.model
    scores, tokens = [], 0
    for text in texts:
        ids = tokenize_windows(scorer.tokenizer, [text], max_length)[0][0]
        tokens += len(ids)
        padded = torch.full((1, max_length), scorer.pad_id)
        mask = torch.zeros((1, max_length), dtype=torch.long)
        padded[0, :len(ids)] = torch.as_tensor(ids)
        mask[0, :len(ids)] = 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            scores.append(float(model(padded.to(device), mask.to(device))))
    return scores, tokens


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def host_syncs(scorer: Scorer, windows, num_texts: int, max_tokens: int | None) -> dict[str, int]:
    """Operations that wait for the GPU during score_windows (CUDA's sync debug mode), by the
    line that ran them; the one expected is the final copy of the scores to the host."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scorer.score_windows(windows, num_texts, max_tokens)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return dict(Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)))


def synthetic_corpus(path: Path, texts: list[str], n: int) -> None:
    """n documents cut from the web texts at web-like lengths (lognormal, median ~1,000 chars)."""
    rng = random.Random(1)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = texts[i % len(texts)]
            length = min(len(text), int(rng.lognormvariate(7.0, 1.0)) + 20)
            start = rng.randrange(0, len(text) - length + 1)
            f.write(json.dumps({"text": text[start:start + length]}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS)
    parser.add_argument("--scorer", type=Path, help="a trained checkpoint (e.g. results/scorer) instead of a "
                        "randomly initialised one; its max_length applies")
    parser.add_argument("--web", type=Path, default=WEB, help="web documents (JSONL with a text field)")
    parser.add_argument("--docs", type=int)
    parser.add_argument("--reference-docs", type=int, help="documents for the one-at-a-time reference "
                        "(default: all on a GPU, a third on a CPU)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the scorer's, per device")
    parser.add_argument("--compare-max-tokens", type=int, nargs="*", default=[],
                        help="batch budgets to time beside the default")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    preset = PRESETS[args.preset or ("xglm-125m" if cuda else "cpu-small")]
    texts = documents(args.docs or preset["docs"], args.web)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.scorer or build_scorer(Path(tmp), texts, preset, args.max_length)
        scorer, scorer_bf16 = load(path, dtype="fp32"), load(path, dtype="bf16")
        stock = stock_reference_model(path, scorer)
        default_dtype = compute_dtype("auto", scorer.device)
        every = scorer_bf16 if default_dtype == "bf16" else scorer
        name = torch.cuda.get_device_name() if cuda else "cpu"
        print(f"device {name}, {len(texts)} documents ({'web' if args.web.exists() else 'generated'}), "
              f"max_length {scorer.max_length}, stock attention: {stock.backbone.config._attn_implementation}, "
              f"default batch budget {every.max_tokens} tokens")
        result = run(args, texts, scorer, scorer_bf16, every, stock, cuda)
    result |= {"device": name, "default_max_tokens": every.max_tokens}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


def run(args, texts, scorer, scorer_bf16, every, stock, cuda: bool) -> dict:
    default_dtype = every.dtype
    windows = tokenize_windows(scorer.tokenizer, texts, scorer.max_length)
    one_tokens = sum(len(doc[0]) for doc in windows)
    all_tokens = sum(len(w) for doc in windows for w in doc)
    for s in (scorer, scorer_bf16):  # warm-up
        s.score(texts[:16], args.max_tokens)
    reference(scorer, texts[:8], stock)  # the stock model's first documents are slower still
    reference(scorer, texts[:8])
    ref_n = args.reference_docs or max(16, len(texts) // (1 if cuda else 3))  # slow on CPU: a subset
    (ref_scores, ref_tokens), ref_s = timed(lambda: reference(scorer, texts[:ref_n], stock))
    (_, _), kernels_s = timed(lambda: reference(scorer, texts[:ref_n]))
    fp32, fp32_s = timed(lambda: scorer.score(texts, args.max_tokens, max_windows_per_doc=1))
    bf16, bf16_s = timed(lambda: scorer_bf16.score(texts, args.max_tokens, max_windows_per_doc=1))
    _, all_s = timed(lambda: every.score(texts, args.max_tokens))
    rows = {
        "reference (stock, 1 doc, padded)": (ref_n / ref_s, ref_tokens / ref_s),
        "  same, on our kernels": (ref_n / kernels_s, ref_tokens / kernels_s),
        "batched, first window, fp32": (len(texts) / fp32_s, one_tokens / fp32_s),
        "batched, first window, bf16": (len(texts) / bf16_s, one_tokens / bf16_s),
        f"batched, every window, {default_dtype}": (len(texts) / all_s, all_tokens / all_s),
    }
    # The split of the every-window path: tokenizing, then the model alone, per batch budget.
    (scored_windows, _), tokenize_s = timed(lambda: every.windows(texts))
    lengths = [len(w.ids) for w in scored_windows]
    flops = every.forward_flops(lengths)
    split = {"tokenize_s": tokenize_s, "tokenize_tokens_per_s": all_tokens / tokenize_s, "model": {}}
    for budget in [None, *args.compare_max_tokens]:
        _, model_s = timed(lambda budget=budget: every.score_windows(scored_windows, len(texts), budget))
        key = str(budget or f"default {every.max_tokens}")
        split["model"][key] = {"s": model_s, "tokens_per_s": all_tokens / model_s,
                               "tflops": flops / model_s / 1e12, "mfu": flops / model_s / (args.peak_tflops * 1e12)}
        rows[f"  model alone, budget {key}"] = (len(texts) / model_s, all_tokens / model_s)
    for name, (docs_s, tok_s) in rows.items():
        print(f"{name:40s} {docs_s:10.1f} docs/s {tok_s:12.0f} tokens/s")
    reference_docs_s, kernels_docs_s = rows["reference (stock, 1 doc, padded)"][0], rows["  same, on our kernels"][0]
    fp32_docs_s, bf16_docs_s = rows["batched, first window, fp32"][0], rows["batched, first window, bf16"][0]
    result = {
        "docs_per_s_ratio_fp32": fp32_docs_s / reference_docs_s,
        "docs_per_s_ratio_bf16": bf16_docs_s / reference_docs_s,
        "docs_per_s_ratio_fp32_vs_reference_on_our_kernels": fp32_docs_s / kernels_docs_s,
        "docs_per_s_ratio_bf16_vs_reference_on_our_kernels": bf16_docs_s / kernels_docs_s,
        "max_score_disagreement_fp32_vs_reference": max(abs(a - b) for a, b in zip(ref_scores, fp32[:ref_n])),
        "max_score_disagreement_bf16_vs_fp32": float(np.max(np.abs(np.subtract(bf16, fp32)))),
        "score_std": float(np.std(fp32)),
        "spearman_bf16_vs_fp32": spearman(np.array(bf16), np.array(fp32)),
        "tokens_per_s": {name: tok_s for name, (_, tok_s) in rows.items()},
        "every_window_split": split,
    }
    if cuda:
        result["mfu_every_window"] = flops / all_s / (args.peak_tflops * 1e12)
        result["host_syncs_in_score_windows"] = host_syncs(every, scored_windows, len(texts), args.max_tokens)
    return result


if __name__ == "__main__":
    main()
