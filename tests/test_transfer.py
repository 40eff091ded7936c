"""Transfer learning: L2-SP and BSS against hand-computed values and gradients, the transfer datasets (split
files, clear errors), and a few finetuning steps of every method on the MNIST -> Fashion-MNIST stand-in."""

import numpy as np
import pytest
import torch

from repspec_utils import data, training
from repspec_utils.defences import transfer
from repspec_utils.experiments import recipes
from repspec_utils.method import penalties
from repspec_utils.models import MLP, resnet50_transfer


def _set(p, values):
    with torch.no_grad():
        p.copy_(torch.tensor(values, dtype=p.dtype))


# -------------------------------------------------------------------------------------------------- L2-SP
def _tiny_mlp():
    m = MLP(2, [2], 2, seed=0)
    _set(m.hidden[0].weight, [[1.0, 2.0], [3.0, 4.0]])
    _set(m.hidden[0].bias, [0.5, -0.5])
    _set(m.readout.weight, [[1.0, -1.0], [2.0, 0.0]])
    _set(m.readout.bias, [3.0, 0.0])
    return m


def test_l2sp_hand_computed_value_and_gradient():
    m = _tiny_mlp()
    ref = {"hidden.0.weight": torch.ones(2, 2), "hidden.0.bias": torch.zeros(2),
           "readout.weight": torch.full((2, 2), 9.0), "readout.bias": torch.full((2,), 9.0)}  # head refs unused
    pen = transfer.L2SP(m, ref, alpha=0.1, beta=0.01)
    # ‖w_S − w⁰_S‖² = (0 + 1 + 4 + 9) + (0.25 + 0.25) = 14.5;  ‖w_head‖² = (1 + 1 + 4 + 0) + (9 + 0) = 15
    value = pen.penalty()
    assert value.item() == pytest.approx(0.1 / 2 * 14.5 + 0.01 / 2 * 15)
    value.backward()
    torch.testing.assert_close(m.hidden[0].weight.grad, 0.1 * torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    torch.testing.assert_close(m.hidden[0].bias.grad, 0.1 * torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(m.readout.weight.grad, 0.01 * m.readout.weight.detach())
    torch.testing.assert_close(m.readout.bias.grad, 0.01 * m.readout.bias.detach())
    assert pen.state_dict() == {}


def test_l2sp_rejects_a_reference_that_does_not_fit():
    with pytest.raises(ValueError, match="hidden.0.bias"):
        transfer.L2SP(_tiny_mlp(), {"hidden.0.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="shape"):
        transfer.L2SP(_tiny_mlp(), {"hidden.0.weight": torch.ones(3, 2), "hidden.0.bias": torch.zeros(2)})


# ---------------------------------------------------------------------------------------------------- BSS
def test_bss_hand_computed_values():
    f = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # σ = (3, 1)
    assert transfer.BSS(k=1).penalty(f).item() == pytest.approx(1.0)
    assert transfer.BSS(k=2).penalty(f).item() == pytest.approx(10.0)
    g = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # σ = (√2, √2)
    assert transfer.BSS(k=1, eta=0.5).penalty(g).item() == pytest.approx(1.0)
    wide = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]])  # B < p: σ over the batch rank, (2, 0.5)
    assert transfer.BSS(k=1).penalty(wide).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="k=3"):
        transfer.BSS(k=3).penalty(f)
    with pytest.raises(ValueError, match="features"):
        transfer.BSS().penalty()


def test_bss_gradient_is_2_sigma_u_vT_of_the_smallest_singular_values():
    f = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    for k in (1, 2):
        f.grad = None
        transfer.BSS(k=k).penalty(f).backward()
        u, s, vh = torch.linalg.svd(f.detach(), full_matrices=False)
        want = sum(2 * s[i] * torch.outer(u[:, i], vh[i]) for i in range(4 - k, 4))
        torch.testing.assert_close(f.grad, want)


