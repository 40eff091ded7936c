"""Sweeps through submitit (issue 14): the executors give bit-identical models and attack tables to inline runs, a
killed job resumes when resubmitted, two processes on one key leave one valid entry, bad settings fail before any
submission, and the SLURM script carries the requested resources."""

from __future__ import annotations

import functools
import os
import signal
import time

import pytest
import torch

from repspec_utils.experiments import recipes, run
from repspec_utils.infra import cache
from repspec_utils.infra import executor as X
from repspec_utils.training import TrainConfig, train
from repspec_utils.training.loop import phase_key

BASE = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [16], "init": "torch"}, lr=0.3, batch_size=64,
                   epochs=3, burn_in=2, lam=0.05)
CONFIGS = [BASE.replace(method=m, seed=s, lam=0.0 if m == "none" else 0.05) for s in (0, 1) for m in ("none", "rep")]


def _same(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        sa, sb = ra.model.state_dict(), rb.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _spy_jobs(monkeypatch) -> list[list]:
    """Record the jobs of every run_jobs call (one list per call), then run them."""
    calls: list[list] = []
    real = X.run_jobs

    def spy(jobs, *a, **k):
        calls.append(list(jobs))
        return real(jobs, *a, **k)

    monkeypatch.setattr(X, "run_jobs", spy)
    return calls


@pytest.fixture
def inline(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "inline"))
    results = recipes.train_all(CONFIGS, progress=False)
    table = run.robustness_table(results, n=3, attack_kwargs={"T": 2}, progress=False, certify=False)
    return results, table


@pytest.mark.parametrize("name", ["debug", pytest.param("local", marks=pytest.mark.slow)])  # local: ≈ 26 s
def test_executors_match_inline_bit_for_bit(name, inline, tmp_path, monkeypatch):
    ref, ref_table = inline
    X.reset_job_devices()
    k = len(CONFIGS) if name == "debug" else 2  # local: one seed (each job is a fresh Python process, ~4 s to start)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / name))
    got = recipes.train_all(CONFIGS[:k], progress=False, executor=name, max_workers=2, recompute=True)
    _same(ref[:k], got)
    table = run.robustness_table(got, n=3, attack_kwargs={"T": 2}, progress=False, certify=False, executor=name,
                                    max_workers=2)
    # training: debug runs jobs one at a time, so a job per seed; local has one seed for 2 workers, so its two
    # branches are jobs (split_branches auto); then an attack job per model
    assert X.job_devices()[name] == {"cpu": (k // 2 if name == "debug" else k) + k}
    assert table.equals(ref_table[ref_table.seed.isin({c.seed for c in CONFIGS[:k]})].reset_index(drop=True))
    # every burn-in once: one per seed, one final entry per config
    root = cache.cache_root() / "train"
    assert len(list(root.glob("*/burn_in.pt"))) == k // 2 and len(list(root.glob("*/final.pt"))) == k


def test_recompute_inline_retrains_identically(inline, tmp_path, monkeypatch):
    ref, _ = inline  # the cache of `inline` is still REPSPEC_CACHE: recompute ignores what it holds
    again = recipes.train_all(CONFIGS, progress=False, recompute=True)
    _same(ref, again)


def test_rerun_submits_only_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "c"))
    recipes.train_all(CONFIGS[:2], progress=False)
    calls = _spy_jobs(monkeypatch)
    recipes.train_all(CONFIGS, progress=False, executor="debug")
    # one job: the burn-in and both branches
    assert [j.name for c in calls for j in c] == ["train digits seed 1 (none, rep)"]


def test_split_branches_makes_each_branch_a_job_after_its_burn_in(tmp_path, monkeypatch, inline):
    ref, _ = inline
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "split"))
    calls = _spy_jobs(monkeypatch)
    real_load = X.load_settings
    monkeypatch.setattr(X, "load_settings", lambda path=None, overrides=None: {**real_load(path, overrides),
                                                                               "split_branches": True})
    got = recipes.train_all(CONFIGS, progress=False, executor="debug")
    assert [(j.name, j.needs) for c in calls for j in c] == [
        ("train digits none seed 0", ()), ("train digits rep seed 0", (0,)),
        ("train digits none seed 1", ()), ("train digits rep seed 1", (2,))]
    _same(ref, got)


