"""Training: bad input fails before work, burn-in is shared, interrupted runs resume exactly, caches rebuild."""

from pathlib import Path

import pytest
import torch

from repspec_utils import training
from repspec_utils.infra import cache
from repspec_utils.training import TrainConfig, loop, train
from repspec_utils.training.ensemble import train_batched

DIGITS = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [32]}, method="rep", lam=0.1,
                     lr=0.5, batch_size=128, epochs=6, burn_in=3, seed=1)
XOR = TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [8]}, method="rep", lam=1e-3, lr=1.0,
                  batch_size=4, epochs=200, burn_in=120, seed=400)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"dataset": "imagenet21k"}, "unknown dataset"),
        ({"model": {"kind": "transformer"}}, "unknown model kind"),
        ({"method": "spectral"}, "unknown method"),
        ({"lam": -1e-3}, "lam"),
        ({"burn_in": 6}, "burn_in"),
        ({"burn_in": 9}, "burn_in"),
        ({"model": {"kind": "mlp", "widths": [0]}}, "width"),
        ({"batch_size": 0}, "batch_size"),
        ({"augment": "mixup"}, "augment"),
    ],
)
def test_bad_config_fails_before_any_work(changes, match, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(loop, "get_data", no_data)
    with pytest.raises(ValueError, match=match):
        train(DIGITS.replace(**changes), progress=False)
    if changes.get("model", {}).get("kind", "mlp") == "mlp" and "augment" not in changes:
        with pytest.raises(ValueError, match=match):  # the batched engine checks the same things first
            train_batched([DIGITS.replace(**changes)], progress=False)


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_interrupted_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "a"))
    reference = train(DIGITS, progress=False)

    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "b"))
    for stop_at in (2, 5):  # once inside the burn-in, once inside the branch

        def interrupt(epoch, stop_at=stop_at):
            if epoch == stop_at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train(DIGITS, progress=False, checkpoint_every_s=0, on_epoch_end=interrupt)
    epochs_run = []
    resumed = train(DIGITS, progress=False, checkpoint_every_s=0, on_epoch_end=epochs_run.append)
    # interrupted during epoch 5's callback, i.e. before its checkpoint: only epochs 5 and 6 are redone
    assert epochs_run == [5, 6]
    for a, b in zip(_weights(reference.model), _weights(resumed.model)):
        assert torch.equal(a, b)
    assert list(resumed.history["epoch"]) == list(range(1, 7))


def test_methods_branch_from_the_same_burn_in_and_are_cached():
    calls = []
    results = {m: train(DIGITS.replace(method=m), progress=False, on_epoch_end=calls.append)
               for m in ("none", "ll", "rep")}
    assert calls == [1, 2, 3, 4, 5, 6, 4, 5, 6, 4, 5, 6], "burn-in must run once and be shared"
    burn = [r.history[r.history.epoch <= 3].drop(columns="epoch_time").reset_index(drop=True) for r in results.values()]
    for b in burn[1:]:
        assert b.equals(burn[0])
    # the penalty lowers the top singular value of the hidden layer against the unregularised branch
    sig = {m: r.history["sigma_0"].iloc[-1] for m, r in results.items()}
    assert sig["rep"] < sig["none"] and sig["ll"] < sig["none"]
    again = train(DIGITS.replace(method="rep"), progress=False, on_epoch_end=calls.append)
    assert len(calls) == 12, "a cached model must not retrain"
    for a, b in zip(_weights(results["rep"].model), _weights(again.model)):
        assert torch.equal(a, b)


def test_corrupt_cache_entry_is_rebuilt_not_loaded():
    first = train(DIGITS, progress=False)
    path = cache.cache_root() / "train" / first.key / "final.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="checksum"):
        rebuilt = train(DIGITS, progress=False)
    for a, b in zip(_weights(first.model), _weights(rebuilt.model)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", [{}, {"schedule": "reference", "bias_scaled": True}],
                         ids=["repspec", "authors"])
def test_batched_engine_matches_single_runs_on_full_batch_xor(variant):
    """Both engines train the same nets: this package's earlier MLP and schedule, and the authors' (issue 26:
    the bias scaled with the readout; None one continuous run of E + 1 epochs, the others E + 2)."""
    base = XOR.replace(schedule=variant.get("schedule", "repspec"),
                       model={**XOR.model, **({"bias_scaled": True} if variant.get("bias_scaled") else {})})
    cfgs = [base.replace(method=m, weight_decay=wd) for m in ("none", "ll", "rep") for wd in (0.0, 1e-4)]
    batched = train_batched(cfgs, progress=False)
    x = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    for cfg, res in zip(cfgs, batched):
        single = train(cfg, progress=False)
        torch.testing.assert_close(res.model(x), single.model(x), rtol=1e-3, atol=1e-4)
        assert res.history["epoch"].max() == single.history["epoch"].max()


def test_batched_engine_resumes_exactly_with_minibatches(tmp_path, monkeypatch):
    cfgs = [XOR.replace(dataset="xor_noisy", batch_size=20, epochs=30, burn_in=20, method=m) for m in ("none", "rep")]
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "a"))
    reference = train_batched(cfgs, progress=False)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "b"))
    for stop_at in (10, 25):

        def interrupt(epoch, stop_at=stop_at):
            if epoch == stop_at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train_batched(cfgs, progress=False, checkpoint_every_s=0, on_epoch_end=interrupt)
    resumed = train_batched(cfgs, progress=False, checkpoint_every_s=0)
    for r, s in zip(reference, resumed):
        for a, b in zip(_weights(r.model), _weights(s.model)):
            assert torch.equal(a, b)


