"""The SLURM profile (docs/configuration.md#profiles) end to end, on a real SLURM running on this machine.

scripts/slurm-local-cluster.sh starts a one-node cluster (Debian's slurm-wlm and munge; .ci/run
installs them): partitions `cpu` and `a100`, no default partition, Gres=gpu:a100:2 backed by
stand-in devices, accounting off, MinJobAge of an hour. The tiny workflow runs through
`--profile profiles/slurm`, plus an override profile that changes only what a 2-core test machine
needs: memory requests (the shipped ones are a real cluster's), threads capped at the node's CPUs,
and the job-status polling.

The run scores the tiny corpus (two shards) with a pretrained scorer, so that its chain of SLURM
jobs is short (every SLURM job starts Snakemake and `lqs` afresh: seconds each): the profile's
resources for the annotation's GPU rules are the same mechanism, checked from the profile for
every GPU rule. Checked per SLURM job, from `scontrol show job` (what SLURM allocated) and from
what the job's `lqs` saw of its environment (a wrapper first on PATH records it): the GPU rule
ran in `a100` with a GPU allocated and CUDA_VISIBLE_DEVICES set, every other rule in `cpu`
without a GPU; the jobs per rule are the dry run's; the per-shard CPU rules (the profile's job
groups) ran bundled, the corpus's two shards' jobs in one SLURM job where the node's CPUs allow
it; and scored.jsonl is `lqs score`'s of the same corpus with the same scorer: the same records
in the same order, byte for byte but for the scores' last bits (the batches differ), and no
rejects. The SLURM jobs run the real `lqs` console script.

Where the machine cannot run that cluster (SLURM not installed, not root, or a SLURM already
configured or running here, which the test must not disturb) the test skips, giving the reason;
with LQS_REQUIRE_SLURM=1, which .ci/run sets, it fails with the reason instead.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import (
    ROOT,
    make_workflow,
    parse_plan,
    read_jsonl,
    score_error,
    snakemake,
    tiny_config,
    tiny_corpus,
    tiny_scorer,
    write_jsonl,
)

CLUSTER_SCRIPT = ROOT / "scripts" / "slurm-local-cluster.sh"
PROFILE = ROOT / "profiles" / "slurm"
GPU_RULES = {"score_shard"}  # the GPU rules of the SLURM run (a pretrained scorer: no annotation)
SHARDS = 2  # the SLURM run's corpus.num_shards: its per-shard CPU jobs go in the profile's job groups
# The profile's job groups ("rule=group"). A group job asks for its jobs' CPUs summed: on the
# test node's 2 CPUs, the test bundles two tokenize_shard jobs (1 CPU each) and leaves the
# tokenize_scorer_shard jobs (capped at 2 CPUs each) one to a SLURM job (write_part: layout per_shard,
# not in this run).
GROUPS = dict(entry.split("=") for entry in yaml.safe_load((PROFILE / "config.yaml").read_text())["groups"])
GROUP_SIZE = {"tokenize": 2, "tokenize_scorer": 1, "write_part": 2}
SLURM_TOOLS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "sinfo")
TEST_MEM_MB = 1000  # every job's memory request in the test (the node has CPUs=nproc, ~90% of RAM)
RUN_TIMEOUT_S = 600


# Where scripts/slurm-local-cluster.sh writes slurm.conf and gres.conf, each starting with its
# marker line; it refuses to replace (or stop) a configuration without it.
CONF_DIR = Path("/etc/slurm")
MARKER = re.search(r'^MARKER="(.+)"$', CLUSTER_SCRIPT.read_text(), re.MULTILINE).group(1)
SLURM_DAEMONS = ("slurmctld", "slurmd", "slurmdbd")


def running_slurm_daemons() -> list[str]:
    """The SLURM daemons running on this machine, by process name."""
    names = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            names.add(comm.read_text().strip())
        except OSError:  # the process ended
            continue
    return sorted(names & set(SLURM_DAEMONS))


def foreign_slurm(conf_dir: Path = CONF_DIR, environ=os.environ, daemons=running_slurm_daemons) -> str | None:
    """A SLURM on this machine that the test's own cluster would disturb, or None: a
    configuration the cluster script did not write (the SLURM commands would read it, and the
    script refuses to replace it), or SLURM daemons running without the script's configuration
    (a cluster configured elsewhere, or configless). The script's own running cluster is reused."""
    conf = conf_dir / "slurm.conf"
    if environ.get("SLURM_CONF") and Path(environ["SLURM_CONF"]) != conf:
        return f"SLURM_CONF={environ['SLURM_CONF']} names another cluster's configuration"
    for path in (conf, conf_dir / "gres.conf"):
        if path.exists() and not path.read_text(errors="replace").startswith(MARKER):
            return f"{path} exists and was not written by {CLUSTER_SCRIPT.name}"
    if not conf.exists() and (running := daemons()):
        return f"{', '.join(running)} running, not started by {CLUSTER_SCRIPT.name} (no {conf} of its own)"
    return None