def test_factories_read_their_settings_and_reject_bad_ones():
    cfg = training.TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [5]}, method="bss", lam=0.01,
                            method_kwargs={"k": 2})
    model = training.make_model(cfg, data.get_data("digits")[0])
    x = torch.rand(2, 64)
    pen = penalties.make_penalty(cfg, model, x)
    assert isinstance(pen, transfer.BSS) and pen.k == 2 and pen.needs_features
    for bad, match in ((cfg.replace(lam=0.0), "lam"), (cfg.replace(reg_epoch_end_step=True), "epoch_end"),
                       (cfg.replace(method_kwargs={"kk": 1}), "kk")):
        with pytest.raises(ValueError, match=match):
            penalties.make_penalty(bad, model, x)
    l2 = cfg.replace(method="l2sp", lam=1.0, method_kwargs={"alpha": 0.01, "beta": 0.02})
    pen = penalties.make_penalty(l2, model, x)
    assert (pen.alpha, pen.beta) == (0.01, 0.02) and not pen.needs_features
    # w⁰ is the model as built from the config (seeded init here), not whatever the model holds now
    fresh = training.make_model(l2, data.get_data("digits")[0])
    assert all(torch.equal(p0, q) for (p, p0), q in zip(pen.shared, fresh.hidden[0].parameters()))
    with pytest.raises(ValueError, match="lam=1"):
        penalties.make_penalty(l2.replace(lam=0.1), model, x)


