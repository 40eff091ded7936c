"""Declared parameter ranges (issue 12, items 2 and 5): every bad value is rejected by the runner's plan (so also by
`repspec run` and `--list`) and by the notebook's first cell, naming the parameter, the value and the allowed range,
before any training; names papermill injects that a notebook does not have are rejected too."""

from __future__ import annotations

import time

import pytest

from repspec_utils.infra import notebook as nbk
from repspec_utils.infra import parameters
from repspec_utils.infra import runner as rp

BAD = [("n_attack", 0), ("attack_T", -1), ("T", -1), ("attack_probes", 0), ("seeds", []), ("seeds", [0, 0]),
       ("widths", []), ("lams", []), ("weight_decays", [-1e-4]), ("grid_n", 0), ("eps", -0.1), ("lim", 0.0),
       ("lam", -1e-3), ("lr", 0.0), ("epochs", 0), ("batch_size", 0), ("methods", ["rep", "nope"]),
       ("methods", ["rep", "rep"]), ("level", 1.0), ("acc_tolerance", -0.01), ("n_edge", 1), ("digits", [7, 6]),
       ("n_train", -5), ("fmn_steps", 0), ("xor_seeds", []), ("torch_threads", -1), ("precision", "fp16")]
CASES = [(nb, name, value) for name, value in BAD for nb in nbk.notebooks() if name in nbk.notebook_defaults(nb)
         and parameters.rules_for(nb)[name].ok(value) is False]  # fig8: 0 = the task's recipe; App. A/B n_attack 0 = all


def test_every_named_case_applies_somewhere():
    assert {name for _, name, _ in CASES} == {name for name, _ in BAD}


@pytest.mark.parametrize("nb, name, value", CASES, ids=[f"{nb}-{n}={v!r}" for nb, n, v in CASES])
def test_bad_value_rejected_at_plan_time_naming_parameter_value_and_range(nb, name, value):
    with pytest.raises(nbk.ParameterError) as info:
        rp.plan(nb, "smoke", {name: value})
    text = str(info.value)
    assert f"{name!r}" in text and repr(value) in text and "must be" in text


def test_every_profile_of_every_notebook_is_in_range():
    for nb in nbk.notebooks():
        for profile in nbk.PROFILES:
            nbk.profile_params(nb, profile)


def test_burn_in_past_the_profiles_last_epoch_is_caught_at_plan_time():
    with pytest.raises(nbk.ParameterError, match=r"burn_in must be below epochs"):
        rp.plan("fig4_mnist", "cpu", {"epochs": 10})  # the cpu profile's burn-in is 160
    with pytest.raises(nbk.ParameterError, match=r"xor_burn_in must be below xor_epochs"):
        rp.plan("bounds_sandwich", "cpu", {"xor_epochs": 100})


def test_cli_rejects_in_seconds_before_any_work(capsys):
    start = time.perf_counter()
    assert rp.main(["run", "--profile", "cpu", "--only", "fig4_mnist", "--set", "n_attack=0"]) == 2
    assert rp.main(["run", "--profile", "cpu", "--only", "fig4_mnist", "--set", "n_attack=0", "--list"]) == 2
    assert time.perf_counter() - start < 20
    err = capsys.readouterr().err
    assert "parameter 'n_attack' = 0 is out of range: it must be an integer in 1..10000" in err


def test_notebook_first_cell_rejects_bad_values_and_contradictions():
    ns = {**nbk.notebook_defaults("fig4_mnist"), "n_attack": 0}
    with pytest.raises(nbk.ParameterError, match="'n_attack' = 0"):
        nbk.notebook_params(ns, "fig4_mnist")
    ns = {**nbk.notebook_defaults("fig4_mnist"), "epochs": 3, "burn_in": 3}
    with pytest.raises(nbk.ParameterError, match="burn_in must be below epochs"):
        nbk.notebook_params(ns, "fig4_mnist")


def test_notebook_first_cell_rejects_names_papermill_injected_that_it_does_not_have():
    ns = {**nbk.notebook_defaults("fig1_tradeoff"), "In": ["", "import numpy", "# Parameters\nepoch = 5\neps = 0.1\n"],
          "epoch": 5}
    with pytest.raises(nbk.ParameterError, match=r"no parameter\(s\) 'epoch' \(injected by papermill"):
        nbk.notebook_params(ns, "fig1_tradeoff")
    assert nbk.injected_parameters({"In": ["x = 1", "# Parameters\neps = 0.1\nprofile = 'cpu'\n"]}) == ["eps",
                                                                                                          "profile"]


@pytest.mark.slow  # ≈ 12 s: a papermill kernel
def test_papermill_typo_fails_the_run(tmp_path, monkeypatch):
    """`papermill notebooks/fig1_tradeoff.ipynb out.ipynb -p epss 0.1` must not run with the defaults."""
    import papermill as pm

    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("REPSPEC_FIGURES", str(tmp_path / "figs"))
    with pytest.raises(pm.PapermillExecutionError, match="epss"):
        pm.execute_notebook(str(nbk.notebook_path("fig1_tradeoff")), str(tmp_path / "out.ipynb"),
                            parameters={"epss": 0.1}, cwd=str(nbk.NOTEBOOK_DIR), progress_bar=False,
                            kernel_name=rp.ensure_kernel())


def test_rules_describe_their_values():
    assert parameters.describe("n_attack") == "an integer ≥ 1"
    assert "rep" in parameters.describe("methods") and parameters.describe("no_such_parameter") is None
    assert parameters.describe("epochs", "fig8_transfer").endswith("(0: the task's recipe)")