@pytest.mark.parametrize("setting, name, workers, groups, split", [
    ("auto", "local", 2, 5, True),    # 5 seeds on 2 workers: grouped, the fifth would run alone at the end
    ("auto", "local", 2, 4, False),   # evenly divided: one job per seed
    ("auto", "local", 3, 1, True),    # one seed, several workers: its branches in parallel
    ("auto", "slurm", None, 8, True),  # no cap: every branch its own job
    ("auto", "slurm", 4, 8, False),
    ("auto", "debug", 2, 5, False),   # one job at a time in this process
    ("auto", "inline", None, 5, False),
    (True, "local", 2, 4, True), (False, "local", 2, 5, False)])
def test_split_branches_auto_splits_when_seeds_do_not_divide_among_workers(setting, name, workers, groups, split):
    assert X.split_branches({"split_branches": setting}, groups, name, workers) is split


def test_split_branches_rejects_other_values():
    with pytest.raises(ValueError, match="true, false or auto"):
        X.split_branches({"split_branches": "yes"}, 5, "local", 2)


class _RecordingExecutor:
    """A submitit stand-in that runs each job at submission and records the order."""

    def __init__(self):
        self.order: list[str] = []

    def submit(self, fn, job_fn, args, threads, owner=None):
        self.order.append(args[0])
        report = X.JobReport(value=args[0], device="test", seconds=0.0)
        return type("Done", (), {"done": lambda self: True, "result": lambda self: report, "job_id": "0"})()


def test_run_jobs_starts_the_jobs_others_wait_for_first(monkeypatch):
    # seed a's burn-in, its two branches, then seed b's burn-in and branch, then an attack nobody needs; one worker:
    # after a's burn-in the other burn-in (needed by one job) must start before a's branches
    rec = _RecordingExecutor()
    monkeypatch.setattr(X, "make_submitit_executor", lambda name, folder, settings: rec)
    noop = lambda tag: tag  # noqa: E731
    jobs = [X.Job("a", noop, ("a",)), X.Job("a1", noop, ("a1",), (0,)), X.Job("a2", noop, ("a2",), (0,)),
            X.Job("x", noop, ("x",)), X.Job("b", noop, ("b",)), X.Job("b1", noop, ("b1",), (4,))]
    assert X._dependents(jobs) == [2, 0, 0, 0, 1, 0]
    reports = X.run_jobs(jobs, "local", max_workers=1, progress=False)
    assert rec.order == ["a", "b", "a1", "a2", "x", "b1"]
    assert [r.value for r in reports] == ["a", "a1", "a2", "x", "b", "b1"]  # reports in the jobs' order


@pytest.mark.parametrize("sigint", [pytest.param("default", marks=pytest.mark.slow),
                                    pytest.param("ignored", marks=pytest.mark.slow)])  # ≈ 40 s each: pytest -m slow
def test_killed_local_job_resumes_when_resubmitted(sigint, tmp_path, monkeypatch):
    # a burn-in of 380 epochs (≈ 5 s): with 20 (≈ 0.5 s) a fast CPU finished it between the poll that saw the
    # checkpoint and the kill, so the test failed on a race, not on the resume.
    # "ignored": the submitting process ignores SIGINT, as one started with `&` from a script does (a backgrounded
    # pytest or `nohup repspec run … &`); submitit's cancel is a SIGINT, and before `X.submit` the job inherited the
    # ignore and ran to its end (why this test failed only in backgrounded full-suite runs)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.default_int_handler)
    try:
        _killed_job_resumes(tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, old)


