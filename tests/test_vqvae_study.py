"""The VQ-VAE study (seeds/001): vqvae_study128 / vqvae_study_tiny, ResNet-18 with torchvision's names
(resnet.py) and the perceptual loss (perceptual.py), through t2i train / encode / eval."""
import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from t2i_data.errors import T2IError
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.runner import InProcessRunner
from t2i_models.builders import CONFIGS, build_autoencoder
from t2i_models.checkpoint import load_autoencoder
from t2i_models.cli import main
from t2i_models.perceptual import PerceptualLoss
from t2i_models.resnet import ResNet18, load_resnet18
from t2i_models.train_autoencoder import TrainConfig, train

from fixtures_sources import make_coco

# torchvision.models.resnet18().state_dict(): names, in order, and shapes, transcribed from
# pytorch/vision torchvision/models/resnet.py (commit f50e776b: ResNet.__init__ conv1 7x7/2 64, bn1,
# _make_layer(BasicBlock, 64/128/256/512, 2) with downsample = Sequential(conv1x1(stride), norm) when
# the stride or width changes, fc Linear(512, 1000); BasicBlock conv1, bn1, relu, conv2, bn2, downsample;
# convs bias=False; BatchNorm2d buffers running_mean, running_var, num_batches_tracked).
TORCHVISION_RESNET18 = """
conv1.weight 64x3x7x7
bn1.weight 64
bn1.bias 64
bn1.running_mean 64
bn1.running_var 64
bn1.num_batches_tracked ()
layer1.0.conv1.weight 64x64x3x3
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.bn1.running_mean 64
layer1.0.bn1.running_var 64
layer1.0.bn1.num_batches_tracked ()
layer1.0.conv2.weight 64x64x3x3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.0.bn2.running_mean 64
layer1.0.bn2.running_var 64
layer1.0.bn2.num_batches_tracked ()
layer1.1.conv1.weight 64x64x3x3
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.bn1.running_mean 64
layer1.1.bn1.running_var 64
layer1.1.bn1.num_batches_tracked ()
layer1.1.conv2.weight 64x64x3x3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer1.1.bn2.running_mean 64
layer1.1.bn2.running_var 64
layer1.1.bn2.num_batches_tracked ()
layer2.0.conv1.weight 128x64x3x3
layer2.0.bn1.weight 128
layer2.0.bn1.bias 128
layer2.0.bn1.running_mean 128
layer2.0.bn1.running_var 128
layer2.0.bn1.num_batches_tracked ()
layer2.0.conv2.weight 128x128x3x3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.bn2.running_mean 128
layer2.0.bn2.running_var 128
layer2.0.bn2.num_batches_tracked ()
layer2.0.downsample.0.weight 128x64x1x1
layer2.0.downsample.1.weight 128
layer2.0.downsample.1.bias 128
layer2.0.downsample.1.running_mean 128
layer2.0.downsample.1.running_var 128
layer2.0.downsample.1.num_batches_tracked ()
layer2.1.conv1.weight 128x128x3x3
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.bn1.running_mean 128
layer2.1.bn1.running_var 128
layer2.1.bn1.num_batches_tracked ()
layer2.1.conv2.weight 128x128x3x3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer2.1.bn2.running_mean 128
layer2.1.bn2.running_var 128
layer2.1.bn2.num_batches_tracked ()
layer3.0.conv1.weight 256x128x3x3
layer3.0.bn1.weight 256
layer3.0.bn1.bias 256
layer3.0.bn1.running_mean 256
layer3.0.bn1.running_var 256
layer3.0.bn1.num_batches_tracked ()
layer3.0.conv2.weight 256x256x3x3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.bn2.running_mean 256
layer3.0.bn2.running_var 256
layer3.0.bn2.num_batches_tracked ()
layer3.0.downsample.0.weight 256x128x1x1
layer3.0.downsample.1.weight 256
layer3.0.downsample.1.bias 256
layer3.0.downsample.1.running_mean 256
layer3.0.downsample.1.running_var 256
layer3.0.downsample.1.num_batches_tracked ()
layer3.1.conv1.weight 256x256x3x3
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.bn1.running_mean 256
layer3.1.bn1.running_var 256
layer3.1.bn1.num_batches_tracked ()
layer3.1.conv2.weight 256x256x3x3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer3.1.bn2.running_mean 256
layer3.1.bn2.running_var 256
layer3.1.bn2.num_batches_tracked ()
layer4.0.conv1.weight 512x256x3x3
layer4.0.bn1.weight 512
layer4.0.bn1.bias 512
layer4.0.bn1.running_mean 512
layer4.0.bn1.running_var 512
layer4.0.bn1.num_batches_tracked ()
layer4.0.conv2.weight 512x512x3x3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.bn2.running_mean 512
layer4.0.bn2.running_var 512
layer4.0.bn2.num_batches_tracked ()
layer4.0.downsample.0.weight 512x256x1x1
layer4.0.downsample.1.weight 512
layer4.0.downsample.1.bias 512
layer4.0.downsample.1.running_mean 512
layer4.0.downsample.1.running_var 512
layer4.0.downsample.1.num_batches_tracked ()
layer4.1.conv1.weight 512x512x3x3
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.bn1.running_mean 512
layer4.1.bn1.running_var 512
layer4.1.bn1.num_batches_tracked ()
layer4.1.conv2.weight 512x512x3x3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
layer4.1.bn2.running_mean 512
layer4.1.bn2.running_var 512
layer4.1.bn2.num_batches_tracked ()
fc.weight 1000x512
fc.bias 1000
"""


