"""The data scorer (docs/maths.md#the-data-scorer): an AutoModel backbone, mean-pooled, a linear head.

Checkpoint layout (a directory): the backbone as a Hugging Face model (config.json,
model.safetensors), its tokenizer, `head.safetensors`, and `scorer.json`, which records the
SHA-256 of each safetensors file (`weights_sha256`): loading refuses weights that are not those
the checkpoint was saved with. Loading needs nothing of the training code:

    >>> import lqs.scorer
    >>> scorer = lqs.scorer.load("results/scorer")
    >>> scorer.score(["some text", "another document"])
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import multiprocessing
import signal
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from lqs.corpus import MAX_CHARS, text_error
from lqs.proxy import collate
from lqs.runtime import compiled, resolve_device
from lqs.scorer_windows import budget_slices
from lqs.tokenize import cut_windows, load_tokenizer, tokenize_windows

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

SCORER_CONFIG = "scorer.json"
HEAD_FILE = "head.safetensors"
POOLINGS = ("mean",)  # scorer.json `pooling`: how window outputs become a document's (ScorerModel.forward)
WEIGHTS_DIGESTS = "weights_sha256"  # in scorer.json: {file name: SHA-256} of each safetensors file
CPU_MAX_TOKENS = 4096  # cache-sized batches (benchmarks/inference.py)
# GPU batches: as many tokens as fit half the free memory, at most this many. Measured on an H200
# (125M XGLM, bf16): 65536 tokens 855k tokens/s, 262144 1.30M tokens/s.
GPU_MAX_TOKENS = 262144
# Compiled scoring pads a batch's width to a multiple of this: at most max_length / 64 shapes.
COMPILE_WIDTH_STEP = 64


def is_causal(backbone: torch.nn.Module) -> bool:
    """Whether each position sees only earlier ones: probed, by changing the last token."""
    ids = torch.arange(3, 11).remainder(backbone.config.vocab_size - 3).add(3)[None]
    changed = ids.clone()
    changed[0, -1] = ids[0, -2]
    device = next(backbone.parameters()).device
    with torch.no_grad():
        a, b = (backbone(input_ids=x.to(device)).last_hidden_state[0, :-1] for x in (ids, changed))
    return bool(torch.equal(a, b))


class ScorerModel(torch.nn.Module):
    """Batches are right-padded. A causal backbone then needs no padding mask (real tokens never
    attend to later pads; pooling skips them), which keeps attention on the fused causal kernels;
    a bidirectional one gets the mask."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.config.hidden_size, 1)
        self.causal = is_causal(backbone)
        for module in backbone.modules():  # XGLM attention patched by load_backbone
            if hasattr(module, "lqs_causal_only"):
                module.lqs_causal_only = self.causal

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids,
                               attention_mask=None if self.causal else attention_mask).last_hidden_state
        with torch.autocast(hidden.device.type, enabled=False):  # pooling and head stay fp32 under bf16
            mask = attention_mask.unsqueeze(-1).float()
            pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
            return self.head(pooled).squeeze(-1)


def blockwise_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                               block: int = 128) -> torch.Tensor:
    """softmax(q kᵀ · scale + causal mask) v for (batch, heads, seq, dim) inputs, one block of
    queries at a time, each against only the keys up to the block's end: about half of the L×L
    scores are never computed, and the matmuls run in the inputs' dtype. PyTorch's fused CPU
    kernel computes bf16 in fp32; on a CPU with bf16 units this is ~2× faster at the same error
    (benchmarks/inference.py). The result is a (batch, seq, heads, dim) buffer seen transposed,
    so that merging the heads afterwards is a view."""
    batch, heads, seq, dim = q.shape
    q = q * scale
    k_t, v = k.transpose(-1, -2).contiguous(), v.contiguous()  # slices of these need no copies
    out = q.new_empty(batch, seq, heads, dim).transpose(1, 2)
    future = torch.ones(block, block, dtype=torch.bool, device=q.device).triu(1)
    for start in range(0, seq, block):
        end = min(start + block, seq)
        scores = torch.matmul(q[..., start:end, :], k_t[..., :end])
        scores[..., start:end].masked_fill_(future[:end - start, :end - start], float("-inf"))
        out[..., start:end, :] = scores.softmax(-1) @ v[..., :end, :]
    return out


