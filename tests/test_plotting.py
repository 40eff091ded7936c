"""Figure helpers: provenance footer, atomic saving, method colours, the panels, and Figure 1's exact numbers."""

import subprocess

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from repspec_utils.analysis import plotting
from repspec_utils.evaluation import geometry as G
from repspec_utils.infra import provenance


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


INFO = {"profile": "cpu", "seeds": [400, 401, 402, 403, 404], "epochs": 15000, "attacked": 1000,
        "data": "MNIST (yann.lecun.com mirror, md5 ok)", "commit": "abc1234"}


def test_method_names_and_colours():
    assert [plotting.method_label(m) for m in plotting.MAIN_METHODS] == ["None", "ll-spectral", "rep-spectral"]
    assert plotting.method_label("rep-spectral") == "rep-spectral" and plotting.method_label("other") == "other"
    assert plotting.method_label("rep λ=0.01") == "rep-spectral λ=0.01"
    assert plotting.method_label("rep_stages2 λ=0.01") == "rep-spectral (2 stages) λ=0.01"
    assert len({plotting.method_color(m) for m in plotting.MAIN_METHODS}) == 3
    assert plotting.method_color("ll-spectral") == plotting.method_color("ll") == plotting._CB[1]
    assert plotting.method_color("rep λ=0.01") == plotting.method_color("rep") and plotting.method_color("x") == plotting._CB[5]
    assert plotting.method_order(["rep", "none", "bss", "ll", "l2sp"]) == ["none", "l2sp", "bss", "ll", "rep"]
    assert plotting.method_order(["rep-spectral λ=0.01", "zzz", "None"]) == ["none", "rep λ=0.01", "zzz"]


def test_footer_contains_every_field():
    text = plotting.footer_text({**INFO, "lambda": 1e-3})
    for label in ("profile: cpu", "seeds: 400–404 (n=5)", "epochs: 15000", "attacked samples: 1000",
                  "data: MNIST (yann.lecun.com mirror, md5 ok)", "commit: abc1234", "lambda: 0.001"):
        assert label in text
    sparse = plotting.footer_text({"profile": "fast"})
    for _, label in plotting.FOOTER_FIELDS:
        assert f"{label}: " in sparse
    assert "attacked samples: n/a" in sparse and "commit: n/a" not in sparse  # commit defaults to git_commit()
    assert "seeds: 3, 9 (n=2)" in plotting.footer_text({"seeds": [3, 9]})


def test_git_commit(tmp_path):
    assert provenance.git_commit(tmp_path) == "unknown"  # not a repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert provenance.git_commit(tmp_path) == "unknown"  # no commits yet
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("u")
    assert provenance.git_commit(tmp_path) == head
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "f.csv").write_text("1")
    (tmp_path / "RESULTS.md").write_text("# Results")
    (tmp_path / "README.md").write_text("# readme")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "RESULTS.md").write_text("not the generated page")
    subprocess.run([*git, "-C", str(tmp_path), "add", "figures/f.csv", "RESULTS.md", "README.md", "docs/RESULTS.md"],
                   check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "-m", "y"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "figures" / "f.csv").write_text("2")  # a figure rewritten by a batch run: still the clean commit
    (tmp_path / "RESULTS.md").write_text("# Results, regenerated")  # the claims notebook's page: likewise
    (tmp_path / "README.md").write_text("# readme, its verdict block regenerated")  # and README's verdict block
    assert provenance.git_commit(tmp_path) == head
    (tmp_path / "docs" / "RESULTS.md").write_text("edited")  # only the root page is generated
    assert provenance.git_commit(tmp_path) == head + "-dirty"
    (tmp_path / "docs" / "RESULTS.md").write_text("not the generated page")
    (tmp_path / "a.txt").write_text("2")
    assert provenance.git_commit(tmp_path) == head + "-dirty"


