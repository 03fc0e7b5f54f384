"""benchmarks/gpu.sh's helpers: the paper slice's configuration and stage times, and the final
table of headline figures against issue 23's goals, read from the parts' JSON files.

    python benchmarks/gpu_tools.py summary gpu-out                   # the table, again
    python benchmarks/gpu_tools.py slice-stages RESULTS_DIR --seconds 140 --json-out slice.json
    python benchmarks/gpu_tools.py missing-wheels .bench/wheels      # the wheels to install here
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
from pathlib import Path

# Issue 23's goals: scoring tokens/s per GPU by card, per-sample statistics samples/s (per H100)
SCORING_GOAL = {"H100": 1.5e6, "H200": 2.2e6}
STATS_GOAL = 300.0
PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense, as benchmarks/inference.py counts MFU
SPLIT = re.compile(r"in (?P<wall>[\d.e+-]+) s .*?read (?P<read>[\d.e+-]+) s, (?:tokenize .*?, )?model "
                   r"(?P<model>[\d.e+-]+) s \((?P<model_tps>\d+) tokens/s, (?P<tflops>[\d.e+-]+) TFLOP/s\), "
                   r"write (?P<write>[\d.e+-]+) s")


def missing_wheels(directory: str) -> list[Path]:
    """The wheels of `directory` whose distribution this interpreter does not have (any version)."""
    missing = []
    for wheel in sorted(Path(directory).glob("*.whl")):
        try:
            importlib.metadata.version(wheel.name.split("-")[0])
        except importlib.metadata.PackageNotFoundError:
            missing.append(wheel)
    return missing


def slice_stages(results: Path, seconds: float | None) -> dict:
    """The paper slice's stages: per rule its jobs' wall seconds (Snakemake's benchmark files,
    process start included), the stage's own seconds and counters (its stats lines), and the
    score_shard jobs' read / model / write split; with the run's summary.json."""
    from lqs.io import benchmark_seconds, read_json
    from lqs.report import in_pipeline_order, read_stage_stats

    wall, own = benchmark_seconds(results / "benchmarks"), read_stage_stats(results / "logs")
    stages = {}
    for rule in in_pipeline_order(set(wall) | set(own)):
        row = {"wall_s": round(wall.get(rule, 0.0), 2)}
        if rule in own:
            stats = own[rule]
            row |= {"jobs": stats.jobs, "own_s": round(stats.seconds, 2), "counts": stats.counts,
                    "per_s_own": {k: round(v, 1) for k, v in stats.throughput().items()}}
        stages[rule] = row
    summary = results / "summary.json"
    split_lines = [line.split(": ", 1)[-1].strip() for log in sorted(results.glob("logs/score_shard/*.log"))
                   for line in log.read_text(errors="replace").splitlines() if " tokens/s end to end" in line]
    return {"seconds": seconds, "complete": summary.exists(), "stages": stages, "score_shard_logs": split_lines,
            "summary": read_json(summary) if summary.exists() else None}


def load(out: Path, name: str) -> dict | None:
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def summary(out: Path) -> list[str]:
    """The headline figures of the parts' JSON files in `out`, each against its goal."""
    rows: list[tuple[str, str, str]] = []  # figure, value, goal (and whether it is met)
    device = next((j["device"] for j in map(lambda n: load(out, n), ("inference", "score_shard", "annotation"))
                   if j and "device" in j), "?")
    card = next((c for c in SCORING_GOAL if c in device), None)
    gpu = device not in ("cpu", "?")
    scoring_goal = SCORING_GOAL.get(card or "H100")

    def against(value: float, goal: float, unit: str) -> str:
        text = f">= {goal:,.0f} {unit}" + ("" if card else " (per H100)")
        return text + (": met" if value >= goal else ": not met") if gpu else text + ": n/a on a CPU"

    def mfu(value: float | None) -> str:
        return f", MFU {value:.1%}" if gpu and value is not None else ""

    if (inference := load(out, "inference")) is not None:
        budgets = inference["every_window_split"]["model"]
        key, best = max(budgets.items(), key=lambda kv: kv[1]["tokens_per_s"])
        rows.append((f"scorer model alone (batch budget {key})", f"{best['tokens_per_s']:,.0f} tokens/s"
                     + mfu(best.get("mfu")), against(best["tokens_per_s"], scoring_goal, "tokens/s")))
    if (shard := load(out, "score_shard")) is not None:
        split = SPLIT.search(shard["pretokenized"]["log"] or "")
        tps = shard["pretokenized"]["tokens_per_s_median"]
        detail = (f" (read {float(split['read']):.2f} s, model {float(split['model']):.2f} s = "
                  f"{int(split['model_tps']):,} tokens/s, write {float(split['write']):.2f} s of "
                  f"{float(split['wall']):.2f} s with loading" +
                  mfu(float(split["tflops"]) / PEAK_BF16_TFLOPS) + ")") if split else ""
        rows += [(f"score_shard end to end, {shard['tokens']:,} tokens", f"{tps:,.0f} tokens/s{detail}",
                  against(tps, scoring_goal, "tokens/s")),
                 ("  before: tokenizing in the scoring job",
                  f"{shard['in_process']['tokens_per_s_median']:,.0f} tokens/s (pre-tokenized "
                  f"{ratios(shard['pretokenized']['speedup_vs_in_process'])})", ""),
                 ("  scores pre-tokenized vs in-process",
                  f"max |diff| {shard['pretokenized']['max_abs_score_difference']:.1e}", "")]
        stage = shard["tokenize_stage"]
        per_core = stage["tokens_per_s_per_core"]
        threads = stage["threads"]
        rows += [(f"tokenize stage, {threads} thread{'s' * (threads > 1)}", f"{per_core:,.0f} tokens/s per core",
                  f"{scoring_goal / per_core:.0f} cores feed {scoring_goal:,.0f} tokens/s"),
                 ("  windows on disk", f"{stage['disk_bytes_per_million_tokens'] / 1e6:.2f} MB per million tokens", "")]
    if (compiled := load(out, "score_shard_compile")) is not None and "compiled" in compiled:
        c = compiled["compiled"]
        rows.append(("score_shard compiled forward", f"{c['tokens_per_s_median']:,.0f} tokens/s "
                     f"({ratios(c['speedup_vs_pretokenized'])} eager, max |diff| {c['max_abs_score_difference']:.1e})",
                     against(c["tokens_per_s_median"], scoring_goal, "tokens/s")))
    if (annotation := load(out, "annotation")) is not None and annotation["runs"]:
        run, best = max(annotation["runs"].items(), key=lambda kv: kv[1]["samples_per_s"])
        hours = best.get("paper_annotation_gpu_hours")
        hours = f", paper annotation {hours:.2f} GPU-h" if hours else ""
        rows.append((f"per-sample statistics, best run ({run.strip()})", f"{best['samples_per_s']:,.1f} samples/s, "
                     f"peak {best['peak_gib']:.2f} GiB" + mfu(best.get("mfu")) + hours,
                     against(best["samples_per_s"], STATS_GOAL, "samples/s")))
    if (compiled := load(out, "annotation_compile")) is not None:
        for run, row in compiled.get("compiled_vs_eager", {}).items():
            rows.append((f"  compiled statistics ({run.strip()})", f"{row['compiled_samples_per_s']:,.1f} samples/s "
                         f"({row['ratio']:.2f}x eager, max rel diff {row['max_rel_norm_diff']:.1e})",
                         against(row["compiled_samples_per_s"], STATS_GOAL, "samples/s")))
    if (trajectory := load(out, "trajectory")) is not None:
        for t in trajectory.get("trajectory", []):
            rows.append((f"trajectory at paper.yaml's settings, {'TF32' if t['tf32'] else 'fp32'}",
                         f"{t['paper_projection_minutes']['total']:.1f} min projected (T = 100), "
                         f"peak {t['solve_3_steps_total_peak_gib']:.2f} GiB", "paper.yaml: ~10 min, fits 24 GB"))
    if (paper := load(out, "paper_slice")) is not None:
        stages = ", ".join(f"{k} {v['wall_s']:.3g}" for k, v in paper["stages"].items())
        rows.append(("paper slice end to end", ("complete" if paper["complete"] else "did not complete")
                     + (f" in {paper['seconds']:.0f} s" if paper.get("seconds") else ""), "completes"))
        rows.append(("  its stages, wall s", stages, ""))
    width = max((len(r[0]) for r in rows), default=0)
    lines = [f"device: {device}"] + [f"{a:<{width}}  {b}" + (f"  [{c}]" if c else "") for a, b, c in rows]
    missing = [n for n in ("annotation", "annotation_compile", "trajectory", "inference", "score_shard",
                           "score_shard_compile", "paper_slice") if load(out, n) is None]
    if missing:
        lines.append(f"no result (failed, timed out, skipped or not selected): {', '.join(missing)}")
    return lines


def ratios(values: list[float]) -> str:
    """Per-round speedups as "1.23x (1.20-1.25x over 3 rounds)"."""
    values = sorted(values)
    median = values[len(values) // 2]
    spread = f" ({values[0]:.2f}-{values[-1]:.2f}x over {len(values)} rounds)" if len(values) > 1 else ""
    return f"{median:.2f}x{spread}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary").add_argument("out", type=Path)
    stages = commands.add_parser("slice-stages")
    stages.add_argument("results", type=Path)
    stages.add_argument("--seconds", type=float)
    stages.add_argument("--json-out", type=Path, required=True)
    commands.add_parser("missing-wheels").add_argument("directory")
    args = parser.parse_args(argv)
    if args.command == "summary":
        text = "\n".join(summary(args.out))
        print(text)
        (args.out / "summary.txt").write_text(text + "\n")
    elif args.command == "slice-stages":
        args.json_out.write_text(json.dumps(slice_stages(args.results, args.seconds), indent=2) + "\n")
    else:
        print("\n".join(map(str, missing_wheels(args.directory))))


if __name__ == "__main__":
    main()
