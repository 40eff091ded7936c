"""Packaging: environment.yml and pyproject.toml agree; the torch/torchvision pair imports and runs a model."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {r.replace(" ", "") for r in pip if not r.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def test_torchvision_imports_and_runs_a_model():
    import torch
    import torchvision
    from torchvision.models import resnet18

    major, minor = (int(v) for v in torchvision.__version__.split(".")[:2])
    assert (major, minor) >= (0, 29), torchvision.__version__
    out = resnet18(num_classes=3).eval()(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 3)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]  # compiled ops load


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/test.sh" in ci


def test_notebooks_carry_the_kernelspec_that_setup_installs():
    """JupyterLab rewrites a notebook whose kernelspec differs from the kernel it starts (issue 28): the committed
    one must be what scripts/setup.sh installs, so opening a notebook changes nothing tracked."""
    import json
    import re

    setup = (ROOT / "scripts" / "setup.sh").read_text()
    m = re.search(r"ipykernel install --sys-prefix --name (\S+) --display-name \"([^\"]+)\"", setup)
    assert m, "setup.sh no longer installs a named kernel"
    name, display = m.groups()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        spec = json.loads(nb.read_text())["metadata"]["kernelspec"]
        assert (spec["name"], spec["display_name"]) == (name, display), nb.name


def test_the_method_catalogue_ships_in_a_wheel(tmp_path):
    """A non-editable install has the catalogue the analysis layer reads (package data, not only the repository)."""
    import subprocess
    import sys
    import zipfile

    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("repspec*.whl")
    assert "repspec_utils/method/catalogue.yaml" in zipfile.ZipFile(wheel).namelist()