def _killed_job_resumes(tmp_path, monkeypatch):
    cfg = BASE.replace(method="rep", epochs=400, burn_in=380, seed=4)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "ref"))
    ref = train(cfg, progress=False)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "run"))
    ex = X.make_submitit_executor("local", tmp_path / "jobs" / "%j", {})
    job = X.submit(ex, functools.partial(train, cfg, progress=False, checkpoint_every_s=0), (), 1)
    resume = cache.cache_root() / "train" / phase_key(cfg, "base") / "resume.pt"
    deadline = time.monotonic() + 120
    while not resume.exists() and time.monotonic() < deadline and not job.done():
        time.sleep(0.05)
    job.cancel(check=False)
    while not job.done():
        time.sleep(0.05)
    assert resume.exists(), (f"no checkpoint before the job ended (state {job.state}); its stdout: "
                             f"{(job.stdout() or '')[-1500:]!r}; its stderr: {(job.stderr() or '')[-3000:]!r}")
    assert not (cache.cache_root() / "train" / phase_key(cfg, "final") / "final.pt").exists()
    got = recipes.train_all([cfg], progress=False, executor="local")
    _same([ref], got)


@pytest.mark.slow  # ≈ 11 s
def test_two_processes_on_one_key_leave_one_valid_entry(tmp_path, monkeypatch):
    cfg = BASE.replace(method="rep", epochs=12, burn_in=6, seed=5)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "ref"))
    ref = train(cfg, progress=False)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "two"))
    jobs = [X.Job("a", recipes._train_job, (cfg, False)), X.Job("b", recipes._train_job, (cfg, False))]
    reports = X.run_jobs(jobs, "local", max_workers=2, progress=False)
    assert reports[0].value == reports[1].value == ref.key
    root = cache.cache_root() / "train"
    assert len(list(root.glob("*/final.pt"))) == 1 and len(list(root.glob("*/burn_in.pt"))) == 1
    assert not list(root.rglob("*.tmp")) and not list(root.rglob("resume.pt"))
    _same([ref], [train(cfg, progress=False)])


def test_failed_job_names_config_id_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "f"))
    bad = BASE.replace(lr=1e9, method="none", lam=0.0)  # diverges: TrainingDiverged in the worker
    with pytest.raises(RuntimeError, match=r"job 'train digits seed 0 \(none\)' \(id .*\) failed: TrainingDiverged: "
                                           r"training diverged .*its log: "):
        recipes.train_all([bad], progress=False, executor="debug")


# ----------------------------------------------------------------------------------------------------
# bad input, before any job is submitted
# ----------------------------------------------------------------------------------------------------
def test_executor_choice_and_bad_values(monkeypatch):
    monkeypatch.setenv("REPSPEC_EXECUTOR", "local")
    assert X.resolve_executor(None) == "local" and X.resolve_executor("debug") == "debug"  # the parameter wins
    monkeypatch.setenv("REPSPEC_EXECUTOR", "ray")
    with pytest.raises(ValueError, match=r"\$REPSPEC_EXECUTOR 'ray' is unknown"):
        X.resolve_executor(None)
    monkeypatch.delenv("REPSPEC_EXECUTOR")
    assert X.resolve_executor("") == "inline"
    with pytest.raises(ValueError, match="executor 'dask' is unknown; choose one of inline, local, slurm, debug"):
        recipes.train_all(CONFIGS, executor="dask")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_workers"):
            recipes.train_all(CONFIGS, executor="local", max_workers=bad)


def test_settings_file_with_unknown_keys_is_rejected(tmp_path):
    f = tmp_path / "executor.yaml"
    f.write_text("partition: gpu\ngpus: 1\n")
    with pytest.raises(ValueError, match=r"unknown executor setting\(s\) \['gpus'\]"):
        X.load_settings(f)
    with pytest.raises(ValueError, match="max_workers"):
        X.load_settings(tmp_path / "absent.yaml", {"max_workers": 0})


def test_slurm_without_sbatch_fails_before_submitting(monkeypatch):
    monkeypatch.setattr(X.shutil, "which", lambda name: None)

    def never(*a, **k):
        raise AssertionError("an executor was made before the sbatch check")

    monkeypatch.setattr(X, "make_submitit_executor", never)
    with pytest.raises(RuntimeError, match="no `sbatch` on PATH"):
        X.run_jobs([X.Job("x", print, ())], "slurm")