def _xglm_sdpa_forward(self, hidden_states, key_value_states=None, cache=None, attention_mask=None,
                       **kwargs):
    """XGLM self-attention through F.scaled_dot_product_attention: the same maths as its eager
    bmm-softmax-bmm without materialising the B×H×S×S weights (fused kernels). A mask that is
    only causal (no padding: XGLMModel called without attention_mask) runs as is_causal; a
    padding mask comes in SDPA's boolean format (True: attend), or as eager's additive floats.
    No KV cache (`cache`; `past_key_values` before transformers 5.24), no cross-attention: the
    stock eager forward cannot take their place, as it would misread SDPA's masks (None: no
    mask at all)."""
    if key_value_states is not None or cache is not None or kwargs.get("past_key_values") is not None:
        raise NotImplementedError("lqs.scorer.load_backbone's XGLM attention has no KV cache and no "
                                  "cross-attention (use_cache must stay off): load the model with "
                                  "transformers itself to generate")
    batch, seq, _ = hidden_states.shape
    q, k, v = (proj(hidden_states).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
               for proj in (self.q_proj, self.k_proj, self.v_proj))
    mask = None if getattr(self, "lqs_causal_only", False) else attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    causal = mask is None  # SDPA-format masks are None exactly when attention is causal, unpadded
    if causal and q.dtype == torch.bfloat16 and q.device.type == "cpu" and not self.training:
        out = blockwise_causal_attention(q, k, v, self.scaling)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scaling,
                                             dropout_p=self.dropout if self.training else 0.0)
    return self.out_proj(out.transpose(1, 2).reshape(batch, seq, self.embed_dim)), None


def load_backbone(path: str, trust_remote_code: bool = False, dtype=torch.float32):
    from transformers import AutoModel

    # use_safetensors: a pickle planted where the weights belong is refused, never unpickled.
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, use_cache=False, use_safetensors=True)
    # transformers' default attention: SDPA where it has it for the architecture, else eager
    model = AutoModel.from_pretrained(path, **kwargs)
    for module in model.modules():  # XGLM (fairseq-dense) has only eager attention in transformers
        if type(module).__name__ == "XGLMAttention":
            module.forward = types.MethodType(_xglm_sdpa_forward, module)
            module.lqs_causal_only = False
            # Masks in SDPA's format: none at all when causal without padding (eager's builds a
            # B×1×S×S mask per batch, with a host sync).
            model.config._attn_implementation = "sdpa"
    return model


