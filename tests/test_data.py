"""Tests for repspec_utils.data: generators, md5 checks, MNIST / Fashion-MNIST, CIFAR-10 (synthetic stand-in)."""
from __future__ import annotations

import gzip
import hashlib
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from repspec_utils import data as D
from repspec_utils.data import cifar as DC
from repspec_utils.data import mnist as DM
from repspec_utils.data.__main__ import main as data_main

REPO = Path(__file__).resolve().parent.parent
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _flip_byte(p: Path, offset: int = 20) -> None:
    b = bytearray(p.read_bytes())
    b[offset] ^= 0xFF
    p.write_bytes(bytes(b))


def _real_raw(name: str) -> Path:
    raw = D.mnist_raw_dir(name)
    table = DM.MNIST_LIKE[name][1]
    if not all((raw / f).is_file() for f in table):
        pytest.skip(f"{name} not fetched into {raw}: run `bash scripts/fetch_data.sh` first")
    return raw


# ------------------------------------------------------------------------------------------ generators
def test_xor_clean():
    tr, te = D.get_data("xor")
    assert te is tr
    assert tr.x.shape == (4, 2) and tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
    assert set(map(tuple, tr.x.tolist())) == {(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)}
    # convention: y = 1 iff x1 * x2 < 0
    for (a, b), y in zip(tr.x.tolist(), tr.y.tolist()):
        assert y == int(a * b < 0)
    assert tr.box == (-2.0, 2.0) and tr.n_classes == 2 and not tr.synthetic and len(tr) == 4


def test_xor_noisy_shapes_labels_determinism():
    tr, te = D.get_data("xor_noisy", seed=3)
    assert te is tr and tr.x.shape == (80, 2) and tr.class_counts().tolist() == [40, 40]
    corners = torch.sign(tr.x)  # std 0.2 around (±1, ±1): the noisy point stays in its corner's quadrant
    assert torch.equal(tr.y, (corners[:, 0] * corners[:, 1] < 0).long())
    resid = tr.x - corners
    assert 0.12 < resid.std().item() < 0.28
    assert tr.x.abs().max() <= 2.0
    again, _ = D.get_data("xor_noisy", seed=3)
    other, _ = D.get_data("xor_noisy", seed=4)
    assert torch.equal(tr.x, again.x) and torch.equal(tr.y, again.y)
    assert not torch.equal(tr.x, other.x)


def test_sin_boundary():
    tr, te = D.get_data("sin", seed=1)
    assert len(tr) == len(te) == 800
    for ds in (tr, te):
        assert ds.x.abs().max() <= 1.0 and ds.box == (-2.0, 2.0)
        want = (ds.x[:, 1] > 0.6 * torch.sin(7 * ds.x[:, 0] - 1)).long()
        assert torch.equal(ds.y, want)
    both = torch.cat([tr.x, te.x])
    assert torch.unique(both, dim=0).shape[0] == 1600  # a disjoint split of the 1600 points
    tr2, te2 = D.get_data("sin", seed=1)
    assert torch.equal(tr.x, tr2.x) and torch.equal(te.y, te2.y)
    assert not torch.equal(D.get_data("sin", seed=2)[0].x, tr.x)
    assert 0.3 < tr.y.float().mean() < 0.7


def test_unknown_name_errors_before_work(tmp_path):
    root = tmp_path / "never_created"
    with pytest.raises(ValueError) as ei:
        D.get_data("imagenet", root=root)
    for n in D.dataset_names():
        assert n in str(ei.value)
    assert not root.exists()
    assert D.core.normalize_name("Fashion-MNIST") == "fashion_mnist"


