"""Corpus scoring: the batched, length-bucketed path against the reference's approach.

The reference scores one document at a time, each padded to max_length (and truncated to
it). Both use the same checkpoint and documents — the web text in ../shared/data when present,
else a generated mix of lengths — in one session; prints documents/s, tokens/s and the ratio
(not a test). The batched path is run twice: capped at one window per document (the same
work as the reference) and scoring every window of long documents.

    python benchmarks/inference.py                    # CPU: a small XGLM scorer
    python benchmarks/inference.py --preset xglm-125m # GPU: fairseq-dense-125M's architecture
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from lqs.models import train_tokenizer
from lqs.scorer import ScorerModel, load, save_scorer
from lqs.tokenize import tokenize_windows

WEB = Path(__file__).resolve().parents[2] / "shared" / "data" / "web.jsonl"
PRESETS = {
    "cpu-small": dict(d_model=256, ffn_dim=1024, num_layers=4, attention_heads=4, docs=300),
    # KoboldAI/fairseq-dense-125M: XGLM, 12 layers × 768, 12 heads, ffn 3072.
    "xglm-125m": dict(d_model=768, ffn_dim=3072, num_layers=12, attention_heads=12, docs=3000),
}


def documents(n: int) -> list[str]:
    if WEB.exists():
        with open(WEB, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        return texts[:n]
    rng = random.Random(0)
    words = "the of data model learn score token corpus window batch quality gradient".split()
    # Web-like length mix: mostly short pages, a long tail of long ones.
    return [" ".join(rng.choice(words) for _ in range(int(rng.lognormvariate(5.5, 1.0)) + 5)) for _ in range(n)]


def build_scorer(workdir: Path, texts: list[str], preset: dict, max_length: int) -> Path:
    from transformers import AutoTokenizer, XGLMConfig, XGLMModel

    corpus = workdir / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    train_tokenizer([str(corpus)], str(workdir / "tokenizer"), text_field="text", vocab_size=8192,
                    max_chars=10**9)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "tokenizer")
    torch.manual_seed(0)
    config = XGLMConfig(vocab_size=len(tokenizer), max_position_embeddings=max_length + 2,
                        pad_token_id=tokenizer.pad_token_id,
                        **{k: v for k, v in preset.items() if k != "docs"})
    save_scorer(ScorerModel(XGLMModel(config)), tokenizer, workdir / "scorer", {"max_length": max_length})
    return workdir / "scorer"


@torch.inference_mode()
def reference(scorer, texts: list[str], max_length: int) -> tuple[list[float], int]:
    """One document at a time, truncated and padded to max_length."""
    scores, tokens = [], 0
    for text in texts:
        ids = tokenize_windows(scorer.tokenizer, [text], max_length)[0][0]
        tokens += len(ids)
        padded = torch.full((1, max_length), scorer.pad_id)
        mask = torch.zeros((1, max_length), dtype=torch.long)
        padded[0, :len(ids)] = torch.as_tensor(ids)
        mask[0, :len(ids)] = 1
        with torch.autocast(scorer.device.type, dtype=torch.bfloat16, enabled=scorer.device.type == "cuda"):
            scores.append(float(scorer.model(padded.to(scorer.device), mask.to(scorer.device))))
    return scores, tokens


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS)
    parser.add_argument("--docs", type=int)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the scorer's, per device")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    preset = PRESETS[args.preset or ("xglm-125m" if cuda else "cpu-small")]
    texts = documents(args.docs or preset["docs"])
    with tempfile.TemporaryDirectory() as tmp:
        scorer = load(build_scorer(Path(tmp), texts, preset, args.max_length))
    params = sum(p.numel() for p in scorer.model.backbone.parameters() if p.ndim == 2) - \
        scorer.model.backbone.embed_tokens.weight.numel()  # matmul weights: 2 FLOPs each per token
    print(f"device {scorer.device}, {len(texts)} documents ({'web.jsonl' if WEB.exists() else 'generated'}), "
          f"max_length {args.max_length}")

    scorer.score(texts[:16], args.max_tokens)  # warm-up
    ref_n = max(16, len(texts) // (1 if cuda else 5))  # the reference is slow on CPU: a subset
    (ref_scores, ref_tokens), ref_s = timed(lambda: reference(scorer, texts[:ref_n], args.max_length))
    one_window, one_s = timed(lambda: scorer.score(texts, args.max_tokens, max_windows_per_doc=1))
    (_, _), all_s = timed(lambda: scorer.score_with_truncation(texts, args.max_tokens))
    all_tokens = sum(len(w) for doc in tokenize_windows(scorer.tokenizer, texts, args.max_length) for w in doc)
    one_tokens = sum(len(doc[0]) for doc in tokenize_windows(scorer.tokenizer, texts, args.max_length))
    rows = {
        "reference (1 doc, padded)": (ref_n / ref_s, ref_tokens / ref_s),
        "batched, first window": (len(texts) / one_s, one_tokens / one_s),
        "batched, every window": (len(texts) / all_s, all_tokens / all_s),
    }
    for name, (docs_s, tok_s) in rows.items():
        print(f"{name:28s} {docs_s:10.1f} docs/s {tok_s:12.0f} tokens/s")
    disagreement = max(abs(a - b) for a, b in zip(ref_scores, one_window[:ref_n]))
    result = {"docs_per_s_ratio": rows["batched, first window"][0] / rows["reference (1 doc, padded)"][0],
              "max_score_disagreement": disagreement}
    if cuda:
        result["mfu_every_window"] = rows["batched, every window"][1] * 2 * params / (args.peak_tflops * 1e12)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