def test_slurm_script_has_the_requested_resources(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # no srun here: pretend
    settings = X.load_settings(tmp_path / "absent.yaml", {"partition": "gpu", "time_min": 180, "gpus_per_node": 1,
                                                          "cpus_per_task": 8, "mem_gb": 32,
                                                          "sbatch": {"constraint": "a100"},
                                                          "setup": ["source .venv/bin/activate"]})
    ex = X.make_submitit_executor("slurm", tmp_path / "%j", settings)
    text = ex._make_submission_file_text("python -m submitit.core._submit /jobs", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=180", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --constraint=a100",
                 "source .venv/bin/activate", "python -m submitit.core._submit /jobs"):
        assert line in text, line


def test_a_notebooks_parameter_sets_the_process_default(monkeypatch):
    """A notebook's `executor` parameter wins over $REPSPEC_EXECUTOR for the calls that do not name one; its
    `max_workers` becomes the cap; a bad value is a ParameterError from the first cell."""
    from repspec_utils.infra import notebook

    monkeypatch.setenv("REPSPEC_EXECUTOR", "local")
    monkeypatch.setattr(X, "DEFAULT_MAX_WORKERS", None)
    assert X.configure("debug", 3) == "debug" and X.resolve_executor(None) == "debug" and X.DEFAULT_MAX_WORKERS == 3
    assert X.configure("", None) == "debug"  # "": keep what the environment says
    with pytest.raises(ValueError, match="unknown"):
        X.configure("threads")
    ns = {**notebook.notebook_defaults("fig4_mnist"), "executor": "cluster"}
    with pytest.raises(notebook.ParameterError, match="executor"):
        notebook.notebook_params(ns, "fig4_mnist")


def test_xor_attack_jobs_use_the_batched_models(tmp_path, monkeypatch):
    """The 2-D nets train in-process with the batched engine whatever the executor; their attack jobs read those
    models (not a retrained copy), so the table equals the inline one."""
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "xor"))
    configs = recipes.xor_configs(widths=[3], seeds=[400], weight_decays=[0.0], epochs=300, burn_in=200)
    results = recipes.train_all(configs, progress=False, executor="debug")
    ref = run.robustness_table(results, attack_kwargs={"T": 3}, progress=False, certify=False)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "xor2"))
    results2 = recipes.train_all(configs, progress=False)
    got = run.robustness_table(results2, attack_kwargs={"T": 3}, progress=False, certify=False, executor="debug")
    assert got.equals(ref)


def test_jobs_never_submit_jobs(tmp_path, monkeypatch):
    """With the executor chosen through the environment (as a notebook's parameter does), a job's own train_all /
    robustness_table calls run inline in the job: no nested submission; the parent's setting is restored."""
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "n"))
    monkeypatch.setenv("REPSPEC_EXECUTOR", "debug")
    calls = _spy_jobs(monkeypatch)
    results = recipes.train_all(CONFIGS[:2], progress=False)
    run.robustness_table(results, n=2, attack_kwargs={"T": 1}, progress=False, certify=False)
    assert [len(c) for c in calls] == [1, 2]  # one training job (a seed), two attack jobs: nothing nested
    assert X.resolve_executor(None) == "debug"


def test_rerun_submits_only_the_attacks_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "att"))
    results = recipes.train_all(CONFIGS[:2], progress=False)
    kw = dict(n=3, attack_kwargs={"T": 2}, progress=False, certify=False)
    run.robustness_table(results[:1], **kw)  # the first model's table is cached
    run.robustness_table(results[:1], readout="refit", **kw)
    calls = _spy_jobs(monkeypatch)
    for readout in ("original", "refit"):
        run.robustness_table(results, executor="debug", readout=readout, **kw)
    submitted = [j.name for c in calls for j in c]
    assert submitted == ["attack rep seed 0 (original)", "attack rep seed 0 (refit)"]
    run.robustness_table(results, executor="debug", **kw)
    assert len([j for c in calls for j in c]) == 2  # everything cached now: nothing submitted