def slurm_unavailable(conf_dir: Path = CONF_DIR, environ=os.environ, daemons=running_slurm_daemons) -> str | None:
    """Why this machine cannot run the test's own one-node cluster, or None."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"SLURM is not installed (missing {', '.join(missing)}): the SLURM profile test needs "
                "Debian's packages, as .ci/run installs them: "
                "apt-get install -y --no-install-recommends slurm-wlm munge")
    if os.geteuid() != 0:
        return "the SLURM profile test starts munged, slurmctld and slurmd: run it as root"
    if foreign := foreign_slurm(conf_dir, environ, daemons):
        return (f"a SLURM is already configured on this machine ({foreign}); the test starts a one-node "
                "cluster of its own and must not disturb that one")
    return None


def require_slurm(environ=os.environ, **where) -> None:
    """Skips with the reason where this machine cannot run the test's own cluster; fails with it
    instead under LQS_REQUIRE_SLURM=1, which .ci/run sets (and installs SLURM)."""
    reason = slurm_unavailable(environ=environ, **where)
    if reason is None:
        return
    if environ.get("LQS_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason} (LQS_REQUIRE_SLURM=1: a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


SLURM_MACHINES = {  # what unit tests of require_slurm stage: (missing tool, euid, conf, daemons, SLURM_CONF)
    "not installed": ("sbatch", 0, None, [], None),
    "not root": (None, 1000, None, [], None),
    "foreign slurm.conf": (None, 0, "ClusterName=site\n", [], None),
    "daemons configured elsewhere": (None, 0, None, ["slurmctld", "slurmd"], None),
    "SLURM_CONF elsewhere": (None, 0, None, [], "/opt/slurm/etc/slurm.conf"),
}
SLURM_REASONS = {
    "not installed": "SLURM is not installed (missing sbatch)",
    "not root": "run it as root",
    "foreign slurm.conf": "slurm.conf exists and was not written by slurm-local-cluster.sh",
    "daemons configured elsewhere": "slurmctld, slurmd running, not started by slurm-local-cluster.sh",
    "SLURM_CONF elsewhere": "SLURM_CONF=/opt/slurm/etc/slurm.conf names another cluster's configuration",
}


def _stage(monkeypatch, tmp_path: Path, machine: tuple, required: bool) -> dict:
    missing, euid, conf, daemons, slurm_conf = machine
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == missing else f"/usr/bin/{tool}")
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    if conf is not None:
        (tmp_path / "slurm.conf").write_text(conf)
    environ = {"PATH": "/usr/bin"}
    if slurm_conf:
        environ["SLURM_CONF"] = slurm_conf
    if required:
        environ["LQS_REQUIRE_SLURM"] = "1"
    return dict(environ=environ, conf_dir=tmp_path, daemons=lambda: daemons)


@pytest.mark.parametrize("required", [False, True], ids=["skips", "LQS_REQUIRE_SLURM=1 fails"])
@pytest.mark.parametrize("machine", list(SLURM_MACHINES))
def test_require_slurm_skips_with_the_reason_or_fails_when_required(monkeypatch, tmp_path, machine, required):
    kwargs = _stage(monkeypatch, tmp_path, SLURM_MACHINES[machine], required)
    with pytest.raises(pytest.fail.Exception if required else pytest.skip.Exception) as raised:
        require_slurm(**kwargs)
    assert SLURM_REASONS[machine] in str(raised.value), raised.value
    assert ("LQS_REQUIRE_SLURM=1" in str(raised.value)) == required


@pytest.mark.parametrize("required", [False, True])
def test_require_slurm_runs_where_the_cluster_is_its_own(monkeypatch, tmp_path, required):
    """Nothing configured yet, or the script's own cluster already up: the test runs."""
    kwargs = _stage(monkeypatch, tmp_path, (None, 0, None, [], None), required)
    require_slurm(**kwargs)
    (tmp_path / "slurm.conf").write_text(f"{MARKER}: a one-node test cluster; 'stop' removes it.\n")
    (tmp_path / "gres.conf").write_text(f"{MARKER}: two stand-in A100s.\n")
    require_slurm(**dict(kwargs, daemons=lambda: ["slurmctld", "slurmd"]))
    require_slurm(**dict(kwargs, environ={**kwargs["environ"], "SLURM_CONF": str(tmp_path / "slurm.conf")}))
    (tmp_path / "gres.conf").write_text("NodeName=x Name=gpu File=/dev/nvidia0\n")  # a foreign gres.conf
    with pytest.raises(pytest.fail.Exception if required else pytest.skip.Exception, match="gres.conf exists"):
        require_slurm(**kwargs)


