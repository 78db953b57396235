"""Networks: shapes, conditioning, learned variance, zero-initialised residual branches, config rebuild."""

import pytest
import torch

from difflab import nn as dnn


def test_mlp_shapes_and_labels():
    m = dnn.MLP(dim=2, width=32, depth=2, num_classes=3, out_dim=4)
    x, t = torch.randn(5, 2), torch.rand(5)
    assert m(x, t).shape == (5, 4)
    assert m(x, t, y=torch.tensor([0, 1, 2, 0, 1])).shape == (5, 4)
    assert m(x, torch.tensor(0.3)).shape == (5, 4)  # scalar time


def test_unet_shapes_conditioning():
    u = dnn.UNet(
        in_channels=3,
        channels=16,
        channel_mults=(1, 2),
        num_res_blocks=(1, 2),
        attention_resolutions=(4,),
        image_size=8,
        head_channels=8,
        num_classes=10,
        context_dim=6,
        learned_variance=True,
        time_embedding="fourier",
    )
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    ctx = torch.randn(2, 5, 6)
    out = u(x, t, y=torch.tensor([3, 4]), context=ctx, context_mask=torch.tensor([[1, 1, 1, 0, 0]] * 2))
    assert out.shape == (2, 6, 8, 8)
    with pytest.raises(ValueError, match="context"):
        u(x, t)


def test_unet_residual_branches_start_at_identity():
    """Zero-initialised last convs: at init the output is zero and the blocks are identities."""
    u = dnn.UNet(1, 16, (1, 2), 1, attention_resolutions=(8,), image_size=16)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(u(x, torch.rand(2) * 999), torch.zeros_like(x))


def test_unet_gradients_and_label_effect():
    u = dnn.UNet(1, 16, (1, 2), 1, image_size=8, num_classes=2)
    for p in u.parameters():  # leave the zero init so that the label can matter
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 10.0)
    a, b = u(x, t, y=torch.tensor([0, 0])), u(x, t, y=torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    a.square().mean().backward()
    assert all(p.grad is not None for p in u.parameters() if p.requires_grad and p is not u.label.weight)


def test_build_from_config():
    u = dnn.UNet(1, 16, (1, 2), 1, image_size=8)
    v = dnn.build("unet", **u.config)
    v.load_state_dict(u.state_dict())
    assert dnn.count_parameters(u) == dnn.count_parameters(v)
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        dnn.build("resnet")
    with pytest.raises(ValueError, match="bad arguments for network 'unet'"):
        dnn.build("unet", chanels=3)
    with pytest.raises(ValueError, match="attention_resolutions"):
        dnn.UNet(1, 16, (1, 2), 1, attention_resolutions=(3,), image_size=8)
    with pytest.raises(ValueError, match="240 channels cannot be split into heads of 32"):
        dnn.UNet(1, 48, (1, 3, 5), 1, attention_resolutions=(8,), image_size=32, head_channels=32)


def _gain_error(input_skip: bool, steps: int = 100) -> float:
    """Fit a small U-Net to the eps target at the last step (x_t is pure noise there, so eps = x_t)
    on noise of random amplitude a in [e^-0.7, e^0.7]; return the rms over fresh inputs of the
    per-sample gain error <out, x> / <x, x> - 1."""
    torch.manual_seed(0)
    u = dnn.UNet(1, 16, (1, 2), 1, image_size=16, groups=8, input_skip=input_skip)
    opt = torch.optim.Adam(u.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)

    def inputs(n: int) -> torch.Tensor:
        return torch.randn(n, 1, 16, 16, generator=g) * torch.empty(n, 1, 1, 1).uniform_(-0.7, 0.7, generator=g).exp()

    for _ in range(steps):
        x = inputs(32)
        loss = (u(x, torch.full((32,), 999.0)) - x).square().mean() / x.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = inputs(256)
    with torch.no_grad():
        out = u(x, torch.full((256,), 999.0))
    gain = (out * x).flatten(1).sum(1) / x.flatten(1).square().sum(1)
    return float((gain - 1).square().mean().sqrt())


def test_unet_input_skip_makes_the_noise_gain_exact():
    """GroupNorm divides each sample's amplitude out, so a plain U-Net returns eps_hat = x_t with
    a gain that varies with the amplitude of x_t (the defect behind noisy samples from x_T of
    above-average norm, benchmarks/train_quality.py); the learned input skip makes the gain exact."""
    plain, skip = _gain_error(False), _gain_error(True)
    assert skip < 0.2 * plain, (skip, plain)
    assert skip < 0.005, skip


def test_unet_input_skip_acts_on_the_prediction_channels_only():
    """With learned variances the skip adds c_skip(t) * x to the mean channels and leaves the
    variance-interpolation channels alone; zero-initialised, it changes nothing at first."""
    torch.manual_seed(0)
    u = dnn.UNet(2, 16, (1, 2), 1, image_size=8, groups=8, learned_variance=True, input_skip=True)
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([10.0, 500.0, 999.0])
    with torch.no_grad():
        base = u(x, t)
        assert base.abs().max() == 0  # both the head and the skip start at zero
        u.c_skip.bias.fill_(0.5)
        u.out[-1].bias.fill_(0.25)
        out = u(x, t)
    torch.testing.assert_close(out[:, :2], 0.25 + 0.5 * x)
    torch.testing.assert_close(out[:, 2:], torch.full_like(x, 0.25))
    rebuilt = dnn.build("unet", **u.config)
    assert rebuilt.c_skip is not None and rebuilt.config == u.config
