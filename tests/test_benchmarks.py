"""The benchmark harness (benchmarks/harness.py): interleaved rounds, ratios taken within a round, and the quantiles
it reports, checked on variants whose costs are known."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import harness  # noqa: E402


def test_every_round_runs_every_variant_once_in_a_shuffled_order():
    calls = []
    table = harness.run_rounds({k: (lambda k=k: calls.append(k)) for k in "abc"}, rounds=20, warmup=0)
    assert len(table) == 60 and (table.groupby("round")["variant"].apply(sorted) == [["a", "b", "c"]] * 20).all()
    orders = {tuple(calls[i:i + 3]) for i in range(0, 60, 3)}
    assert len(orders) > 1  # not one fixed order
    with pytest.raises(ValueError):
        harness.run_rounds({}, rounds=3)


def test_ratios_are_taken_within_each_round():
    """b costs 2x a in every round while the rounds themselves vary 1..20 (a busy machine): the seconds spread, the
    ratio does not; the quartiles are pandas' (linear interpolation)."""
    rows = []
    for r in range(20):
        scale = r + 1.0
        rows += [{"round": r, "variant": "a", "wall_s": scale, "cpu_s": scale, "cpu_clock": "thread"},
                 {"round": r, "variant": "b", "wall_s": 2 * scale, "cpu_s": 2 * scale, "cpu_clock": "thread"}]
    out = harness.summarise(pd.DataFrame(rows), baseline="a").set_index("variant")
    assert out.loc["b", "cpu_ratio"] == out.loc["b", "cpu_ratio_q1"] == out.loc["b", "cpu_ratio_q3"] == 2.0
    assert out.loc["a", "cpu_s"] == 10.5 and out.loc["a", "cpu_s_q1"] == 5.75 and out.loc["a", "cpu_s_q3"] == 15.25
    assert out.loc["b", "wall_s"] == 21.0 and out.loc["a", "rounds"] == 20


def test_results_are_written_with_the_machine_state(tmp_path):
    info = harness.machine()
    assert {"load1", "cpu", "cores", "torch_threads", "commit"} <= set(info)
    path = harness.write("demo", pd.DataFrame([{"variant": "a", "cpu_s": 1.0}]), info, out_dir=tmp_path)
    back = pd.read_csv(path)
    assert back.loc[0, "cpu_s"] == 1.0 and back.loc[0, "cores"] == info["cores"]


def test_the_guides_performance_table_is_generated_from_the_results_files():
    """Every number in docs/GUIDE.md's Performance table comes from benchmarks/results/*.csv: the block in the guide
    is exactly what benchmarks/performance.py makes of the committed files."""
    import performance

    guide = performance.GUIDE.read_text(encoding="utf-8")
    assert performance.START in guide and performance.END in guide
    assert guide.split(performance.START, 1)[1].split(performance.END, 1)[0].strip() == performance.table().strip()


def test_the_readmes_performance_table_is_generated_from_the_results_files():
    """README's Performance block is what benchmarks/performance.py makes of the committed files (its headline rows,
    every one also in the guide's table)."""
    import performance

    readme = performance.README.read_text(encoding="utf-8")
    block = readme.split(performance.START, 1)[1].split(performance.END, 1)[0].strip()
    assert block == performance.readme_table().strip()
    rows = [line for line in block.splitlines()[2:]]
    assert len(rows) >= 5 and all(row in performance.table() for row in rows)


def test_the_table_reports_cpu_ratios_with_their_spread(tmp_path):
    """A planted results file shows up as a row with its CPU-time ratio, IQR and machine; changing a number in the
    file changes the table (so the check above can fail)."""
    import performance

    rows = [{"variant": "none", "cpu_s": 0.1, "cpu_s_q1": 0.09, "cpu_s_q3": 0.11, "cpu_ratio": 1.0, "cpu_ratio_q1": 1.0,
             "cpu_ratio_q3": 1.0, "wall_ratio": 1.0, "wall_ratio_q1": 1.0, "wall_ratio_q3": 1.0},
            {"variant": "rep", "cpu_s": 0.104, "cpu_s_q1": 0.1, "cpu_s_q3": 0.11, "cpu_ratio": 1.04,
             "cpu_ratio_q1": 1.02, "cpu_ratio_q3": 1.05, "wall_ratio": 1.06, "wall_ratio_q1": 1.0, "wall_ratio_q3": 1.1}]
    info = {"cpu": "Test CPU", "load1": 0.5, "torch_threads": 1, "rounds": 20, "date": "2026-12-07 12:00"}
    pd.DataFrame(rows).assign(**info).to_csv(tmp_path / "train_mnist_step.csv", index=False)
    text = performance.table(tmp_path)
    assert "**1.040 [1.020–1.050]**" in text and "1.060 [1.000–1.100]" in text and "≤ 1.05× ✓" in text
    assert "Test CPU, load 0.5, 1 thread(s), 20 rounds" in text
    rows[1]["cpu_ratio"] = 1.07
    pd.DataFrame(rows).assign(**info).to_csv(tmp_path / "train_mnist_step.csv", index=False)
    assert "≤ 1.05× ✗" in performance.table(tmp_path)