def torchvision_shapes() -> dict:
    out = {}
    for line in TORCHVISION_RESNET18.strip().splitlines():
        name, shape = line.split()
        out[name] = () if shape == "()" else tuple(int(s) for s in shape.split("x"))
    return out


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's ImageNet normalisation


def reference_features(sd: dict, images: torch.Tensor) -> dict:
    """ResNet-18 in eval mode written with torch.nn.functional over the state dict only (He et al.
    2016 Table 1, torchvision's layout), on images in [0, 1]: the oracle for resnet.ResNet18."""
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            training=False, eps=1e-5)

    def block(t, p, stride):
        out = F.relu(bn(F.conv2d(t, sd[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
        out = bn(F.conv2d(out, sd[p + ".conv2.weight"], padding=1), p + ".bn2")
        if p + ".downsample.0.weight" in sd:
            t = bn(F.conv2d(t, sd[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1")
        return F.relu(out + t)

    t = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    feats = {}
    for i in range(1, 5):
        t = block(block(t, f"layer{i}.0", 1 if i == 1 else 2), f"layer{i}.1", 1)
        feats[f"layer{i}"] = t
    feats["fc"] = t.mean(dim=(2, 3)) @ sd["fc.weight"].t() + sd["fc.bias"]
    return feats


def random_resnet_state(seed: int = 0) -> dict:
    """A random-init ResNet-18 state dict whose BatchNorm statistics and affine terms are not the
    identity (so eval-mode BatchNorm is exercised)."""
    torch.manual_seed(seed)
    sd = ResNet18().state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith("running_mean") or k.endswith(".bias") and "bn" in k or k.endswith("downsample.1.bias"):
            sd[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith(".weight") and v.dim() == 1:
            sd[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
    return sd


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("resnet") / "resnet18-random.pth"
    torch.save(random_resnet_state(), path)
    return path


@pytest.fixture(scope="module")
def ae_images(tmp_path_factory):
    root = make_coco(tmp_path_factory.mktemp("coco") / "coco")
    out = tmp_path_factory.mktemp("img")
    preprocess(PreprocessConfig("coco", str(root), regime="ae", size=32, shard_size=2), out, InProcessRunner())
    return out / "val2017"


def rows(out, key="rec"):
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines() if '"split": "train"' in line]


# -- ResNet-18 ---------------------------------------------------------------------------------------
def test_resnet18_names_shapes_and_count_equal_torchvision():
    sd = ResNet18().state_dict()
    want = torchvision_shapes()
    assert len(want) == 122
    assert list(sd) == list(want)  # names and their order
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    assert sum(p.numel() for p in ResNet18().parameters()) == 11_689_512  # torchvision ResNet18_Weights meta num_params


def test_resnet18_features_equal_a_functional_reference(resnet_file):
    net, sha = load_resnet18(resnet_file)
    assert sha == hashlib.sha256(resnet_file.read_bytes()).hexdigest()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    sd = torch.load(resnet_file, weights_only=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    got = net.features(x, ("layer1", "layer2", "layer3", "layer4", "fc"))
    ref = reference_features(sd, x)
    assert [tuple(got[k].shape) for k in ref] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2), (2, 1000)]
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4)
    normalised = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(net(normalised), ref["fc"], rtol=1e-4, atol=1e-4)  # forward: torchvision's (normalised input)


@pytest.mark.parametrize("fault,named", [
    ("missing", "1 missing: fc.bias"),
    ("renamed", "1 missing: layer1.0.conv1.weight; 1 unexpected: layer1.0.conv_1.weight"),
    ("head", "2 mis-shaped: fc.bias (10,) (expected (1000,)), fc.weight (10, 512) (expected (1000, 512))"),
    ("resnet34", "12 unexpected: layer1.2.bn1.bias, layer1.2.bn1.num_batches_tracked"),
    ("prefixed", "122 missing"),
])
def test_resnet18_files_that_do_not_fit_are_refused_in_one_line(tmp_path, fault, named):
    sd = ResNet18().state_dict()
    if fault == "missing":
        del sd["fc.bias"]
    elif fault == "renamed":
        sd["layer1.0.conv_1.weight"] = sd.pop("layer1.0.conv1.weight")
    elif fault == "head":
        sd["fc.weight"], sd["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)
    elif fault == "resnet34":  # a third block in layer1, as ResNet-34 has
        sd.update({k.replace("layer1.1.", "layer1.2."): v for k, v in sd.items() if k.startswith("layer1.1.")})
    else:  # saved from a DataParallel wrapper
        sd = {"module." + k: v for k, v in sd.items()}
    path = tmp_path / "r.pth"
    torch.save(sd, path)
    with pytest.raises(T2IError) as e:
        load_resnet18(path)
    msg = str(e.value)
    assert named in msg and "\n" not in msg and "not a torchvision ResNet-18 state dict" in msg


def test_unreadable_resnet_files_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    torch.save({"fc.weight": [1, 2]}, tmp_path / "list.pth")
    for name, msg in (("absent.pth", "no such file"), ("junk.pth", "not a readable ResNet-18 state dict"),
                      ("list.pth", "holds no state dict")):
        with pytest.raises(T2IError, match=msg):
            load_resnet18(tmp_path / name)


# -- the perceptual loss -----------------------------------------------------------------------------
def test_perceptual_loss_is_zero_for_identical_images_and_differentiable_into_the_image_only(resnet_file):
    net, _ = load_resnet18(resnet_file)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss_fn = PerceptualLoss(net, {"layer2": 1.0, "fc": 0.5})
    loss_fn.train()  # a trainer's model.train() must not put the ResNet's BatchNorm in batch mode
    assert not loss_fn.net.training
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    assert float(loss_fn(x, x)) == 0.0
    recon = y.clone().requires_grad_(True)
    loss = loss_fn(recon, x)
    ref_x, ref_y = reference_features(before, x), reference_features(before, y)
    want = F.mse_loss(ref_y["layer2"], ref_x["layer2"]) + 0.5 * F.mse_loss(ref_y["fc"], ref_x["fc"])
    assert float(loss.detach()) > 0 and float(loss.detach()) == pytest.approx(float(want), rel=1e-4)
    loss.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0 and torch.isfinite(recon.grad).all()
    assert all(p.grad is None for p in net.parameters())
    with torch.no_grad():  # the gradient is a descent direction: a small step against it lowers the loss
        stepped = loss_fn((recon - 1e-2 * recon.grad / recon.grad.norm()).clamp(0, 1), x)
    assert float(stepped) < float(loss.detach())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics untouched too


# -- the study's VQ-VAE ------------------------------------------------------------------------------
def test_full_config_encodes_128_images_to_16x16_grids_and_has_the_layer_arithmetic_parameter_count():
    cfg = CONFIGS["vqvae_study128"]
    assert (cfg.image_size, cfg.stem_kernel, cfg.blocks, cfg.downsamples, cfg.hidden, cfg.vocab_size, cfg.grid) == (128, 7, 6, 3, 256, 512, 16)
    torch.manual_seed(0)
    m = build_autoencoder("vqvae_study128").eval()
    H, D, V, k = 256, 256, 512, 7
    conv3 = 9 * H * H  # bias-free 3x3 convs (followed by BatchNorm), the last of a block has a bias
    block = 4 * conv3 + H + 3 * 2 * H
    encoder = (k * k * 3 * H + H) + 3 * (block + H * H + H) + 3 * block + (H * D + D)  # stem, 3 down (1x1/2 skip), 3 same, 1x1 to D
    decoder = (D * H + H) + 3 * (block + 4 * H * H + H) + 3 * block + 2 * H + (k * k * H * 3 + 3)  # 3 up (2x2/2 skip), BN, 7x7 out
    n = sum(p.numel() for p in m.parameters())
    assert n == encoder + decoder + V * D == 29_656_323
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    tokens = m.encode(x)
    assert tokens.shape == (2, 16, 16) and tokens.dtype == torch.int64 and 0 <= int(tokens.min()) and int(tokens.max()) < 512
    with pytest.raises(ValueError, match=r"expected shape \('\*', 3, 128, 128\), got \(1, 3, 64, 64\)"):
        m.encode(torch.rand(1, 3, 64, 64))


def test_block_layout_follows_the_seed():
    m = build_autoencoder("vqvae_study128", image_size=32)  # the layout only: 32x32 keeps it cheap
    enc, dec = list(m.encoder), list(m.decoder)
    assert enc[0].kernel_size == (7, 7) and dec[-2][-1].kernel_size == (7, 7)
    assert [b.skip.__class__.__name__ for b in enc[1:7]] == ["Conv2d", "Identity"] * 3  # down, same, down, same, down, same
    assert [b.skip.__class__.__name__ for b in dec[1:7]] == ["Identity", "ConvTranspose2d"] * 3  # the mirror
    for b in enc[1:7] + dec[1:7]:  # four 3x3 convs, BatchNorm + ReLU between them
        kinds = [type(layer).__name__ for layer in b.body]
        assert kinds[1:] == ["BatchNorm2d", "ReLU", "Conv2d"] * 3 and all(c.kernel_size == (3, 3) for c in b.body[::3])
    x, sizes = torch.rand(1, 3, 32, 32), []
    for layer in enc:
        x = layer(x)
        sizes.append(x.shape[-1])
    assert sizes == [32, 16, 16, 8, 8, 4, 4, 4]


def test_eval_mode_tokens_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    m = build_autoencoder("vqvae_study_tiny")
    m.train()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    m(x)  # moves the running statistics off their start
    m.eval()
    assert torch.equal(m.encode(x[:1]), m.encode(x)[:1])
    assert m.decode(m.encode(x)).shape == (4, 3, 32, 32)


@pytest.mark.parametrize("loss", ["mse", "perceptual"])
def test_tiny_config_trains_with_either_loss_and_records_it(ae_images, resnet_file, tmp_path, loss):
    extra = dict(loss="perceptual", perceptual_weights=str(resnet_file), perceptual_layers={"layer2": 1.0, "fc": 0.01}) if loss == "perceptual" else {}
    out = tmp_path / loss
    res = train(TrainConfig(arch="vqvae_study_tiny", images=str(ae_images), out=str(out), steps=30, batch_size=4, num_workers=0, lr=3e-3,
                            log_every=1, grid_every=1000, **extra))
    rec = rows(out)
    assert len(rec) == 30 and sum(rec[-5:]) / 5 < 0.7 * sum(rec[:5]) / 5  # the loss it trains on falls
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["kind"] == "vqvae_study" and res["rec_loss"] == ck["rec_loss"]
    if loss == "mse":
        assert ck["rec_loss"] == {"loss": "mse"} and "mse" not in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    else:
        assert ck["rec_loss"] == {"loss": "perceptual", "layers": {"layer2": 1.0, "fc": 0.01}, "resnet18_file": "resnet18-random.pth",
                                  "resnet18_sha256": hashlib.sha256(resnet_file.read_bytes()).hexdigest()}
        assert all(m > 0 for m in rows(out, "mse"))  # the pixel MSE is reported beside the loss it trains on
        assert torch.equal(torch.load(resnet_file, weights_only=True)["fc.weight"], random_resnet_state()["fc.weight"])


@pytest.fixture(scope="module")
def trained(ae_images, resnet_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["-q", "train", "autoencoder", "arch=vqvae_study_tiny", f"images={ae_images}", f"out={out}", "steps=3", "batch_size=2",
                 "num_workers=0", "loss=perceptual", f"perceptual_weights={resnet_file}"]) == 0
    return out


def test_checkpoint_round_trip_encode_and_eval(trained, ae_images, tmp_path):
    model, ck = load_autoencoder(trained / "last.pt")
    assert type(model).__name__ == "VQVAEStudy" and not model.training and model.cfg == CONFIGS["vqvae_study_tiny"]
    again = build_autoencoder("vqvae_study_tiny")
    again.load_state_dict(ck["state_dict"])
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(model.encode(x), again.eval().encode(x))
    assert main(["-q", "encode", "--autoencoder", str(trained / "last.pt"), "--images", str(ae_images), "--out", str(tmp_path / "tok"),
                 "--workers", "0"]) == 0
    man = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    ae = man["autoencoder"]
    assert (ae["kind"], ae["grid"], ae["vocab_size"], ae["fingerprint"]) == ("vqvae_study", 8, 32, ck["fingerprint"])
    assert main(["-q", "eval", "autoencoder", "--autoencoder", str(trained / "last.pt"), "--images", str(ae_images),
                 "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["kind"] == "vqvae_study" and report["mse"] > 0 and (tmp_path / "ev" / "reconstructions.png").exists()


def test_wrong_uses_exit_2_with_one_line(ae_images, resnet_file, trained, tmp_path, capsys):
    bad = tmp_path / "resnet34ish.pth"
    sd = ResNet18().state_dict()
    sd["layer1.2.conv1.weight"] = sd["layer1.1.conv1.weight"]
    torch.save(sd, bad)
    base = ["train", "autoencoder", f"images={ae_images}", "steps=1", "num_workers=0"]
    cases = [
        (["arch=vqvae_study_tiny", "loss=perceptual"], "loss=perceptual needs perceptual_weights=PATH"),
        (["arch=vqvae_study_tiny", "loss=perceptual", f"perceptual_weights={tmp_path / 'absent.pth'}"], "no such file"),
        (["arch=vqvae_study_tiny", "loss=perceptual", f"perceptual_weights={bad}"], "1 unexpected: layer1.2.conv1.weight"),
        (["arch=vqvae_study_tiny", f"perceptual_weights={resnet_file}"], "only read with loss=perceptual"),
        (["arch=vqvae_study_tiny", "loss=l1"], "loss must be one of mse, perceptual"),
        (["arch=vqvae_study_tiny", "loss=perceptual", f"perceptual_weights={resnet_file}", 'perceptual_layers={"layer9": 1}'],
         "'layer9' not a ResNet-18 layer"),
        (["arch=vqvae_study_tiny", "loss=perceptual", f"perceptual_weights={resnet_file}", 'perceptual_layers={"layer2": 0}'],
         "weights must be finite numbers > 0"),
        (["arch=dvae_tiny", "loss=perceptual", f"perceptual_weights={resnet_file}"], "dvae_tiny is a dvae"),
        (["arch=vqvae_study_tiny", "model.downsamples=3"], "blocks (2)"),
        (["arch=vqvae_study_tiny", "model.stem_kernel=4"], "stem_kernel must be odd"),
        (["arch=vqvae_study128"], "vqvae_study128 takes 128x128"),
    ]
    for i, (args, msg) in enumerate(cases):
        assert main(base + args + [f"out={tmp_path / f'o{i}'}"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert msg in err and "Traceback" not in err and len(err.splitlines()) == 1, (args, err)
    # a resume with another reconstruction loss than the checkpoint's
    assert main(base + ["arch=vqvae_study_tiny", "steps=4", "batch_size=2", f"out={trained}"]) == 2
    err = capsys.readouterr().err
    assert "was trained with loss=perceptual, layers={'layer2': 1.0}" in err and "this run asks for loss=mse" in err


def test_the_study_pipeline_carries_the_full_settings_and_plans(tmp_path, monkeypatch, capsys):
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "pipelines" / "vqvae-study-128.toml"
    doc = tomllib.loads(path.read_text())
    cfg = TrainConfig(**doc["train_autoencoder"])
    arch = CONFIGS[cfg.arch]
    assert (arch.image_size, arch.grid, arch.hidden, arch.vocab_size, doc["preprocess"]["size"]) == (128, 16, 256, 512, 128)
    assert (cfg.loss, cfg.optimizer, cfg.lr, cfg.batch_size, cfg.steps) == ("mse", "adam", 2e-4, 128, 250_000)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "run", str(path), "--dry-run"]) == 0
    assert "5 stages" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # a dry run touches nothing


def test_nan_resnet_weights_stop_the_run_at_the_first_logged_loss(ae_images, tmp_path, capsys):
    """A ResNet-18 file with NaN weights loads (its names and shapes fit) but makes every
    perceptual loss NaN: the first logged row stops the run (train_common.append_metrics), exit 2."""
    sd = random_resnet_state()
    sd["fc.weight"] = torch.full_like(sd["fc.weight"], float("nan"))
    bad = tmp_path / "resnet18-nan.pth"
    torch.save(sd, bad)
    out = tmp_path / "nan"
    rc = main(["-q", "train", "autoencoder", "arch=vqvae_study_tiny", f"images={ae_images}", f"out={out}", "steps=5", "batch_size=4",
               "num_workers=0", "log_every=1", "ckpt_every=1", "grid_every=1000", "loss=perceptual", f"perceptual_weights={bad}",
               'perceptual_layers={"fc": 1.0}'])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "step 1: the train loss is nan" in err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and not (out / "last.pt").exists()