def test_save_figure_writes_both_atomically(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    png, pdf = plotting.save_figure(fig, "fig_test", tmp_path / "out", INFO)
    assert png == tmp_path / "out" / "fig_test.png" and pdf == tmp_path / "out" / "fig_test.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fig_test.pdf", "fig_test.png"]  # no temp files
    footers = [t for t in fig.texts if t.get_gid() == "repspec-footer"]
    assert len(footers) == 1 and "attacked samples: 1000" in footers[0].get_text().replace("\n", " ")
    plotting.save_figure(fig, "fig_test", tmp_path / "out", INFO)  # overwrite; still one footer
    assert len([t for t in fig.texts if t.get_gid() == "repspec-footer"]) == 1


def test_figure1_numbers():
    a, b, c = G.tradeoff_examples()
    assert (a.accuracy, b.accuracy, c.accuracy) == (0.5, 1.0, 1.0)
    assert b.mean_distance < c.mean_distance
    fig, axes = plt.subplots(1, 3)
    examples = plotting.figure1_tradeoff(axes, G.tradeoff_examples(0.2))
    assert [e.accuracy for e in examples] == [0.5, 1.0, 1.0]
    for ax, ex in zip(axes, examples):  # the annotation shows the computed numbers
        assert f"accuracy {ex.accuracy:.0%}" in ax.get_xlabel() and f"{ex.mean_distance:.2f}" in ax.get_xlabel()


def _seed_table():
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"method": m, "seed": s, "weight_decay": wd, "test_accuracy": rng.uniform(0.9, 1.0),
                          "mean_distance": rng.uniform(0, 2)}
                         for m in ("rep", "ll", "none") for s in range(4) for wd in (0.0, 1e-4)])


def test_method_panels():
    df = _seed_table()
    fig, (ax1, ax2) = plt.subplots(1, 2)
    plotting.plot_method_distribution(df, y="test_accuracy", ax=ax1)
    assert [t.get_text() for t in ax1.get_xticklabels()] == ["None", "ll-spectral", "rep-spectral"]
    table = plotting.plot_mean_sd_bars(df, "mean_distance", by="weight_decay", ax=ax2)
    expected = df.groupby(["weight_decay", "method"])["mean_distance"].agg(["mean", "std"])
    for _, row in table.iterrows():
        ref = expected.loc[(row["weight_decay"], row["method"])]
        assert row["mean"] == pytest.approx(ref["mean"]) and row["sd"] == pytest.approx(ref["std"])
    assert [p.get_height() for p in ax2.patches][:3] == pytest.approx(list(table["mean"][:3]))
    plain = plotting.plot_mean_sd_bars(df[df.weight_decay == 0], "mean_distance", ax=plt.figure().gca())
    assert list(plain["method"]) == ["none", "ll", "rep"]


def test_field_and_boundary_panels():
    xx, yy, pts = G.grid_2d(2.0, 21)
    P_ = pts.numpy()
    vol = np.exp(-(P_**2).sum(1))
    vol[0] = 0.0  # a zero (dead-unit) value must not break the log scale
    margin = P_[:, 0] - 0.3
    fig, (ax1, ax2) = plt.subplots(1, 2)
    mesh = plotting.plot_field_2d(ax1, xx, yy, vol, points=np.array([[1.0, 1.0], [-1.0, -1.0]]), labels=[0, 1],
                           boundary=margin, title="volume element", cbar_label="√det g")
    assert isinstance(mesh.norm, matplotlib.colors.LogNorm) and mesh.norm.vmin > 0
    plotting.plot_decision_boundary(ax2, xx, yy, margin, np.array([[1.0, 1.0]]), [1])
    fig.canvas.draw()


def test_footer_is_at_most_two_lines_and_a_smoke_figure_says_so(tmp_path):
    """issue 16 item 5: a long provenance footer is set smaller, then cut (the manifest keeps it all); commit and
    compute come before the long data field; a smoke run's figure carries 'SMOKE — not a result'."""
    import matplotlib.pyplot as plt

    from repspec_utils.analysis import plotting as PL

    info = {"profile": "smoke", "seeds": [0, 1, 2], "epochs": 4, "attacked": 5, "commit": "abc1234",
            "compute": "training 3 s (6 models + 2 burn-ins)",
            "data": "real: torchvision MNIST from data/MNIST/raw (md5 verified), train + test split; " * 8}
    fig, ax = plt.subplots(figsize=(4, 3))
    PL.save_figure(fig, "f", tmp_path, info)
    footer = [t for t in fig.texts if t.get_gid() == "repspec-footer"][0]
    assert footer.get_text().count("\n") <= 1 and "commit: abc1234" in footer.get_text()
    assert "manifest.json" in footer.get_text()  # it was cut, and says where the rest is
    assert any(t.get_text() == PL.SMOKE_BANNER for t in fig.texts)
    fig2, _ = plt.subplots(figsize=(4, 3))
    PL.save_figure(fig2, "g", tmp_path, {**info, "profile": "cpu", "data": "generated: XOR"})
    assert not any(t.get_text() == PL.SMOKE_BANNER for t in fig2.texts)
    plt.close("all")


