"""lqs.scorer's XGLM attention patch against transformers' own XGLM (docs/maths.md#the-data-scorer).

transformers has only eager attention for XGLM; load_backbone replaces XGLMAttention.forward
with scaled-dot-product attention and relies on transformers internals: the forward's argument
names, its (output, weights) return, and masks built in SDPA's format once
config._attn_implementation says "sdpa". A transformers release that changes any of these must
fail here, not in a user's run: the scorer backbone as load_backbone loads it is compared with
the stock eager model on a tiny random XGLM, in fp32, with a padded batch and its attention
mask, causally without padding, and as ScorerModel runs it (no mask), gradients included.
pyproject.toml bounds transformers to the releases this passed on.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, XGLMConfig, XGLMModel

import lqs.scorer

PAD = 1
TOLERANCE = dict(rtol=1e-5, atol=2e-6)  # fp32; measured: 5e-7 (outputs of about 3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random XGLM (two layers, so that masks pass through a layer), saved as the
    scorer base is."""
    torch.manual_seed(0)
    config = XGLMConfig(vocab_size=50, d_model=32, ffn_dim=64, num_layers=2, attention_heads=4,
                        max_position_embeddings=64, pad_token_id=PAD, bos_token_id=0, eos_token_id=2,
                        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = XGLMModel(config)
    with torch.no_grad():  # sharp attention (initialised, it is near uniform): masks and scales show
        for layer in model.layers:
            layer.self_attn.q_proj.weight.mul_(15)
            layer.self_attn.k_proj.weight.mul_(15)
    path = tmp_path_factory.mktemp("xglm")
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def models(checkpoint):
    patched = lqs.scorer.load_backbone(str(checkpoint)).eval()
    stock = AutoModel.from_pretrained(str(checkpoint), attn_implementation="eager", dtype=torch.float32).eval()
    return patched, stock


def batch(lengths: list[int], seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (as the scorer's batches) and their attention mask."""
    generator = torch.Generator().manual_seed(sum(lengths))
    ids = torch.randint(3, 50, (len(lengths), seq), generator=generator)
    mask = (torch.arange(seq)[None] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.fixture
def sdpa_calls(monkeypatch):
    """is_causal and whether a mask was given, for each scaled_dot_product_attention call."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        calls.append((is_causal, attn_mask is not None))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def test_the_patch_is_in_place(models):
    """XGLM still has no SDPA of its own in transformers, so load_backbone patches it. If this
    fails because a release added it, load_backbone takes that and the patch can go."""
    patched, stock = models
    attention = [m for m in patched.modules() if type(m).__name__ == "XGLMAttention"]
    assert len(attention) == 2
    assert all(m.forward.__func__ is lqs.scorer._xglm_sdpa_forward for m in attention)
    assert patched.config._attn_implementation == "sdpa"
    assert stock.config._attn_implementation == "eager"
    assert type(stock.layers[0].self_attn).forward is not lqs.scorer._xglm_sdpa_forward


def test_padded_batch_with_attention_mask(models, sdpa_calls):
    patched, stock = models
    ids, mask = batch([12, 7, 3, 12], seq=12)
    with torch.no_grad():
        got = patched(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = stock(input_ids=ids, attention_mask=mask).last_hidden_state
    assert sdpa_calls == [(False, True)] * 2  # the padding mask reached SDPA, in every layer
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], **TOLERANCE)
    torch.testing.assert_close(got, expected, **TOLERANCE)  # the pads' rows too (right padding)


def test_causal_without_padding(models, sdpa_calls):
    patched, stock = models
    ids, mask = batch([10, 10, 10], seq=10)
    with torch.no_grad():
        expected = stock(input_ids=ids).last_hidden_state
        got = patched(input_ids=ids).last_hidden_state
        got_with_mask = patched(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, expected, **TOLERANCE)
    torch.testing.assert_close(got_with_mask, expected, **TOLERANCE)
    # no mask at all: SDPA's causal kernel (an all-ones mask may be dropped or kept)
    assert sdpa_calls[:2] == [(True, False)] * 2


def test_as_the_scorer_runs_it_gradients_included(checkpoint, models, sdpa_calls):
    """ScorerModel calls a causal backbone without a mask on right-padded batches (real tokens
    never attend to later pads): the real positions' outputs and the gradients through them are
    the stock model's given the mask."""
    _, stock = models
    stock.zero_grad(set_to_none=True)
    scorer = lqs.scorer.ScorerModel(lqs.scorer.load_backbone(str(checkpoint)))
    assert scorer.causal
    patched = scorer.backbone
    assert all(m.lqs_causal_only for m in patched.modules() if hasattr(m, "lqs_causal_only"))
    ids, mask = batch([9, 4, 9, 1], seq=9)
    real = mask.bool()
    sdpa_calls.clear()  # is_causal's probe ran above
    got = patched(input_ids=ids, attention_mask=mask).last_hidden_state  # the mask is ignored: causal only
    expected = stock(input_ids=ids, attention_mask=mask).last_hidden_state
    assert sdpa_calls == [(True, False)] * 2
    torch.testing.assert_close(got[real], expected[real], **TOLERANCE)
    weights = torch.randn(got[real].shape, generator=torch.Generator().manual_seed(1))
    (got[real] * weights).sum().backward()
    (expected[real] * weights).sum().backward()
    stock_params = dict(stock.named_parameters())
    assert set(stock_params) == {name for name, _ in patched.named_parameters()}
    for name, param in patched.named_parameters():
        torch.testing.assert_close(param.grad, stock_params[name].grad, **TOLERANCE, msg=name)


def test_a_kv_cache_is_refused(models):
    """The scorer never caches (load_backbone: use_cache=False). transformers' eager forward
    cannot stand in for a caller that does: it would read SDPA's masks (None when causal) as no
    mask at all, so the patch refuses instead of giving wrong outputs."""
    patched, _ = models
    ids, _ = batch([6, 6], seq=6)
    with pytest.raises(NotImplementedError, match="no KV cache"):
        patched(input_ids=ids, use_cache=True)
