"""Trust boundaries (issue 29): no file a user hands us runs code, no cached result comes from other data, bad
values fail before work through every interface, attacks refuse NaN models, and the precision is what the key says."""

import io
import math
import pickle

import numpy as np
import pytest
import torch

from repspec_utils import data as D
from repspec_utils.attacks import NonFiniteLogits, fmn_attack, full_fp32_matmuls, pgd_linf, tangent_attack
from repspec_utils.data import mnist as DM
from repspec_utils.experiments import recipes
from repspec_utils.infra import cache, parameters
from repspec_utils.training import TrainConfig, data_identity, make_model, train, validate
from repspec_utils.training.loop import phase_key


class _Payload:
    """Unpickling this calls open(marker, 'w'): code run by loading a file, as os.system would be."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creating a file is proof enough that code ran


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def test_a_crafted_cache_entry_with_a_valid_header_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    entry = tmp_path / "cache" / "train" / "k" / "final.pt"
    entry.parent.mkdir(parents=True)
    buf = io.BytesIO()
    torch.save({"model": _Payload(marker)}, buf)  # torch.save pickles the payload object
    payload = buf.getvalue()
    import hashlib

    entry.write_bytes(cache._MAGIC + hashlib.sha256(payload).digest() + payload)  # a valid checksum header
    with pytest.raises(cache.UnsafeCacheEntry, match="holds objects other than tensors and plain data"):
        cache.load(entry)
    assert not marker.exists() and entry.exists()  # nothing ran; the file is kept as evidence
    cache.save({"w": torch.ones(2), "history": [{"epoch": 1, "loss": 0.5}], "name": "x"}, tmp_path / "ok.pt")
    assert cache.load(tmp_path / "ok.pt")["history"][0]["epoch"] == 1  # what repspec writes still loads


def test_a_crafted_transfer_weights_file_runs_nothing(tmp_path):
    from repspec_utils.defences.transfer import build_standin_model

    marker, weights = tmp_path / "ran", tmp_path / "weights.pt"
    torch.save({"format": "repspec-standin-backbone-v1", "d_in": 4, "widths": [3], "activation": "gelu",
                "state_dict": {}, "pretrained_on": _Payload(marker)}, weights)
    with pytest.raises(pickle.UnpicklingError):
        build_standin_model(weights)
    assert not marker.exists()


def test_a_crafted_synthetic_cifar_batch_with_an_edited_manifest_runs_nothing(tmp_path):
    import json

    from repspec_utils.data.cifar import UnsafePickleError

    train, _ = D.get_data("cifar10_synthetic", root=tmp_path, n_train=20, n_test=10)  # writes the stand-in
    folder = next(tmp_path.rglob("cifar-10-synthetic-batches-py"))
    marker = tmp_path / "ran"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3], "x": _Payload(marker)}, f)
    man_path = next(p for p in folder.iterdir() if p.suffix == ".json")
    manifest = json.loads(man_path.read_text())
    manifest["md5"]["data_batch_1"] = D.mnist.md5_file(folder / "data_batch_1")  # the attacker edits the manifest
    man_path.write_text(json.dumps(manifest))
    with pytest.raises(UnsafePickleError, match="refusing to unpickle"):
        D.get_data("cifar10_synthetic", root=tmp_path, n_train=20, n_test=10)
    assert not marker.exists()


def _fake_mnist(root, monkeypatch):
    """A data root whose MNIST files are 3 fake images, with the md5 table patched to accept them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    import struct

    images = struct.pack(">IIII", 2051, 3, 28, 28) + bytes(3 * 784)
    labels = struct.pack(">II", 2049, 3) + bytes([1, 2, 3])
    files = {"train-images-idx3-ubyte": images, "train-labels-idx1-ubyte": labels,
             "t10k-images-idx3-ubyte": images, "t10k-labels-idx1-ubyte": labels}
    for name, blob in files.items():
        (raw / name).write_bytes(blob)
    table = {name: DM.md5_file(raw / name) for name in files}
    monkeypatch.setitem(DM.MNIST_LIKE, "mnist", ("MNIST", table, "MNIST"))


def test_a_model_trained_on_other_data_is_never_served_from_the_cache(tmp_path, monkeypatch):
    """The same config on the real MNIST files and on 3 fake images used to share a key (name and size only)."""
    cfg = recipes.mnist_configs(seeds=[0], methods=["none"], epochs=2, burn_in=1, width=8)[0]
    real = phase_key(cfg, "final")
    monkeypatch.setenv("REPSPEC_DATA", str(tmp_path / "fake"))
    _fake_mnist(tmp_path / "fake", monkeypatch)
    assert data_identity(cfg) != D.data_fingerprint(D.MNIST_MD5)
    assert phase_key(cfg, "final") != real and phase_key(cfg, "base") != phase_key(cfg, "base", "md5:real")


def test_the_attack_key_carries_the_test_sets_content():
    from repspec_utils.evaluation.robustness import _attack_key

    train, test = D.get_data("xor_noisy", seed=0)
    other = D.get_data("xor_noisy", seed=1)[1]
    k = lambda ds: _attack_key({"train": "m"}, "tangent", {}, 5, 0, ds, 200)[0]  # noqa: E731
    assert k(test) != k(other) and len(test.y) == len(other.y)