# ------------------------------------------------------------------------------------------------- data
def test_missing_dataset_folders_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("REPSPEC_DOGS_DIR", raising=False)
    monkeypatch.delenv("REPSPEC_INDOOR67_DIR", raising=False)
    cases = {"stanford_dogs": ["StanfordDogs/Images", "StanfordDogs/train_list.mat", "REPSPEC_DOGS_DIR"],
             "mit_indoor67": ["MITIndoor67/Images", "MITIndoor67/TrainImages.txt", "REPSPEC_INDOOR67_DIR"],
             "flowers102": ["flowers-102/jpg", "flowers-102/setid.mat", "download=True"]}
    for name, needles in cases.items():
        with pytest.raises(data.DataMissingError) as err:
            transfer.get_transfer_data(name, root=tmp_path)
        msg = str(err.value)
        for needle in needles:
            assert (str(tmp_path / needle) if "/" in needle else needle) in msg, (name, needle, msg)
    monkeypatch.setenv("REPSPEC_DOGS_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(data.DataMissingError, match="elsewhere"):
        transfer.get_transfer_data("stanford_dogs", root=tmp_path)


def test_missing_weights_files_say_where_they_looked(tmp_path):
    missing = tmp_path / "no_backbone.pt"
    with pytest.raises(FileNotFoundError, match="pretrain_standin_backbone") as err:
        transfer.build_standin_model(weights=str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        transfer.standin_finetune_config(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        resnet50_transfer(10, weights=tmp_path / "resnet50.pth")
    assert str(tmp_path / "resnet50.pth") in str(err.value)


def _fake_folder(root, classes, per_split):
    """A tiny dataset in the Dogs / Indoor layout: Images/<class>/<i>.png and the split lists."""
    from PIL import Image

    rng = np.random.default_rng(0)
    splits = {"train": [], "test": []}
    for c in classes:
        (root / "Images" / c).mkdir(parents=True)
        for split in splits:
            for i in range(per_split):
                rel = f"{c}/{split}{i}.png"
                Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(root / "Images" / rel)
                splits[split].append(rel)
    return splits


def test_split_folders_follow_the_official_lists(tmp_path, monkeypatch):
    from scipy.io import savemat

    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    indoor = tmp_path / "MITIndoor67"
    splits = _fake_folder(indoor, [f"scene{i:02d}" for i in range(67)], 1)
    (indoor / "TrainImages.txt").write_text("\n".join(splits["train"]) + "\n")
    (indoor / "TestImages.txt").write_text("\n".join(splits["test"]) + "\n")
    train_ds, test_ds = transfer.get_transfer_data("mit_indoor67", root=tmp_path, image_size=16)
    assert train_ds.x.shape == (67, 3, 16, 16) and test_ds.x.shape == (67, 3, 16, 16)
    assert train_ds.y.tolist() == list(range(67)) and train_ds.n_classes == 67
    assert 0 <= train_ds.x.min() and train_ds.x.max() <= 1 and "TrainImages.txt" in train_ds.source
    sub, _ = transfer.get_transfer_data("mit_indoor67", root=tmp_path, image_size=16, n_train=10, seed=1)
    assert len(sub) == 10 and set(sub.y.tolist()) < set(range(67))

    dogs = tmp_path / "dogs"
    splits = _fake_folder(dogs, [f"n{i:08d}-breed" for i in range(120)], 1)
    for split, fname in (("train", "train_list.mat"), ("test", "test_list.mat")):
        cells = np.empty((len(splits[split]), 1), dtype=object)
        cells[:, 0] = splits[split]
        savemat(dogs / fname, {"file_list": cells})
    train_ds, test_ds = transfer.get_transfer_data("stanford_dogs", folder=dogs, image_size=8)
    assert train_ds.x.shape == (120, 3, 8, 8) and train_ds.n_classes == 120 and "train_list.mat" in train_ds.source
    (dogs / "Images" / splits["test"][5]).unlink()
    with pytest.raises(data.DataMissingError, match="test_list.mat lists 120"):
        transfer.get_transfer_data("stanford_dogs", folder=dogs, image_size=8)


def test_cifar_resized_for_transfer(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_DATA", str(tmp_path))
    train_ds, test_ds = transfer.get_transfer_data("cifar10_synthetic", image_size=48, n_train=20, n_test=10)
    assert train_ds.x.shape == (20, 3, 48, 48) and len(test_ds) == 10
    assert train_ds.synthetic and "48px" in train_ds.source
    assert 0 <= train_ds.x.min() and train_ds.x.max() <= 1


def test_paper_recipes_validate():
    for name in transfer.TRANSFER_RECIPES:
        for method, lam in (("none", 0.0), ("rep", 0.01), ("ll", 0.01), ("bss", 0.001), ("l2sp", 1.0)):
            cfg = transfer.transfer_config(name, method, lam)
            training.validate(cfg)
            assert cfg.backbone_lr_mult == 0.2 and cfg.lr_schedule == "cosine" and cfg.batch_size == 64
            assert cfg.reg_epoch_end_step == (method in ("rep", "ll"))


# ---------------------------------------------------------------------------------------------- stand-in
def _need_mnist():
    for name, table in (("mnist", data.MNIST_MD5), ("fashion_mnist", data.FASHION_MNIST_MD5)):
        raw = data.mnist_raw_dir(name)
        if not all((raw / f).is_file() for f in table):
            pytest.skip(f"{name} raw files not in {raw}; run `bash scripts/fetch_data.sh`")


def test_standin_task_is_labelled_and_balanced():
    _need_mnist()
    train_ds, test_ds = transfer.transfer_standin(n_per_class=7, n_test=50, seed=3)
    assert train_ds.class_counts().tolist() == [7] * 10 and len(test_ds) == 50
    for ds in (train_ds, test_ds):
        assert ds.source.startswith(transfer.STANDIN_TAG) and "mnist" in ds.source
    again, _ = transfer.transfer_standin(n_per_class=7, n_test=50, seed=3)
    assert torch.equal(again.x, train_ds.x)
    with pytest.raises(ValueError, match="one of"):
        transfer.transfer_standin(target="mnist", source="mnist")


def test_finetuning_steps_on_the_standin(tmp_path, monkeypatch):
    _need_mnist()
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    path = transfer.pretrain_standin_backbone("mnist", widths=(32,), epochs=1, n_train=2000, batch_size=100,
                                              path=tmp_path / "backbone.pt", progress=False)
    blob = torch.load(path, weights_only=True)
    assert blob["pretrained_on"] == "mnist" and sorted(blob["state_dict"]) == ["hidden.0.bias", "hidden.0.weight"]
    w0 = blob["state_dict"]["hidden.0.weight"]
    runs = {}
    for method, lam, kw in (("none", 0.0, {}), ("l2sp", 1.0, {"alpha": 1.0, "beta": 0.01}), ("bss", 0.01, {}),
                            ("rep", 0.01, {})):
        cfg = transfer.standin_finetune_config(path, method, lam, n_per_class=10, n_test=100, epochs=3, burn_in=1,
                                               lr=0.05, batch_size=20, method_kwargs=kw)
        res = training.train(cfg, device="cpu", progress=False)
        assert res.data_source.startswith(transfer.STANDIN_TAG)
        h = res.history
        assert list(h.phase) == ["burn-in", method, method] and h.train_loss.notna().all()
        assert (h.penalty.iloc[1:] > 0).all() if method != "none" else (h.penalty == 0).all()
        runs[method] = res
    assert len({r.history.iloc[0]["train_loss"] for r in runs.values()}) == 1  # one shared burn-in
    dist = {m: (r.model.hidden[0].weight.detach() - w0).norm().item() for m, r in runs.items()}
    assert dist["l2sp"] < dist["none"]  # L2-SP pulls Φ towards the pretrained weights
    # the head is new: N(0, 1) per the recipe, seeded by the config's seed
    head = transfer.build_standin_model(weights=str(path), seed=0).readout.weight
    assert 0.6 < head.std().item() < 1.4 and torch.equal(head, transfer.build_standin_model(
        weights=str(path), seed=0).readout.weight)


# ------------------------------------------------------------------------------ real-image analog (issue 27)
def test_analog_transfer_on_a_conv_backbone(tmp_path, monkeypatch):
    _need_mnist()
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    path = transfer.pretrain_analog_backbone("mnist", width=4, blocks=1, epochs=1, n_train=512, batch_size=64,
                                             path=tmp_path / "conv.pt", progress=False)
    blob = torch.load(path, weights_only=True)  # plain tensors and data
    assert blob["format"] == "repspec-analog-backbone-v1" and blob["pretrained_on"] == "mnist"
    assert blob["spec"] == {"width": 4, "blocks": 1, "channels": 1, "stats": "mnist", "pad": 2}
    assert {"kind": "small_resnet", **blob["spec"]} == recipes.conv_model("mnist", 4, 1)  # Fig 6's net
    assert not any(k.startswith("readout.") for k in blob["state_dict"]) and "bn1.running_mean" in blob["state_dict"]
    model = transfer.build_analog_transfer_model(path, seed=1)
    for k, v in blob["state_dict"].items():  # Φ is the pretrained one, BatchNorm statistics included
        assert torch.equal(model.state_dict()[k], v), k
    head = model.readout.weight  # the new head: N(0, 1), seeded
    assert 0.5 < head.std().item() < 1.5 and torch.equal(head, transfer.build_analog_transfer_model(path, seed=1)
                                                        .readout.weight)
    train_ds, test_ds = transfer.transfer_standin(n_per_class=5, n_test=40, images=True)
    assert train_ds.x.shape == (50, 1, 28, 28) and train_ds.source.startswith(transfer.ANALOG_TRANSFER_TAG)
    assert "not the paper's ImageNet transfer" in test_ds.source
    cfgs = recipes.transfer_configs("analog", methods=("none", "rep"), seeds=[0], spectral_lams=[0.01],
                                    standin_weights=path, n_per_class=5, n_test=40, epochs=2, burn_in=1, lr=0.05,
                                    batch_size=25)
    res = [training.train(c, device="cpu", progress=False) for c in cfgs]
    assert [r.history.phase.tolist() for r in res] == [["burn-in", "none"], ["burn-in", "rep"]]
    assert res[1].history.penalty.iloc[1] > 0 and res[0].data_source.startswith(transfer.ANALOG_TRANSFER_TAG)
    assert {c.dataset for c in cfgs} == {"transfer_analog"}  # its own dataset name: never mixed with the MLP stand-in
    # a file that is not an analog backbone, and a missing one, are refused before any training
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a repspec-analog-backbone-v1 file"):
        transfer.build_analog_transfer_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="pretrain_analog_backbone"):
        transfer.analog_finetune_config(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="needs standin_weights"):
        recipes.transfer_configs("analog", seeds=[0])
    with pytest.raises(ValueError, match="pretrains on one of"):
        transfer.pretrain_analog_backbone("cifar10")