def test_few_seeds_are_drawn_as_mean_and_sd_not_as_boxes():
    import matplotlib.pyplot as plt
    import pandas as pd

    from repspec_utils.analysis import plotting as PL

    for n_seeds, boxes in ((3, False), (5, True)):
        df = pd.DataFrame({"method": ["none", "rep"] * n_seeds, "acc": [0.1 * i for i in range(2 * n_seeds)]})
        fig, ax = plt.subplots()
        PL.plot_method_distribution(df, y="acc", ax=ax)
        assert (len(ax.patches) > 0) == boxes  # boxes are patches; the mean ± sd are lines
        plt.close(fig)


def test_portable_paths_and_merged_splits(monkeypatch, tmp_path):
    from repspec_utils.infra import files
    from repspec_utils.infra.notebook import merge_splits

    assert files.portable(f"real: MNIST from {files.REPO_ROOT}/data/MNIST/raw") == "real: MNIST from data/MNIST/raw"
    monkeypatch.setenv("REPSPEC_DATA", str(tmp_path / "d"))
    assert files.portable(f"from {tmp_path}/d/MNIST/raw") == "from $REPSPEC_DATA/MNIST/raw"
    assert merge_splits(["a, train split", "a, test split", "b"]) == ["a, train + test split", "b"]


def test_eps_label_writes_radii_in_units_of_1_255_where_they_are():
    from repspec_utils.analysis.plotting import eps_label

    assert eps_label(8 / 255) == "8/255" and eps_label("0.0313725") == "8/255" and eps_label(4 / 255) == "4/255"
    assert eps_label(0.1) == "0.1" and eps_label("0.3") == "0.3" and eps_label(0.05) == "0.05"
    assert eps_label(0.123) == "0.123" and eps_label("linf") == "linf"


def test_claims_figure_has_a_distance_and_an_accuracy_panel_and_cuts_nothing():
    """issue 28: the claims figure clipped intervals at ±30 % and drew accuracy failures as points right of zero:
    now one row per test × setting × rep, a distance and an accuracy panel on symlog axes that hold every interval."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    rows = pd.DataFrame([
        {"test": "T", "setting": "all", "rep": "rep", "baseline": b, "verdict": v, "profile": "cpu", "n_seeds": 5,
         "distance_baseline_mean": 1.0, "distance_diff": d, "distance_diff_ci_low": d - 0.9,
         "distance_diff_ci_high": d + 0.9, "acc_diff": a, "acc_diff_ci_low": a - 0.01, "acc_diff_ci_high": a + 0.01}
        for b, v, d, a in (("none", "holds", 1.2, 0.0), ("ll λ=0.001", "fails", 0.5, -0.2))])
    fig = plotting.plot_paired_intervals(rows)
    dist, acc = fig.axes[:2]
    lo, hi = dist.get_xlim()
    assert lo <= (0.5 - 0.9) * 100 and hi >= (1.2 + 0.9) * 100  # the widest interval is inside the axis (210 %)
    assert acc.get_xlim()[0] <= -21  # the accuracy failure (−20 points) is drawn where it is, left of zero
    assert len(dist.get_yticks()) == 1 and "cpu, 5 seeds" in dist.get_yticklabels()[0].get_text()


def test_the_named_palette_is_seaborns_colorblind():
    import seaborn as sns

    assert list(plotting._CB) == sns.color_palette("colorblind").as_hex()