def weights_digests(path: Path) -> dict[str, str]:
    """{file name: SHA-256} of the safetensors files of a checkpoint directory."""
    digests = {}
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as f:
            digests[file.name] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def save_scorer(model: ScorerModel, tokenizer, out_dir: str | Path, config: dict) -> None:
    """Writes the checkpoint; `config` goes to scorer.json with the digests of the weights written."""
    out_dir = Path(out_dir)
    model.backbone.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()},
              str(out_dir / HEAD_FILE))
    config = {**config, WEIGHTS_DIGESTS: weights_digests(out_dir)}
    (out_dir / SCORER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_weights(path: Path, config: dict) -> dict[str, str] | None:
    """Refuses weights that are not those the checkpoint was saved with (a backbone swapped for
    another of the same width would load and score silently). A checkpoint saved before the
    digests were recorded is loaded with a warning. Hashing reads the weights once more (~1.6 GB/s
    measured: ~0.3 s for a 125M-parameter float32 backbone; the page cache then serves the load).
    Returns the digests checked (None for such an older checkpoint)."""
    recorded = config.get(WEIGHTS_DIGESTS)
    if recorded is None:
        log.warning("%s: its %s records no digests of its weights (a checkpoint saved before lqs recorded "
                    "them): the weights are not checked", path, SCORER_CONFIG)
        return
    found = weights_digests(path)
    for name in sorted(set(recorded) | set(found)):
        if name not in found:
            raise ValueError(f"{path / name} is missing: the scorer checkpoint {path} was saved with it "
                             f"({SCORER_CONFIG})")
        if recorded.get(name) != found[name]:
            raise ValueError(f"{path / name} is not the file this scorer checkpoint was saved with (its SHA-256 "
                             f"is not the one in {path / SCORER_CONFIG}): the weights were changed or replaced; "
                             "restore the checkpoint's own files, or train or fetch the scorer again")
    return found


def read_scorer_config(path: Path) -> dict:
    """A checkpoint's scorer.json, checked: a JSON object with a whole max_length of at least 1,
    a pooling lqs knows (POOLINGS; a checkpoint without one pools by mean, as all did before it
    was recorded) and digests as {file name: SHA-256}; ValueError naming the file otherwise."""
    from lqs.models import json_object_file

    file = Path(path) / SCORER_CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a scorer checkpoint (no {SCORER_CONFIG})")
    config = json_object_file(file)
    max_length, pooling, digests = config.get("max_length"), config.get("pooling", "mean"), config.get(WEIGHTS_DIGESTS)
    if type(max_length) is not int or max_length < 1:
        raise ValueError(f"{file}: max_length must be a whole number of at least 1, not {max_length!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"{file}: pooling {pooling!r} is not one lqs scores with ({', '.join(POOLINGS)}): the "
                         "checkpoint was made for another scorer")
    if digests is not None and not (isinstance(digests, dict)
                                    and all(isinstance(v, str) for v in digests.values())):
        raise ValueError(f"{file}: {WEIGHTS_DIGESTS} must map file names to SHA-256 digests")
    return config


def check_checkpoint(path: Path, config: Mapping, trust_remote_code: bool = False) -> None:
    """The checkpoint's files checked before anything is loaded or allocated by what they say
    (lqs.models.check_model_files, check_weight_shapes): scorer.json's max_length within the
    backbone's positions, and a head of one output over the backbone's width."""
    from transformers import AutoModel

    from lqs.models import check_model_files, check_weight_shapes, safetensors_shapes

    sizes = check_model_files(path)
    positions = sizes.get("positions")
    if positions is not None and config["max_length"] > positions:
        raise ValueError(f"{path / SCORER_CONFIG}: max_length {config['max_length']} is beyond the "
                         f"{positions} positions of its backbone ({path / 'config.json'})")
    if not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a scorer checkpoint (no {HEAD_FILE})")
    head, width = safetensors_shapes(path / HEAD_FILE), sizes.get("width")
    if head.keys() != {"weight", "bias"} or head["bias"] != [1] or len(head["weight"]) != 2 or head["weight"][0] != 1 \
            or head["weight"][1] != (width or head["weight"][1]):
        raise ValueError(f"{path / HEAD_FILE}: the head must be a weight of shape [1, {width or 'width'}] and a bias "
                         f"of shape [1], not {head}")
    check_weight_shapes(path, AutoModel, trust_remote_code)


def compute_dtype(name: str, device: torch.device) -> str:
    """`auto` is bf16 on a GPU and fp32 on a CPU: bf16 on a CPU is opt-in, as it is fast only
    where the CPU has bf16 units (AVX512-BF16, AMX), and a CPU run should give the same scores
    on every machine."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be auto, fp32 or bf16, not {name!r}")
    return name


def forward_batch(model: ScorerModel, batch: Sequence[Sequence[int]], pad_id: int, device,
                  dtype: str = "auto") -> torch.Tensor:
    """Scores of right-padded token sequences as fp32 on `device`. When `dtype` (see
    compute_dtype) says bf16, a backbone with fp32 weights (training) runs under bf16 autocast;
    one whose weights are bf16 already (a Scorer loaded for bf16 inference) runs as it is."""
    ids, mask = collate(batch, pad_id, device)
    backbone = getattr(model, "module", model).backbone  # under DDP, the wrapped model's
    fp32_weights = next(backbone.parameters()).dtype == torch.float32
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute_dtype(dtype, device) == "bf16"
                        and fp32_weights):
        return model(ids, mask).float()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant: the
    scorer's validation metric."""
    import pandas as pd  # here: loading a scorer needs no pandas

    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def prefetched(items: Iterator[T], fn: Callable[[T], R]) -> Iterator[R]:
    """fn of each item in turn, the next item read and computed in a background thread while
    the caller works on the current one: reading and tokenizing overlap the scoring."""
    done = object()

    def next_result():
        item = next(items, done)
        return done if item is done else fn(item)

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next_result)
        while (result := future.result()) is not done:
            future = pool.submit(next_result)
            yield result