def test_mnist_subset_debug_matches_inline(tmp_path, monkeypatch):
    """An MNIST subset (500 images; needs scripts/fetch_data.sh, which the test command runs) through the debug
    executor: models and attack table bit-identical to inline."""
    cfgs = [c.replace(dataset="mnist", n_train=500, batch_size=100) for c in CONFIGS[:2]]
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "m1"))
    ref = recipes.train_all(cfgs, progress=False)
    ref_table = run.robustness_table(ref, n=2, attack_kwargs={"T": 2}, progress=False, certify=False)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "m2"))
    got = recipes.train_all(cfgs, progress=False, executor="debug")
    _same(ref, got)
    assert run.robustness_table(got, n=2, attack_kwargs={"T": 2}, progress=False, certify=False,
                                   executor="debug").equals(ref_table)


def test_whitebox_jobs_match_inline_and_submit_only_what_is_missing(tmp_path, monkeypatch):
    """White-box evaluations as executor jobs (one per model not cached): the same values as inline, for both
    readouts; a rerun submits nothing."""
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "wb"))
    results = recipes.train_all(CONFIGS[:2], progress=False)
    kw = dict(eps=[0.05, 0.2], n=40, pgd_steps=3)
    ref = {ro: run.whitebox_table(results, readout=ro, **kw) for ro in ("original", "refit")}
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "wb2"))
    run.whitebox_table(results[:1], **kw)  # the first model's original-readout values are cached
    calls = _spy_jobs(monkeypatch)
    got = {ro: run.whitebox_table(results, readout=ro, executor="debug", progress=False, **kw)
           for ro in ("original", "refit")}
    assert [j.name for c in calls for j in c] == ["white-box rep seed 0 (original)", "white-box none seed 0 (refit)",
                                                  "white-box rep seed 0 (refit)"]
    for ro in ref:
        assert got[ro].equals(ref[ro])
    assert got["original"]["pgd_acc_eps=0.2"].le(got["original"]["pgd_acc_eps=0.05"]).all()
    run.whitebox_table(results, readout="refit", executor="debug", progress=False, **kw)
    assert len([j for c in calls for j in c]) == 3  # everything cached now: nothing submitted


_RUNNER = r'''
import os, sys, time
from pathlib import Path
from repspec_utils.infra import executor as X

def job(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)  # a long job: it must not outlive the run that submitted it

ex = X.make_submitit_executor("local", sys.argv[2], {})
X.submit(ex, job, (sys.argv[1],), 1)
time.sleep(600)
'''


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_local_jobs_die_with_their_run(how, tmp_path):
    """kill -9 (or SIGTERM) of the process that submitted a local job ends the job within seconds (issue 29)."""
    import subprocess
    import sys

    script = tmp_path / "runner.py"
    script.write_text(_RUNNER)
    pid_file = tmp_path / "job.pid"
    runner = subprocess.Popen([sys.executable, str(script), str(pid_file), str(tmp_path / "jobs" / "%j")],
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert runner.poll() is None and time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        job_pid = int(pid_file.read_text())
        assert X.process_token(job_pid) is not None
        os.kill(runner.pid, how)
        runner.wait(10)
        deadline = time.monotonic() + 10
        while X.process_token(job_pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = X.process_token(job_pid) is not None
        if alive:
            os.kill(job_pid, signal.SIGKILL)
        assert not alive, f"the job (pid {job_pid}) still ran 10 s after its run got signal {how!r}"
    finally:
        if runner.poll() is None:
            runner.kill()


def test_process_token_tells_a_live_process_from_a_gone_one():
    me = X.process_token(os.getpid())
    assert me is not None and me[0] == os.getpid() and X.process_token(os.getpid()) == me
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert X.process_token(child.pid) is None


def test_jobs_report_their_progress_to_the_runner(tmp_path, monkeypatch):
    """issue 28: inside a kernel no bar is drawn; the executor writes done / total to $REPSPEC_PROGRESS_FILE, from
    which `repspec run` draws the running notebook's job bar."""
    import json

    path = tmp_path / "progress.json"
    monkeypatch.setenv(X.PROGRESS_FILE_ENV, str(path))
    jobs = [X.Job(f"j{i}", int, (str(i),)) for i in range(3)]
    X.run_jobs(jobs, "debug", progress=False, desc="attacks")
    state = json.loads(path.read_text())
    assert (state["desc"], state["done"], state["total"]) == ("attacks", 3, 3)
