"""ControlNet, control hints, edge F1 and SDXL micro-conditioning."""

import pytest
import torch

from difflab import nn as dl_nn
from difflab.data import hints
from difflab.denoiser import Denoiser
from difflab.guidance import cfg
from difflab.metrics import edge_f1
from difflab.nn import ControlledUNet, ControlNet, UNet
from difflab.nn.embeddings import MicroConditioning
from difflab.schedules import DiscreteVP

DDPM = DiscreteVP.ddpm_linear()


def _unet(**kw):
    args = dict(
        in_channels=1,
        channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        image_size=8,
        head_channels=16,
        num_classes=3,
    )
    args.update(kw)
    torch.manual_seed(0)
    net = UNet(**args)
    with torch.no_grad():  # as if trained: the zero-initialised output layers are no longer zero
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _inputs(b=4, size=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 1, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g).float()
    y = torch.tensor([0, 1, 2, 3])[:b]  # 3 = the null label
    hint = (torch.rand(b, 1, size, size, generator=g) > 0.7).float()
    return x, t, y, hint


def test_a_fresh_controlnet_leaves_the_base_output_unchanged_bit_for_bit():
    base = _unet()
    cn = ControlNet.from_unet(base)
    x, t, y, hint = _inputs()
    with torch.no_grad():
        ref = base(x, t, y)
        out = ControlledUNet(base, cn)(x, t, y, hint=hint)
        two = ControlledUNet(base, [cn, ControlNet.from_unet(base)], scales=[1.0, 2.5])(x, t, y, hint=[hint, hint])
    assert torch.equal(out, ref) and torch.equal(two, ref)
    # the copy starts from the base's encoder weights, under the same names
    sd, cd = base.state_dict(), cn.state_dict()
    enc = [k for k in sd if k.split(".")[0] in ("temb", "label", "inp", "down", "mid")]
    assert enc and all(torch.equal(sd[k], cd[k]) for k in enc)
    assert not any(k.startswith(("up.", "out.")) for k in cd)


def test_zero_convolutions_get_gradients_first_then_the_copy():
    # Zhang et al. 2023, Sec. 3.1: with W = 0, dL/dW = dL/dy * features != 0, while everything
    # behind a zero convolution gets no gradient until the zero convolutions have moved
    base = _unet().requires_grad_(False)
    cn = ControlNet.from_unet(base)
    net = ControlledUNet(base, cn)
    x, t, y, hint = _inputs()
    opt = torch.optim.SGD(cn.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        net(x, t, y, hint=hint).pow(2).mean().backward()

    step()
    zero = [p for m in (*cn.zero_convs, cn.mid_zero) for p in m.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in zero)
    zero_ids = {id(p) for p in zero}
    rest = [p for p in cn.parameters() if id(p) not in zero_ids]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in rest)
    assert all(p.grad is None for p in base.parameters())  # the base stays frozen
    opt.step()
    step()
    copy_grads = [p.grad.abs().sum() for n, p in cn.named_parameters() if n.startswith("down.")]
    assert sum(float(g) for g in copy_grads) > 0
    assert cn.hint.layers[-1].weight.grad.abs().sum() > 0  # the hint encoder's zero conv learns next


def _trained_pair():
    base = _unet()
    cn = ControlNet.from_unet(base)
    with torch.no_grad():
        for p in cn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return base, cn


def test_control_scale_and_several_controlnets_sum():
    base, cn1 = _trained_pair()
    _, cn2 = _trained_pair()
    x, t, y, hint = _inputs()
    with torch.no_grad():
        d1, m1 = cn1(x, t, hint, y=y)
        d2, m2 = cn2(x, t, 1 - hint, y=y)
        both = ControlledUNet(base, [cn1, cn2], scales=[0.5, 2.0])(x, t, y, hint=[hint, 1 - hint])
        manual = base(
            x, t, y, down_residuals=[0.5 * a + 2.0 * b for a, b in zip(d1, d2)], mid_residual=0.5 * m1 + 2.0 * m2
        )
        assert torch.allclose(both, manual, atol=1e-6)
        assert not torch.allclose(both, base(x, t, y))
        assert torch.equal(ControlledUNet(base, cn1, scales=0.0)(x, t, y, hint=hint), base(x, t, y))
        assert torch.equal(ControlledUNet(base, cn1)(x, t, y, hint=None), base(x, t, y))