@dataclass
class Window:
    doc: int
    ids: list[int]


# A first guess at the characters a token spans, at most, for the prefix of a long text that holds
# the windows max_windows_per_doc keeps (doubled until it holds enough tokens), and the tokens
# past those windows that make the tokens before the cut the same as the whole text's.
CHARS_PER_TOKEN = 8
CUT_MARGIN = 64


def kept_text(tokenizer, text: str, tokens: int) -> str:
    """The prefix of `text` that holds its first `tokens` tokens as the whole text has them: the
    first of (tokens + CUT_MARGIN) × CHARS_PER_TOKEN characters, doubled, with more than tokens +
    CUT_MARGIN tokens, or the whole text. A 50 MB document of which 8 windows are scored is then
    tokenized for those windows only, not whole."""
    chars = (tokens + CUT_MARGIN) * CHARS_PER_TOKEN
    while chars < len(text):
        if len(tokenizer(text[:chars], add_special_tokens=False)["input_ids"]) > tokens + CUT_MARGIN:
            return text[:chars]
        chars *= 2
    return text


def scoring_windows(tokenizer, texts: Sequence[str], max_length: int, max_windows_per_doc: int | None = None,
                    first: int = 0) -> tuple[list[Window], list[bool]]:
    """The texts tokenized into scoring windows, and for each whether its windows were capped;
    with max_windows_per_doc, only as much of a text as those windows need is tokenized."""
    if max_windows_per_doc is not None and max_windows_per_doc < 1:  # no window: no score (0 / 0)
        raise ValueError(f"max_windows_per_doc must be at least 1, not {max_windows_per_doc}")
    if max_windows_per_doc is not None:  # a window holds at most max_length tokens
        texts = [kept_text(tokenizer, text, max_windows_per_doc * max_length) for text in texts]
    windows: list[Window] = []
    truncated = [False] * len(texts)
    for doc, doc_windows in enumerate(tokenize_windows(tokenizer, texts, max_length)):
        if not doc_windows:
            raise ValueError(f"text {first + doc} has no tokens to score")
        if max_windows_per_doc is not None and len(doc_windows) > max_windows_per_doc:
            doc_windows = doc_windows[:max_windows_per_doc]
            truncated[doc] = True
        windows.extend(Window(doc, ids) for ids in doc_windows)
    return windows, truncated


def scoring_windows_of_ids(ids: np.ndarray, ends: np.ndarray, frame: tuple[list[int], list[int], int],
                           max_windows_per_doc: int | None = None) -> tuple[list[list[int]], bool]:
    """scoring_windows of a text from its ids and window_ends (lqs.tokenize.tokenize_texts), with
    the tokenizer's window_frame: the same windows, without the text."""
    prefix, suffix, budget = frame
    bounds = cut_windows(len(ids), ends, budget)
    if not bounds:
        raise ValueError("a text with no tokens to score")
    truncated = max_windows_per_doc is not None and len(bounds) > max_windows_per_doc
    return [prefix + ids[a:b].tolist() + suffix for a, b in bounds[:max_windows_per_doc]], truncated