def test_array_dataset_contract():
    x = torch.rand(10, 3)
    y = torch.arange(10) % 2
    ds = D.ArrayDataset(x=x, y=y, name="t", source="real: test", box=(0, 1), n_classes=2)
    sub = ds.subset([0, 2, 4])
    assert len(sub) == 3 and torch.equal(sub.x, x[[0, 2, 4]]) and sub.box == (0.0, 1.0)
    assert len(ds.subset(slice(0, 5))) == 5 and len(ds.subset(y == 1)) == 5
    assert not ds.synthetic
    assert D.ArrayDataset(x=x, y=y, name="t", source="SYNTHETIC STAND-IN for x", box=(0, 1), n_classes=2).synthetic
    with pytest.raises(ValueError):
        D.ArrayDataset(x=x + 1.5, y=y, name="t", source="s", box=(0, 1), n_classes=2)
    with pytest.raises(ValueError):
        D.ArrayDataset(x=torch.full((10, 3), float("nan")), y=y, name="t", source="s", box=(0, 1), n_classes=2)
    with pytest.raises(TypeError):
        D.ArrayDataset(x=x.double(), y=y, name="t", source="s", box=(0, 1), n_classes=2)
    with pytest.raises(TypeError):
        D.ArrayDataset(x=x, y=y.int(), name="t", source="s", box=(0, 1), n_classes=2)
    with pytest.raises(ValueError):
        D.ArrayDataset(x=x, y=y[:5], name="t", source="s", box=(0, 1), n_classes=2)


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("REPSPEC_DATA", str(tmp_path))
    assert D.data_root() == tmp_path
    assert D.data_root("/elsewhere") == Path("/elsewhere")
    monkeypatch.delenv("REPSPEC_DATA")
    assert D.data_root() == REPO / "data"


def test_digits():
    tr, te = D.get_data("digits", seed=0)
    assert tr.x.shape[1] == 64 and len(tr) + len(te) == 1797
    assert tr.box == (0.0, 1.0) and 0.0 <= tr.x.min() and tr.x.max() <= 1.0 and tr.x.max() == 1.0
    assert tr.n_classes == 10 and (tr.class_counts() > 100).all() and not tr.synthetic
    tr2, _ = D.get_data("digits", seed=0)
    assert torch.equal(tr.x, tr2.x)
    img, _ = D.get_data("digits", flatten=False)
    assert img.x.shape[1:] == (1, 8, 8)