@pytest.mark.parametrize("changes, match", [
    ({"lam": "0.1"}, "lam must be a finite number, got '0.1'"),
    ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
    ({"seed": 2**70}, r"seed must lie in 0..4294967295"),
    ({"epochs": 20.5}, "epochs must be an integer, got 20.5"),
    ({"lr": math.inf}, "lr must be a finite number, got inf"),
    ({"backbone_lr_mult": -1.0}, "backbone_lr_mult must be >= 0"),
    ({"method_kwargs": {"bogus": 1}}, r"method 'rep' takes no method_kwargs, got \['bogus'\]"),
    ({"model": {"kind": "mlp", "widths": [2.5]}}, "every width must be a positive integer"),
])
def test_python_api_values_are_rejected_before_work(changes, match, monkeypatch):
    monkeypatch.setattr(D, "get_data", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data loaded")))
    cfg = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [8]}, method="rep", lam=0.1, epochs=4,
                      burn_in=2).replace(**changes)
    with pytest.raises(ValueError, match=match):
        validate(cfg)
    with pytest.raises(ValueError, match=match):
        train(cfg, progress=False)


def test_a_recipe_does_not_round_a_fractional_seed():
    with pytest.raises(ValueError, match="seed must be an integer, got 20.5"):
        recipes.mnist_configs(seeds=[20.5])
    with pytest.raises(ValueError, match="lam must be a finite number, got '0.1'"):
        recipes.mnist_configs(lams=["0.1"])


def test_an_mlp_too_large_for_memory_is_refused_before_allocation():
    cfg = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [100_000_000]}, epochs=2, burn_in=1)
    train_ds, _ = D.get_data("digits")
    with pytest.raises(ValueError, match=r"needs about .* GiB to train .* more than 3/4 of this machine"):
        make_model(cfg, train_ds)


@pytest.mark.parametrize("notebook, name, value", [
    ("fig4_mnist", "seeds", [100000000000000000000000]),
    ("fig4_mnist", "width", 100000000000),
    ("fig4_mnist", "n_attack", 1000000000),
    ("fig2_xor_distance", "widths", [100000000000]),
    ("appE_fashion_mnist", "n_attack", 10001),
])
def test_notebook_values_beyond_what_can_run_are_rejected(notebook, name, value):
    with pytest.raises(ValueError, match=f"parameter '{name}' = .* is out of range"):
        parameters.check_value(name, value, notebook=notebook)
    parameters.check_value("n_attack", 10000, notebook="fig4_mnist")  # the whole test set is fine


class _NaNModel(torch.nn.Module):
    def __init__(self, after: int = 0):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.calls, self.after = 0, after

    def forward(self, x):
        self.calls += 1
        out = self.lin(x)
        return out * float("nan") if self.calls > self.after else out


@pytest.mark.parametrize("attack", [
    lambda m, x, y: tangent_attack(m, x, y, (-2.0, 2.0), T=2),
    lambda m, x, y: fmn_attack(m, x, y, (-2.0, 2.0), steps=3),
    lambda m, x, y: pgd_linf(m, x, y, 0.1, (-2.0, 2.0), steps=2),
])
def test_attacks_raise_on_non_finite_logits(attack):
    x, y = torch.tensor([[0.5, 0.5], [-0.5, 0.2]]), torch.tensor([0, 1])
    with pytest.raises(NonFiniteLogits, match="non-finite logits"):
        attack(_NaNModel(), x, y)
    with pytest.raises(NonFiniteLogits, match="non-finite logits"):
        attack(_NaNModel(after=1), x, y)  # finite at first, NaN on later queries


def test_precision_is_keyed_and_amp_cannot_disagree_with_it():
    cfg = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [8]}, epochs=2, burn_in=1)
    assert phase_key(cfg, "final", "d") != phase_key(cfg.replace(precision="bf16"), "final", "d")
    with pytest.raises(ValueError, match="amp=True contradicts cfg.precision='fp32'"):
        train(cfg, progress=False, amp=True)


def test_attacks_and_training_turn_tf32_off_and_restore_it():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        seen = []

        class Probe(torch.nn.Module):
            def forward(self, x):
                seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
                return torch.stack([x[:, 0], -x[:, 0]], 1)

        pgd_linf(Probe(), torch.tensor([[0.5, 0.1]]), torch.tensor([0]), 0.1, (-2.0, 2.0), steps=1)
        assert seen and all(s == (False, False) for s in seen)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
        with full_fp32_matmuls():
            assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_training_defaults_to_fp32_with_tf32_off():  # pragma: no cover - runs where there is a GPU
    cfg = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [8]}, epochs=2, burn_in=1)
    res = train(cfg, progress=False, device="cuda", use_cache=False)
    assert res.config.precision == "fp32" and all(p.dtype == torch.float32 for p in res.model.parameters())


def test_the_manifest_records_the_datas_fingerprint(tmp_path):
    from repspec_utils.infra import notebook as nbk

    train, test = D.get_data("xor_noisy", seed=0)
    rec = nbk.record(tmp_path, data_sources=[train, test])
    assert rec["data_fingerprints"] == {train.source: train.identity} and train.identity.startswith("tensors:")
