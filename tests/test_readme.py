"""The README's code blocks marked as runnable work as printed (issue 16 item 6: 'use rep-spectral on your own
model'), and the README and RESULTS.md say what the package does today."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_own_model_snippet_runs_and_penalises_phi_only():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Use rep-spectral on your own model", 1)[1]
    code = _blocks(section)[0]
    namespace: dict = {}
    exec(compile(code, "README snippet", "exec"), namespace)  # noqa: S102 - our own README
    penalty, model = namespace["penalty"], namespace["model"]
    assert model.fc not in penalty.layers and len(penalty.layers) == 20  # every conv of Φ, never the readout
    assert namespace["loss"].item() > 0


def test_readme_points_to_the_results_page_and_names_the_slow_marker():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "RESULTS.md" in text and "pytest -m slow" in text
    assert (ROOT / "RESULTS.md").is_file()