def test_rep_only_penalises_feature_layers_in_batched_engine():
    cfg = XOR.replace(lam=0.05)
    none, rep, ll = train_batched([cfg.replace(method=m) for m in ("none", "rep", "ll")], progress=False)
    last = lambda r, c: r.history[c].iloc[-1]  # noqa: E731
    assert last(rep, "sigma_0") < last(none, "sigma_0")
    assert last(ll, "sigma_1") < last(rep, "sigma_1"), "ll-spectral also shrinks the readout"


def test_cifar_augment_is_a_crop_and_flip():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = training.cifar_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # every output is a shifted (maybe flipped) window of the zero-padded input
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        found = any(torch.equal(out[i], w) for dy in range(9) for dx in range(9)
                    for w in (padded[:, dy:dy + 32, dx:dx + 32], padded[:, dy:dy + 32, dx:dx + 32].flip(-1)))
        assert found


def test_mlp_forward_is_readout_of_features():
    from repspec_utils.models import MLP

    for widths in ([7], [7, 6]):
        m = MLP(5, widths, 3, seed=0, init_std=0.5).double()
        x = torch.randn(4, 5, dtype=torch.float64)
        torch.testing.assert_close(m(x), m.readout(m.features(x)), rtol=0, atol=1e-12)


def test_amp_path_trains_and_keeps_the_penalty_in_full_precision():
    """The bfloat16 autocast path (precision 'bf16') also runs on the CPU: it must learn and still regularise."""
    cfg = DIGITS.replace(model={"kind": "mlp", "widths": [32], "init_std": 0.1}, epochs=20, burn_in=15,
                         precision="bf16")
    rep = train(cfg, progress=False, use_cache=False, amp=True)
    none = train(cfg.replace(method="none"), progress=False, use_cache=False)
    assert rep.history["train_acc"].iloc[-1] > 0.3  # chance is 0.1
    assert all(p.dtype == torch.float32 for p in rep.model.parameters())
    assert rep.history["sigma_0"].iloc[-1] < 0.9 * none.history["sigma_0"].iloc[-1]


def test_compute_ledger_counts_a_shared_burn_in_once_and_keeps_original_times():
    cache.reset_compute()
    results = {m: train(DIGITS.replace(method=m), progress=False) for m in ("none", "rep")}
    first = cache.compute_summary()
    assert first["train"]["entries"] == 2 and first["burn-in"]["entries"] == 1  # one shared burn-in
    total = first["train"]["seconds"] + first["burn-in"]["seconds"]
    walls = [r.wall_time for r in results.values()]
    burn = first["burn-in"]["seconds"]
    assert 0 < burn < min(walls) and total == pytest.approx(sum(walls) - burn)
    cache.reset_compute()
    for m in ("none", "rep"):  # loaded from the cache: the same, original, times
        train(DIGITS.replace(method=m), progress=False)
    assert cache.compute_summary() == first


def test_divergence_stops_training_names_the_run_and_caches_nothing():
    """issue 12 item 3: a non-finite loss or weight (lr 1e4) stops with the config, epoch and step; no entry."""
    with pytest.raises(training.TrainingDiverged, match=r"diverged .* at epoch \d+(, step \d+)? of the (burn-in|branch) "
                                                  r"of digits rep seed 1 \(lr=10000") as info:
        train(DIGITS.replace(lr=1e4), progress=False)
    assert not list((cache.cache_root() / "train").rglob("final.pt"))
    if "of the burn-in" in str(info.value):  # a burn-in that stayed finite is a valid checkpoint and may be cached
        assert not list((cache.cache_root() / "train").rglob("burn_in.pt"))


def test_divergence_in_the_batched_engine_names_the_member():
    cfgs = [XOR.replace(lr=1e6, lam=1e6, method=m) for m in ("none", "rep")]
    with pytest.raises(training.TrainingDiverged, match=r"diverged .* of xor (none|rep) seed 400"):
        train_batched(cfgs, progress=False)
    assert not list((cache.cache_root() / "train").rglob("final.pt"))


def test_stale_temporaries_of_killed_writers_are_removed_when_the_cache_opens(tmp_path, monkeypatch):
    """issue 12 item 8: kill -9 during an atomic write leaves '.<name>.<random>.tmp'; the first use of the cache
    folder in a process removes those older than files.STALE_TMP_SECONDS, and leaves a live writer's alone."""
    import os
    import subprocess
    import sys
    import time

    from repspec_utils.infra import files

    root = tmp_path / "killed"
    # a real killed writer: a child process opens an atomic write, then is killed with SIGKILL mid-write
    code = ("import os, signal, sys; from repspec_utils.infra.files import atomic_path\n"
            f"with atomic_path({str(root / 'train' / 'k' / 'final.pt')!r}) as tmp:\n"
            "    tmp.write_bytes(b'half'); print(tmp, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    stale = Path(proc.stdout.strip())
    assert proc.returncode == -9 and stale.exists() and stale.name.startswith(".final.pt.")
    old = time.time() - files.STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    live = root / "attacks" / ".abc.pt.x1y2.tmp"  # a writer still at work: recent
    live.parent.mkdir(parents=True)
    live.write_bytes(b"writing")
    monkeypatch.setenv("REPSPEC_CACHE", str(root))
    assert cache.cache_root() == root
    assert not stale.exists() and live.exists()
    assert not (root / "train" / "k" / "final.pt").exists()  # and the half-written entry never appeared