def test_cfg_keeps_the_control_in_both_branches_and_guess_mode_drops_it_from_the_unconditional():
    base, cn = _trained_pair()
    x, t, y, hint = _inputs()
    y = torch.tensor([0, 1, 2, 0])
    net = ControlledUNet(base, cn)
    den = Denoiser(net, DDPM)
    tt = torch.full((4,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        guided = cfg(den, 2.0, null={"y": 3})(x, tt, y=y, hint=hint)
        c, u = den(x, tt, y=y, hint=hint), den(x, tt, y=torch.full_like(y, 3), hint=hint)
        assert torch.allclose(guided, c + 2.0 * (c - u), atol=1e-5)
        gnet = ControlledUNet(base, cn, guess_mode=True)
        gden = Denoiser(gnet, DDPM)
        guided = cfg(gden, 2.0, null={"y": 3, "hint": None})(x, tt, y=y, hint=hint)
        c, u = gden(x, tt, y=y, hint=hint), gden(x, tt, y=torch.full_like(y, 3))
        assert torch.allclose(guided, c + 2.0 * (c - u), atol=1e-5)
        # guess mode: the ControlNet sees no label, residuals weighted 0.1 .. 1
        d, m = cn(x, t, hint)
        w = torch.logspace(-1, 0, len(d) + 1)
        ref = base(x, t, y, down_residuals=[r * wi for r, wi in zip(d, w)], mid_residual=m * w[-1])
        assert torch.allclose(gnet(x, t, y, hint=hint), ref, atol=1e-6)


def test_controlnet_bad_input():
    base = _unet()
    cn = ControlNet.from_unet(base)
    x, t, y, hint = _inputs()
    net = ControlledUNet(base, cn)
    with pytest.raises(ValueError, match=r"hints of shape \(4, 1, 8, 8\).*got \(4, 1, 16, 16\)"):
        net(x, t, y, hint=torch.zeros(4, 1, 16, 16))
    with pytest.raises(ValueError, match="1 channel"):
        net(x, t, y, hint=torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="one hint per ControlNet"):
        net(x, t, y, hint=[hint, hint])
    other = _unet(channels=32)
    with pytest.raises(ValueError, match="built for another U-Net.*channels"):
        ControlledUNet(other, cn)
    with pytest.raises(ValueError, match="power of 2"):
        ControlNet.from_unet(base, hint_size=12)


def test_controlnet_rebuilds_from_its_config_and_takes_larger_hints():
    base, cn = _trained_pair()
    again = dl_nn.build("controlnet", **cn.config)
    again.load_state_dict(cn.state_dict())
    x, t, y, hint = _inputs()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(cn(x, t, hint, y=y)[0], again(x, t, hint, y=y)[0]))
    big = ControlNet.from_unet(base, hint_size=32)  # two stride-2 convolutions: 32 -> 8
    d, _m = big(x, t, torch.zeros(4, 1, 32, 32), y=y)
    assert [r.shape for r in d] == [s.shape for s in cn(x, t, hint, y=y)[0]]


# --- micro-conditioning -----------------------------------------------------------------------
def test_micro_conditioning_embeddings_are_deterministic_and_distinct():
    torch.manual_seed(0)
    mc = MicroConditioning(64, 32)
    vals = torch.tensor(
        [
            [28, 28, 0, 0, 28, 28],
            [28, 28, 2, 0, 28, 28],
            [28, 28, 0, 2, 28, 28],
            [20, 28, 0, 0, 28, 28],
            [28, 20, 0, 0, 28, 28],
            [28, 28, 0, 0, 20, 28],
            [40, 40, 6, 6, 28, 28],
        ],
        dtype=torch.float32,
    )
    f = mc.features(vals)
    assert torch.equal(f, mc.features(vals.clone()))  # deterministic
    e = mc(vals)
    d = torch.cdist(e, e) + torch.eye(len(vals))
    assert (torch.cdist(f, f) + torch.eye(len(vals)) > 1e-3).all() and (d > 1e-4).all()  # pairwise distinct
    assert not torch.allclose(mc(vals[[3]]), mc(vals[[4]]))  # the slots are told apart: (20, 28) != (28, 20)
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        mc(vals[:, :4])


def test_micro_conditioning_is_opt_in_and_reaches_the_output():
    plain = UNet(in_channels=1, channels=16, channel_mults=(1, 2), num_res_blocks=1, image_size=8)
    assert "micro_conditioning" not in plain.config and not any("micro" in k for k in plain.state_dict())
    net = _unet(micro_conditioning=True)
    assert net.config["micro_conditioning"] is True
    x, t, y, _ = _inputs()
    with torch.no_grad():
        native = torch.tensor([[8.0, 8, 0, 0, 8, 8]]).expand(4, 6)
        assert torch.equal(net(x, t, y), net(x, t, y, micro_cond=native))  # the default: uncropped, native size
        cropped = torch.tensor([[12.0, 12, 2, 3, 8, 8]]).expand(4, 6)
        assert not torch.allclose(net(x, t, y, micro_cond=cropped), net(x, t, y))
    again = dl_nn.build("unet", **net.config)
    again.load_state_dict(net.state_dict())
    with pytest.raises(ValueError, match="without micro_conditioning"):
        plain(x, t, micro_cond=native)
    # a ControlNet copies the micro-conditioning too
    cn = ControlNet.from_unet(net)
    assert any(k.startswith("micro.") for k in cn.state_dict())


# --- hints and edge F1 -----------------------------------------------------------------------
def _step_image():
    img = -torch.ones(2, 1, 16, 16)
    img[:, :, :, 8:] = 1.0  # a vertical step between columns 7 and 8
    img[1] = -1.0
    img[1, :, 4:12, 4:12] = 1.0  # a bright square
    img[1, :, 6:10, 6:10] = -1.0  # with a hole
    return img


def test_edges_are_thin_and_at_the_step():
    e = hints.edges(_step_image())
    assert e.shape == (2, 1, 16, 16) and set(e.unique().tolist()) <= {0.0, 1.0}
    cols = e[0, 0].sum(0)
    assert cols[7:9].sum() == 16 and cols.sum() == 16  # one pixel wide, every row
    s = hints.sobel(_step_image())
    assert float(s[0].max()) == 1.0 and (s[0, 0, :, :6] == 0).all()
    ring = hints.edges(_step_image())[1, 0]
    assert ring[4:12, 4:12].sum() > 0 and ring[:3].sum() == 0


def test_silhouette_fills_holes():
    m = hints.silhouette(_step_image())[1, 0]
    assert m[4:12, 4:12].sum() == 64 and m.sum() == 64
    with pytest.raises(ValueError, match="unknown hint"):
        hints.hint("depth", _step_image())


def test_edge_f1():
    e = hints.edges(_step_image())
    assert torch.equal(edge_f1(e, e), torch.ones(2))
    shifted = torch.roll(e, 1, dims=3)
    assert edge_f1(e, shifted, tolerance=1)[0] == 1 and edge_f1(e, shifted, tolerance=0)[0] == 0
    half = e.clone()
    half[0, 0, 8:] = 0  # half the hint's edges: precision 1, recall 1/2
    assert torch.isclose(edge_f1(e, half, tolerance=0)[0], torch.tensor(2 / 3))
    assert torch.isclose(edge_f1(e, half)[0], torch.tensor(18 / 25))  # row 8 is within 1 px of row 7: recall 9/16
    assert edge_f1(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)) == 1