def cluster(command: str, nice: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run(["nice", "-n", str(nice), "bash", str(CLUSTER_SCRIPT), command], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node SLURM on localhost: reuses a running one, else starts one and stops it after."""
    require_slurm()
    running = cluster("status").returncode == 0
    if not running:
        # Its daemons, and so its jobs, ahead of the other tests' processes (niceness -5): each
        # job's end is seen at a status check, so a job slowed past one waits for the next.
        started = cluster("start", nice=-5)
        if started.returncode != 0:
            pytest.fail(f"{CLUSTER_SCRIPT.name} start failed:\n{started.stdout}\n{started.stderr}",
                        pytrace=False)
    yield
    if not running:
        cluster("stop")


def override_profile(path: Path, rules: set[str]) -> Path:
    """A profile given after profiles/slurm (later profiles win, key by key): the shipped
    resources with every memory request set to TEST_MEM_MB, threads at most the node's CPUs
    (a job asking more would wait forever), and fast status polling."""
    node_cpus = int(subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True,
                                   check=True).stdout.split()[0])
    shipped = yaml.safe_load((PROFILE / "config.yaml").read_text())
    default_resources = dict(shipped["default-resources"], mem_mb=TEST_MEM_MB)
    set_resources = {rule: dict(shipped.get("set-resources", {}).get(rule, {}), mem_mb=TEST_MEM_MB)
                     for rule in sorted(rules)}  # also replaces the rules' own mem_mb
    override = {
        "default-resources": default_resources,
        "set-resources": set_resources,
        "max-threads": node_cpus,
        # No accounting database here: squeue (MinJobAge 1 h) instead of sacct; poll often.
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 1,
        "seconds-between-status-checks": 1,
        "slurm-keep-successful-logs": True,
        "group-components": [f"{group}={size}" for group, size in GROUP_SIZE.items()],
    }
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    return path


def lqs_recorder(bin_dir: Path, records: Path) -> Path:
    """An `lqs` first on PATH that records the job's SLURM view, then runs the real `lqs`."""
    beside_python = Path(sys.executable).parent / "lqs"
    real = str(beside_python) if beside_python.is_file() else shutil.which("lqs")
    assert real, "no lqs console script beside the interpreter or on PATH (pip install -e .)"
    bin_dir.mkdir(parents=True)
    records.mkdir(parents=True)
    wrapper = bin_dir / "lqs"
    wrapper.write_text(f"""#!{sys.executable}
import json, os, sys
keys = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS")
record = {{key: os.environ.get(key) for key in keys}}
record["command"] = sys.argv[1] if len(sys.argv) > 1 else None
with open(os.path.join({str(records)!r}, "%d.json" % os.getpid()), "w") as f:
    json.dump(record, f)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
""")
    wrapper.chmod(0o755)
    return bin_dir


def scontrol_job(job_id: str) -> dict[str, str]:
    """`scontrol show job -d` as key=value pairs (the values used here have no spaces)."""
    out = subprocess.run(["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True,
                         check=True).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def rule_of(comment: str) -> str:
    """The plugin's job comment: rule_<rule> or rule_<rule>_wildcards_<values>, or for a group job
    rule_<group>_<its rules> (the profile's groups each hold one rule)."""
    assert comment.startswith("rule_"), comment
    name = comment[len("rule_"):].split("_wildcards_")[0]
    return {f"{group}_{rule}": rule for rule, group in GROUPS.items()}.get(name, name)


def gpu_rules() -> set[str]:
    """The rules whose resources ask for a GPU (`gpu=1` in rules/*.smk)."""
    rules = set()
    for path in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"^rule ", path.read_text(), flags=re.MULTILINE)[1:]:
            name, body = block.split(":", 1)
            if re.search(r"^\s+gpu=1,$", body.split("\nrule ")[0], re.MULTILINE):
                rules.add(name.strip())
    return rules


def test_the_profile_sends_every_gpu_rule_to_the_gpu_partition():
    """What the SLURM run below checks live for score_shard, the profile says for every GPU rule:
    the a100 partition, one A100 (sbatch --gpus=a100:1); every other rule the default partition."""
    shipped = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert gpu_rules() == GPU_RULES | {"trajectory", "grad_stats", "train_scorer", "efficacy_train"}
    for rule in gpu_rules():
        assert {k: shipped["set-resources"][rule].get(k) for k in ("slurm_partition", "gpu", "gpu_model")} == \
            {"slurm_partition": "a100", "gpu": 1, "gpu_model": "a100"}, rule
    others = {rule: r for rule, r in shipped["set-resources"].items() if rule not in gpu_rules()}
    assert not any({"slurm_partition", "gpu", "gpu_model"} & set(r) for r in others.values()), others
    assert shipped["default-resources"]["slurm_partition"] == "cpu"


@pytest.mark.timeout(900)
@pytest.mark.slurm
@pytest.mark.workflow
def test_tiny_workflow_on_slurm_matches_lqs_score(tmp_path, caplog, request):
    require_slurm()  # here, so that the test itself skips (or, required, fails) with the reason
    request.getfixturevalue("slurm_cluster")
    workdir = tmp_path / "wf"
    corpus = write_jsonl(workdir / "data" / "corpus.jsonl", tiny_corpus())
    config = tiny_config(str(corpus.relative_to(workdir)), "target.jsonl")  # no target: the scorer is given
    config["corpus"]["num_shards"] = SHARDS
    config["scorer"] = {"checkpoint": str(tiny_scorer(tmp_path / "model"))}
    make_workflow(workdir, config)
    # Every rule the workflow defines, the tiny DAG's among them (a rule outside it: unused resources).
    listed = snakemake(workdir, "--list-rules", cores=None).stdout.split()
    expected = parse_plan(snakemake(workdir, "-n").stdout)[1]  # the jobs a local run would run
    expected.pop("all")
    overrides = override_profile(tmp_path / "override-profile", set(listed) - {"all"})
    records = tmp_path / "records"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{lqs_recorder(tmp_path / 'bin', records)}{os.pathsep}{env['PATH']}"

    started = time.monotonic()
    # Terminated after RUN_TIMEOUT_S: snakemake cancels its SLURM jobs.
    run = snakemake(workdir, "--profile", PROFILE, "--profile", overrides, cores=None, env=env, check=False,
                    timeout=RUN_TIMEOUT_S, real_lqs=True)
    returncode = run.returncode
    elapsed = time.monotonic() - started
    text = run.stdout + run.stderr
    slurm_logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}"
                           for p in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")))
    assert returncode == 0, f"snakemake on SLURM failed ({elapsed:.0f} s):\n{text}\n{slurm_logs}"
    print(f"SLURM run: {elapsed:.0f} s")

    # Every job but the workflow's local rules (fetches: on the submitting host) went through
    # SLURM, named by the plugin's run ID: one SLURM job each, but the per-shard CPU rules' jobs,
    # bundled by the profile's job groups (tokenize_shard: one SLURM job for the two shards).
    run_id = re.search(r"SLURM run ID: (\S+)", text).group(1)
    job_ids = subprocess.run(["squeue", "--states=all", "--noheader", "--name", run_id, "--format=%i"],
                             capture_output=True, text=True, check=True).stdout.split()
    jobs = {job_id: scontrol_job(job_id) for job_id in job_ids}
    by_rule = collections.Counter(rule_of(job["Comment"]) for job in jobs.values())
    local_rules = collections.Counter(re.findall(r"^localrule (\w+):$", text, re.MULTILINE))
    local_rules.pop("all", None)
    calls = collections.Counter(by_rule)  # lqs calls: a group job makes one per job it bundles
    for rule, group in GROUPS.items():
        assert by_rule[rule] == -(-expected[rule] // GROUP_SIZE[group]), (rule, by_rule)
        calls[rule] = expected[rule]
    assert by_rule["tokenize_shard"] < expected["tokenize_shard"]  # bundled
    assert calls + local_rules == expected, (
        f"SLURM jobs per rule {dict(by_rule)} and local rules {dict(local_rules)}, planned {dict(expected)}")
    assert GPU_RULES <= set(by_rule), by_rule

    # What each job's lqs saw (one lqs call per SLURM job, one per bundled job in a group job).
    seen, outside = {}, []
    for path in records.glob("*.json"):
        record = json.loads(path.read_text())
        if record["SLURM_JOB_ID"] is None:
            outside.append(record)
            continue
        assert record["SLURM_JOB_ID"] in jobs, (record, "lqs ran in a SLURM job not of this run")
        grouped = rule_of(jobs[record["SLURM_JOB_ID"]]["Comment"]) in GROUPS
        assert grouped or record["SLURM_JOB_ID"] not in seen, (record, seen[record["SLURM_JOB_ID"]])
        seen[record["SLURM_JOB_ID"]] = record
    assert set(seen) == set(jobs), f"jobs without an lqs call: {set(jobs) - set(seen)}"
    assert len(outside) <= sum(local_rules.values()), (outside, local_rules)

    table = []
    for job_id, job in sorted(jobs.items(), key=lambda item: int(item[0])):
        rule, env_seen = rule_of(job["Comment"]), seen[job_id]
        row = (job_id, rule, job["Partition"], job.get("JOB_GRES", "(null)"),
               env_seen["SLURM_JOB_PARTITION"], env_seen["CUDA_VISIBLE_DEVICES"])
        table.append(row)
        assert job["JobState"] == "COMPLETED", row
        assert env_seen["SLURM_JOB_PARTITION"] == job["Partition"], row
        if rule in GPU_RULES:
            assert job["Partition"] == "a100", row
            assert job.get("JOB_GRES") == "gpu:a100:1", row
            assert env_seen["CUDA_VISIBLE_DEVICES"] in ("0", "1"), row
        else:
            assert job["Partition"] == "cpu", row
            assert job.get("JOB_GRES", "(null)") == "(null)", row
            assert env_seen["CUDA_VISIBLE_DEVICES"] is None, row
    print("\n".join("\t".join(map(str, row)) for row in
                    [("job", "rule", "partition", "gres", "env partition", "CUDA_VISIBLE_DEVICES"), *table]))

    # the scored output is `lqs score`'s of the same corpus with the same scorer: the same records in
    # the same order, byte for byte but for the scores' last bits (the batches differ)
    reference = tmp_path / "reference.jsonl"
    assert score_error(caplog, corpus, "--scorer", config["scorer"]["checkpoint"], "--out", reference,
                       "--device", "cpu") == (0, "")
    assert (workdir / "rejects.jsonl").read_text() == ""
    scored, local = read_jsonl(workdir / "scored.jsonl"), read_jsonl(reference)
    assert [{k: v for k, v in r.items() if k != "score"} for r in scored] == \
        [{k: v for k, v in r.items() if k != "score"} for r in local]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(scored, local)) <= 1e-6