# ------------------------------------------------------------------------------------------ md5 checks
def _fake_raw(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    raw = tmp_path / "raw"
    raw.mkdir()
    table = {}
    for i, name in enumerate(D.MNIST_MD5):
        p = raw / name
        p.write_bytes(bytes(range(i, i + 64)))
        table[name] = _md5(p)
    return raw, table


def test_verify_hashes_every_file_on_every_call_and_detects_corruption(tmp_path, monkeypatch):
    raw, table = _fake_raw(tmp_path)
    fp = D.verify_raw_files(raw, table, label="fake")
    assert fp == D.data_fingerprint(table) and not list(raw.glob(".*"))  # no stamp file: nothing is trusted later
    hashed = []
    real_md5 = DM.md5_file
    monkeypatch.setattr(DM, "md5_file", lambda p: hashed.append(p) or real_md5(p))
    D.verify_raw_files(raw, table, label="fake")
    assert sorted(Path(h).name for h in hashed) == sorted(table)  # a second check hashes all four files again
    monkeypatch.undo()
    bad = raw / "train-labels-idx1-ubyte"
    _flip_byte(bad)
    with pytest.raises(D.DataIntegrityError) as ei:
        D.verify_raw_files(raw, table, label="fake", fix="Fix: run `bash scripts/fetch_data.sh`")
    msg = str(ei.value)
    assert str(bad) in msg and table["train-labels-idx1-ubyte"] in msg and "bash scripts/fetch_data.sh" in msg


def test_missing_mnist_error_names_files_and_fix(tmp_path):
    with pytest.raises(D.DataMissingError) as ei:
        D.get_data("mnist", root=tmp_path)
    msg = str(ei.value)
    for name, md5 in D.MNIST_MD5.items():
        assert str(tmp_path / "MNIST" / "raw" / name) in msg and md5 in msg
    assert f"bash scripts/fetch_data.sh {tmp_path}" in msg and "download=True" in msg
    assert isinstance(ei.value, FileNotFoundError)


def test_corrupt_copy_of_real_mnist_detected(tmp_path):
    raw = _real_raw("mnist")
    dst = tmp_path / "MNIST" / "raw"
    shutil.copytree(raw, dst)  # copy2 keeps mtimes, and the stamp comes along
    bad = dst / "t10k-labels-idx1-ubyte"
    _flip_byte(bad, offset=100)
    with pytest.raises(D.DataIntegrityError) as ei:
        D.get_data("mnist", root=tmp_path)
    msg = str(ei.value)
    assert str(bad) in msg and D.MNIST_MD5["t10k-labels-idx1-ubyte"] in msg
    assert "bash scripts/fetch_data.sh" in msg
    assert _md5(raw / "t10k-labels-idx1-ubyte") == D.MNIST_MD5["t10k-labels-idx1-ubyte"]  # real data untouched


def test_prepare_copies_gz_and_plain_and_verifies(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    table = {}
    for i, name in enumerate(D.FASHION_MNIST_MD5):
        content = bytes(range(i, i + 50)) * 3
        table[name] = hashlib.md5(content).hexdigest()
        if i % 2:
            (src / name).write_bytes(content)
        else:
            with gzip.open(src / (name + ".gz"), "wb") as f:
                f.write(content)
    monkeypatch.setitem(DM.MNIST_LIKE, "fashion_mnist", ("FashionMNIST", table, "Fashion-MNIST"))
    raw = D.prepare_fashion_mnist(tmp_path / "root", source=src)
    assert raw == tmp_path / "root" / "FashionMNIST" / "raw"
    assert {n: _md5(raw / n) for n in table} == table
    D.prepare_fashion_mnist(tmp_path / "root", source=src)  # idempotent
    # a source with the wrong content is refused and leaves no partial file behind
    (raw / "t10k-images-idx3-ubyte").unlink()
    (src / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not the right file"))
    with pytest.raises(D.DataIntegrityError, match="t10k-images-idx3-ubyte"):
        D.prepare_fashion_mnist(tmp_path / "root", source=src)
    assert not (raw / "t10k-images-idx3-ubyte").exists()
    assert not list(raw.glob("*.tmp"))


def test_cli_missing_and_verify(tmp_path, capsys):
    assert data_main(["missing", "mnist", "fashion_mnist", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == ["mnist", "fashion_mnist"]
    assert data_main(["verify", "mnist", "--root", str(tmp_path)]) == 1
    assert "bash scripts/fetch_data.sh" in capsys.readouterr().err


def test_fetch_script_syntax():
    script = REPO / "scripts" / "fetch_data.sh"
    assert script.is_file()
    subprocess.run(["bash", "-n", str(script)], check=True)


# ------------------------------------------------------------------------------------------ real MNIST-type data
def test_mnist_loads_with_known_class_counts():
    _real_raw("mnist")
    tr, te = D.get_data("mnist")
    assert tr.x.shape == (60000, 784) and te.x.shape == (10000, 784)
    assert tr.x.dtype == torch.float32 and tr.box == (0.0, 1.0) and tr.x.max() == 1.0 and tr.x.min() == 0.0
    assert tr.class_counts().tolist() == MNIST_TRAIN_COUNTS and len(te) == 10000
    assert "md5 verified" in tr.source and not tr.synthetic and tr.name == "mnist"


def test_fashion_mnist_loads_balanced():
    _real_raw("fashion_mnist")
    tr, te = D.get_data("fashion_mnist", flatten=False)
    assert tr.x.shape == (60000, 1, 28, 28) and te.x.shape == (10000, 1, 28, 28)
    assert tr.class_counts().tolist() == [6000] * 10 and te.class_counts().tolist() == [1000] * 10
    assert not tr.synthetic


# ------------------------------------------------------------------------------------------ CIFAR-10
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("syn")


def test_synthetic_cifar_roundtrip(synthetic_root):
    from torchvision.datasets import CIFAR10

    tr, te = D.get_data("cifar10_synthetic", root=synthetic_root, n_train=200, n_test=50, seed=1)
    assert tr.x.shape == (200, 3, 32, 32) and te.x.shape == (50, 3, 32, 32) and tr.x.dtype == torch.float32
    assert tr.class_counts().tolist() == [20] * 10 and te.class_counts().tolist() == [5] * 10
    assert tr.synthetic and te.synthetic and tr.source.startswith("SYNTHETIC STAND-IN")
    assert tr.box == (0.0, 1.0) and 0.0 <= tr.x.min() and tr.x.max() <= 1.0 and tr.x.std() > 0.05
    folder = synthetic_root / "cifar10_synthetic" / "v1-seed1-n200-50" / DC.SYNTHETIC_BASE_FOLDER
    assert "NOT REAL DATA" in (folder / DC.SYNTHETIC_README).read_text()
    # the loader is a torchvision CIFAR10 subclass and sees the same pixels
    ds = D.SyntheticCIFAR10(str(folder.parent), train=True)
    assert isinstance(ds, CIFAR10) and ds.classes[0] == "airplane"
    assert torch.equal(torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255, tr.x)
    # same pickle format as cifar-10-batches-py: both classic loading styles work
    with open(folder / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (40, 3072) and len(entry[b"labels"]) == 40
    # deterministic: regenerating gives identical files; regenerating in place replaces the folder
    again = D.make_synthetic_cifar10(synthetic_root / "again", n_train=200, n_test=50, seed=1)
    assert _md5(again / "data_batch_3") == _md5(folder / "data_batch_3")
    D.make_synthetic_cifar10(synthetic_root / "again", n_train=100, n_test=20, seed=1)
    assert D.SyntheticCIFAR10(str(synthetic_root / "again"), train=False).data.shape[0] == 20
    assert sorted(p.name for p in (synthetic_root / "again").iterdir()) == [DC.SYNTHETIC_BASE_FOLDER]
    # a model of the class means is not enough (the task is not trivial) but classes differ
    flat = tr.x.reshape(200, -1)
    means = torch.stack([flat[tr.y == c].mean(0) for c in range(10)])
    assert torch.cdist(means, means).max() > 0


def test_synthetic_cifar_md5_mismatch_detected(synthetic_root):
    D.get_data("cifar10_synthetic", root=synthetic_root, n_train=100, n_test=20, seed=2)
    folder = synthetic_root / "cifar10_synthetic" / "v1-seed2-n100-20" / DC.SYNTHETIC_BASE_FOLDER
    bad = folder / "data_batch_2"
    _flip_byte(bad, offset=500)
    with pytest.raises(D.DataIntegrityError) as ei:
        D.get_data("cifar10_synthetic", root=synthetic_root, n_train=100, n_test=20, seed=2)
    assert str(bad) in str(ei.value) and "regenerate" in str(ei.value)
    with pytest.raises(RuntimeError, match="corrupted"):  # torchvision's own check, md5s from the manifest
        D.SyntheticCIFAR10(str(folder.parent), train=True)


def test_cifar10_missing_error(tmp_path, monkeypatch):
    monkeypatch.delenv("REPSPEC_CIFAR10_DIR", raising=False)
    with pytest.raises(D.DataMissingError) as ei:
        D.get_data("cifar10", root=tmp_path)
    msg = str(ei.value)
    assert str(tmp_path) in msg and "REPSPEC_CIFAR10_DIR" in msg and "cifar10_synthetic" in msg
    assert "download=True" in msg
    with pytest.raises(D.DataMissingError):  # a named but absent folder is "not found", not "corrupt"
        D.get_data("cifar10", root=tmp_path, cifar_dir=tmp_path / "nope" / "cifar-10-batches-py")


def test_cifar10_real_path_with_patched_md5s(tmp_path, monkeypatch):
    """The real-CIFAR code path (folder lookup, md5 check, conversion) on a copy of synthetic batch files."""
    from torchvision.datasets import CIFAR10

    src = D.make_synthetic_cifar10(tmp_path / "gen", n_train=50, n_test=20, seed=0)
    real = tmp_path / "somewhere" / "cifar-10-batches-py"
    shutil.copytree(src, real)
    md5 = {f: _md5(real / f) for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]}
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]})
    monkeypatch.setenv("REPSPEC_CIFAR10_DIR", str(real))
    tr, te = D.get_data("cifar10", root=tmp_path / "empty")
    assert tr.x.shape == (50, 3, 32, 32) and len(te) == 20 and tr.source.startswith("real: torchvision CIFAR10")
    assert not tr.synthetic
    tr_flat, _ = D.get_data("cifar10", cifar_dir=real.parent, flatten=True)
    assert tr_flat.x.shape == (50, 3072)
    _flip_byte(real / "test_batch", offset=300)
    with pytest.raises(D.DataIntegrityError, match="test_batch"):
        D.get_data("cifar10", cifar_dir=real)


def test_corrupt_copy_with_preserved_mtime_is_caught_by_every_load(tmp_path, monkeypatch, capsys):
    """issue 29: a changed label byte with its mtime restored (`cp -p` of a corrupt file) used to load as "md5
    verified" through a (size, mtime) stamp; every load hashes every file now, and the CLI's check too."""
    import os

    from repspec_utils.data.__main__ import main as data_cli

    root = tmp_path / "root"
    raw, table = _fake_raw(tmp_path)
    (root / "MNIST").mkdir(parents=True)
    raw = raw.rename(root / "MNIST" / "raw")
    monkeypatch.setitem(DM.MNIST_LIKE, "mnist", ("MNIST", table, "fake MNIST"))
    D.verify_raw_files(raw, table, label="fake")
    bad = raw / "t10k-labels-idx1-ubyte"
    st = bad.stat()
    _flip_byte(bad)
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    with pytest.raises(D.DataIntegrityError, match="md5 mismatch"):
        D.verify_raw_files(raw, table, label="fake")
    with pytest.raises(D.DataIntegrityError, match="md5 mismatch"):
        D.dataset_fingerprint("mnist", root=root)
    assert data_cli(["missing", "mnist", "--root", str(root)]) == 0
    assert capsys.readouterr().out.split() == ["mnist"]  # fetch_data.sh would fetch it again


def test_a_processed_folder_is_refused_not_warned_about(tmp_path):
    """torchvision prefers MNIST/processed/*.pt over the verified raw files: 3 fake images there loaded as "real …
    (md5 verified)" with only a warning. Now such a folder stops the load (and the fingerprint) with the fix."""
    raw = _real_raw("mnist")
    shutil.copytree(raw, tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "processed").mkdir()
    (tmp_path / "MNIST" / "processed" / "training.pt").write_bytes(b"fake")
    for call in (lambda: D.get_data("mnist", root=tmp_path), lambda: D.dataset_fingerprint("mnist", root=tmp_path)):
        with pytest.raises(D.DataIntegrityError, match=r"processed exists.*Delete that folder"):
            call()


def test_loaded_data_carries_its_files_fingerprint():
    train, test = D.get_data("mnist")
    assert train.identity == test.identity == D.dataset_fingerprint("mnist") == D.data_fingerprint(D.MNIST_MD5)
    assert train.subset(range(10)).identity == train.identity  # a subset keeps it (n_train is in the config)
    assert D.get_data("fashion_mnist")[0].identity != train.identity
    x1, x2 = D.get_data("xor_noisy", seed=0)[0], D.get_data("xor_noisy", seed=1)[0]
    assert x1.identity.startswith("tensors:") and x1.identity != x2.identity
    assert D.dataset_fingerprint("xor_noisy", seed=0) == x1.identity