_WORKER: dict = {}  # in a tokenizer process: its tokenizer


def _start_tokenizer_worker(path: str) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the pool, and a worker prints no traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["tokenizer"] = load_tokenizer(path)


def windows_in_worker(max_length: int, texts: list[str], max_windows_per_doc: int | None = None,
                      first: int = 0) -> tuple[list[Window], list[bool], float]:
    """scoring_windows in a process of `tokenizer_processes`, and the seconds it took there."""
    start = time.perf_counter()
    windows, truncated = scoring_windows(_WORKER["tokenizer"], texts, max_length, max_windows_per_doc, first)
    return windows, truncated, time.perf_counter() - start


@contextlib.contextmanager
def tokenizer_processes(path: str | Path, workers: int) -> Iterator[ProcessPoolExecutor]:
    """Processes (spawned) that hold the tokenizer of the checkpoint at `path`, for
    `windows_in_worker`. Tokenizing in a thread beside the GPU held the interpreter lock for the
    Python lists of ids, and kernel launches waited (measured: the model at half its speed).
    They start at once, so that they load while the caller loads the model."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_tokenizer_worker,
                             initargs=(str(path),)) as pool:
        for _ in range(workers):  # processes start on demand: one task each
            pool.submit(int)
        yield pool


def token_budget_batches(windows: Sequence[Window], max_tokens: int) -> Iterator[list[int]]:
    """Indices of `windows`, longest first, grouped so that batch size × longest ≤ max_tokens
    (a lone longer window alone): budget_slices of the windows sorted by length."""
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].ids))
    lengths = np.array([len(windows[i].ids) for i in order], dtype=np.int64)
    for start, stop, _, _ in budget_slices(lengths, max_tokens):
        yield order[start:stop]


def check_texts(texts: Iterable[str], max_chars: int = MAX_CHARS) -> list[str]:
    """`texts` as a list, if the workflow would score every one of them (corpus.text_error: a
    string, not empty or whitespace-only, at most max_chars characters, valid Unicode); else
    ValueError naming each text it would reject by index, and why. TypeError for a bare string
    (which would be scored character by character) or what is not an ordered collection."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"texts must be a list of strings, not a single {type(texts).__name__}: "
                        "pass [text] to score one text")
    if isinstance(texts, (Mapping, Set)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of strings, not {type(texts).__name__}")
    texts = list(texts)
    problems = [f"text {i}: {error}" for i, text in enumerate(texts) if (error := text_error(text, max_chars))]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{len(problems)} of {len(texts)} texts cannot be scored (the workflow rejects "
                         f"such records): {shown}")
    return texts


class Scorer:
    """A loaded scorer checkpoint; `score` is the batched, length-bucketed inference path.
    dtype bf16: the backbone's weights are cast to bf16 and it runs without autocast (measured
    1.5x autocast's speed on a GPU: no fp32 residual stream, no casts); pooling and head fp32."""

    def __init__(self, model: ScorerModel, tokenizer, config: dict, device: torch.device, dtype: str = "auto",
                 compile: bool = False):
        self.model, self.tokenizer, self.config, self.device = model, tokenizer, config, device
        self.dtype = compute_dtype(dtype, device)
        if self.dtype == "bf16":
            model.backbone.to(torch.bfloat16)
            if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                log.warning("bf16 on a CPU without bf16 units: expect it to be slower than fp32")
        self.max_length = int(config["max_length"])
        # score_chunk's forward. Compiled, its batches have static shapes: widths rounded up to a
        # multiple of COMPILE_WIDTH_STEP (at most max_length) and a row count set by the width.
        self.width_step = COMPILE_WIDTH_STEP if compile else 1
        self.forward = (compiled(model, "the scorer's forward", shapes=-(-self.max_length // self.width_step) + 1)
                        if compile else model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.tokens_scored = 0  # running total, for throughput meters
        self.weights_sha256: dict[str, str] | None = None  # as load checked them (lqs.provenance reuses them)

    @functools.cached_property
    def max_tokens(self) -> int:
        """Default tokens per batch (rows × longest). On a GPU: what fits half of the free memory,
        from the peak of a probe batch (per token, fixed overheads included, so on the safe
        side), capped at GPU_MAX_TOKENS; on a CPU: CPU_MAX_TOKENS."""
        if self.device.type != "cuda":
            return CPU_MAX_TOKENS
        probe = [[self.pad_id] * self.max_length] * max(1, 16384 // self.max_length)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode():
            forward_batch(self.model, probe, self.pad_id, self.device, self.dtype)
        torch.cuda.synchronize(self.device)
        per_token = (torch.cuda.max_memory_allocated(self.device) - base) / (len(probe) * self.max_length)
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        budget = max(self.max_length, min(GPU_MAX_TOKENS, int(0.5 * free / per_token)))
        log.info("batch budget %d tokens (%.1f KiB per token, %.1f GiB free)", budget, per_token / 1024,
                 free / 2**30)
        return budget

    def forward_flops(self, lengths: Iterable[int]) -> float:
        """Model FLOPs of a forward over windows of these lengths: 2 per matrix weight and token
        (embeddings are lookups) and causal attention, 4·width per attended key (token i of a
        window attends to i + 1 keys)."""
        backbone = self.model.backbone
        weights = sum(p.numel() for p in backbone.parameters() if p.ndim == 2)
        weights -= backbone.get_input_embeddings().weight.numel()
        layers, width = backbone.config.num_hidden_layers, backbone.config.hidden_size
        lengths = list(lengths)
        return 2.0 * weights * sum(lengths) + 2.0 * layers * width * sum(n * (n + 1) for n in lengths)

    def score(self, texts: Sequence[str], max_tokens: int | None = None, max_windows_per_doc: int | None = None,
              progress: bool = False, max_chars: int = MAX_CHARS) -> list[float]:
        """One score per text: the token-weighted mean of its windows' outputs. The texts are
        checked as the workflow checks corpus records (check_texts): a text it would reject
        raises, naming its index, and the others get the scores scored.jsonl would hold."""
        return self.score_with_truncation(texts, max_tokens, max_windows_per_doc, progress, max_chars=max_chars)[0]

    def score_with_truncation(self, texts: Sequence[str], max_tokens: int | None = None,
                              max_windows_per_doc: int | None = None, progress: bool = False,
                              chunk_docs: int = 1024, max_chars: int = MAX_CHARS) -> tuple[list[float], list[bool]]:
        """Scores, and for each text whether its windows were capped at max_windows_per_doc.
        On a GPU the texts go in chunks, the next one tokenized in a background thread while
        the current one is scored (score_shard tokenizes in processes instead)."""
        texts = check_texts(texts, max_chars)

        def tokenize(start):
            return self.windows(texts[start:start + chunk_docs], max_windows_per_doc, start)

        chunks = iter(range(0, len(texts), chunk_docs))
        scores, truncated = [], []
        for windows, flags in prefetched(chunks, tokenize) if self.device.type == "cuda" else map(tokenize, chunks):
            scores += self.score_windows(windows, len(flags), max_tokens, progress)
            truncated += flags
        return scores, truncated

    def windows(self, texts: Sequence[str], max_windows_per_doc: int | None = None, first: int = 0
                ) -> tuple[list[Window], list[bool]]:
        """The texts tokenized into scoring windows, and for each whether its windows were capped;
        `first`: the number of the first text, for error messages."""
        return scoring_windows(self.tokenizer, texts, self.max_length, max_windows_per_doc, first)

    @torch.inference_mode()
    def score_windows(self, windows: Sequence[Window], num_texts: int, max_tokens: int | None = None,
                      progress: bool = False) -> list[float]:
        """One score per text 0…num_texts−1: the token-weighted mean of its windows' outputs.
        max_tokens (rows × longest per batch) defaults to self.max_tokens (by memory on a GPU)."""
        max_tokens = max_tokens or self.max_tokens
        bar = tqdm(total=sum(len(w.ids) for w in windows), unit="tok", unit_scale=True,
                   desc="scoring", disable=not progress, mininterval=5)
        # Outputs stay on the device until all batches are queued: one host sync, not one per batch.
        order, outputs = [], []
        for batch in token_budget_batches(windows, max(max_tokens, self.max_length)):
            outputs.append(forward_batch(self.model, [windows[i].ids for i in batch], self.pad_id,
                                         self.device, self.dtype))
            order.extend(batch)
            tokens = sum(len(windows[i].ids) for i in batch)
            self.tokens_scored += tokens
            bar.update(tokens)
        bar.close()
        totals, weights = [0.0] * num_texts, [0] * num_texts
        for i, value in zip(order, torch.cat(outputs).cpu().tolist() if outputs else [], strict=True):
            n = len(windows[i].ids)
            totals[windows[i].doc] += n * value
            weights[windows[i].doc] += n
        return [t / w for t, w in zip(totals, weights)]

    @torch.inference_mode()
    def score_chunk(self, chunk, max_tokens: int | None = None) -> np.ndarray:
        """One score per document of a lqs.scorer_windows.Chunk (windows tokenized beforehand,
        sorted longest first): the token-weighted mean of its windows' outputs, as score_windows.
        Batches are contiguous runs of rows at max_tokens (default self.max_tokens); ids go to
        the device from pinned memory without blocking, the mask is made there from the lengths,
        and the outputs stay there until the chunk's one host sync."""
        max_tokens = max(max_tokens or self.max_tokens, self.max_length)
        outputs = []
        for start, stop, width, rows in budget_slices(chunk.lengths, max_tokens, self.width_step,
                                                                 self.max_length):
            ids, lengths = chunk.padded(start, stop, self.pad_id, width, rows)
            outputs.append(self._forward_padded(torch.from_numpy(ids), torch.from_numpy(lengths))[:stop - start])
            self.tokens_scored += int(chunk.offsets[stop] - chunk.offsets[start])
        values = torch.cat(outputs).cpu().numpy().astype(np.float64) if outputs else np.zeros(0)
        weights = chunk.lengths.astype(np.float64)
        num_docs = len(chunk.doc_ids)
        return (np.bincount(chunk.doc_index, weights * values, num_docs)
                / np.bincount(chunk.doc_index, weights, num_docs))

    def _forward_padded(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            ids, lengths = (t.pin_memory().to(self.device, non_blocking=True) for t in (ids, lengths))
        mask = (torch.arange(ids.shape[1], device=self.device) < lengths[:, None]).long()
        fp32_weights = next(self.model.backbone.parameters()).dtype == torch.float32
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16" and fp32_weights):
            return self.forward(ids, mask).float()


def load(path: str | Path, device: str = "auto", trust_remote_code: bool = False, dtype: str = "auto",
         compile: bool = False) -> Scorer:
    """Loads a scorer checkpoint directory for inference; `dtype` is auto, fp32 or bf16
    (see compute_dtype); `compile`: Scorer.score_chunk runs a torch.compile'd forward (where
    compiling fails, the model as it is, said in one log line)."""
    path = Path(path)
    config = read_scorer_config(path)
    check_checkpoint(path, config, trust_remote_code)
    digests = check_weights(path, config)
    device = resolve_device(device)
    model = ScorerModel(load_backbone(str(path), trust_remote_code))
    model.head.load_state_dict(load_file(str(path / HEAD_FILE)))
    tokenizer = load_tokenizer(path)
    scorer = Scorer(model.to(device).eval(), tokenizer, config, device, dtype, compile)
    scorer.weights_sha256 = digests
    return scorer
