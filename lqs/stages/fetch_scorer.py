"""Stage `fetch_scorer`: the pretrained scorer checkpoint, checked and copied (docs/stages.md#fetch_scorer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lqs import provenance
from lqs.io import atomic_dir
from lqs.models import FOREIGN_WEIGHTS, local_source, refuse_local_pickles, resolve_source
from lqs.stage import MODELS, Arg, Stage


@dataclass(frozen=True)
class Settings:
    source: dict[str, Any]  # scorer.checkpoint ({path: ...} or {repo: ..., revision: scorer.checkpoint_revision})
    trust_remote_code: bool  # models.trust_remote_code


def fetch_scorer(out_dir: str, settings: Settings) -> None:
    """A pretrained scorer checkpoint (`scorer.checkpoint`: a hub repo or a local directory, as
    written by train_scorer) loaded and written again as `out_dir`: float32 safetensors backbone,
    its tokenizer, head.safetensors and scorer.json. Loading it here, on the CPU, means a
    checkpoint that is not one, or whose weights are not those it was saved with (lqs.scorer
    check_weights), fails before any scoring job starts; the copy records its own digests, and a
    hub checkpoint's copy the repo and the commit it was fetched at (scorer.json `source`, for the
    provenance blocks: lqs.provenance); a local one keeps the source its scorer.json records, if any."""
    from lqs import scorer as scorer_lib

    source = settings.source
    refuse_local_pickles(source)
    local = resolve_source(source, ignore_patterns=FOREIGN_WEIGHTS)
    name = source.get("repo") or source.get("path")
    missing = [f for f in (scorer_lib.SCORER_CONFIG, scorer_lib.HEAD_FILE) if not (Path(local) / f).is_file()]
    if missing:
        raise ValueError(f"scorer.checkpoint {name!r} is not a scorer checkpoint: it has no "
                         f"{' or '.join(missing)} (a checkpoint has scorer.json, head.safetensors, the "
                         "backbone's config and safetensors weights, and its tokenizer)")
    loaded = scorer_lib.load(local, device="cpu", trust_remote_code=settings.trust_remote_code)
    config = dict(loaded.config)
    if local_source(source) is None:  # from the hub: the snapshot's commit, whatever revision named it
        config[provenance.SCORER_SOURCE] = provenance.hub_source(source["repo"], local)
    with atomic_dir(out_dir) as tmp:
        scorer_lib.save_scorer(loaded.model, loaded.tokenizer, tmp, config)


STAGE = Stage(
    help="fetch a pretrained scorer checkpoint (scorer.checkpoint) from a local directory or the hub",
    run=fetch_scorer,
    args=(Arg("--out-dir"),),
    settings=Settings,
    preload=MODELS,
)
