"""The LDM KL autoencoder (Rombach et al. 2022, Sec. 3.1), its latent scale, and the patch discriminator."""

import json

import pytest
import torch

from difflab import nn as dl_nn
from difflab.nn.autoencoder import AutoencoderKL, DiagonalGaussian
from difflab.nn.discriminator import PatchDiscriminator


def _ae(**kw) -> AutoencoderKL:
    args = dict(in_channels=1, latent_channels=3, channels=16, channel_mults=(1, 2), num_res_blocks=1, groups=8)
    args.update(kw)
    torch.manual_seed(0)
    return AutoencoderKL(**args)


@pytest.mark.parametrize("mults,f", [((1, 2), 2), ((1, 2, 2), 4)])
def test_shapes_and_factor(mults, f):
    ae = _ae(channel_mults=mults)
    assert ae.factor == f
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    post = ae.encode(x)
    assert post.mean.shape == (2, 3, 28 // f, 28 // f) == (2, *ae.latent_shape((1, 28, 28)))
    rec, post = ae(x)
    assert rec.shape == x.shape
    assert ae.decode_latents(ae.encode_latents(x)).shape == x.shape


def test_kl_is_the_closed_form_gaussian_kl():
    m = torch.randn(3, 4, 2, 2)
    logvar = torch.randn(3, 4, 2, 2)
    q = DiagonalGaussian(torch.cat([m, logvar], 1))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(q.kl(), ref.flatten(1).sum(1))
    # reparameterised samples have the posterior's mean and standard deviation
    g = torch.Generator().manual_seed(0)
    z = DiagonalGaussian(torch.cat([m[:1], logvar[:1]], 1).expand(4000, 8, 2, 2)).sample(g)
    torch.testing.assert_close(z.mean(0), m[0], rtol=0.0, atol=0.1 * float((0.5 * logvar).exp().max()))
    torch.testing.assert_close(z.std(0), (0.5 * logvar[0]).exp(), rtol=0.06, atol=0.0)


def test_stored_scale_gives_unit_variance_latents():
    """LDM's scale_by_std: 1/std of the data's latents, stored with the weights."""
    ae = _ae()
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    s = ae.compute_scale(x, batch_size=20, sample=False)
    assert s == pytest.approx(1 / ae.encode(x).mode().double().std().item(), rel=1e-5)
    z = ae.encode_latents(x, sample=False)
    assert z.double().std().item() == pytest.approx(1.0, rel=1e-5)
    # saved with the weights, rebuilt from the config
    clone = dl_nn.build("autoencoder_kl", **json.loads(json.dumps(ae.config)))
    clone.load_state_dict(ae.state_dict())
    assert float(clone.scale_factor) == pytest.approx(s)
    torch.testing.assert_close(clone.decode_latents(z), ae.decode_latents(z))
    # from posterior samples (LDM's choice), over an iterable of batches: by the law of total
    # variance, Var z = Var(mean) + E[posterior variance] (an untrained encoder's is ~1)
    s2 = ae.compute_scale([x[:32], x[32:]], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        post = ae.encode(x)
    total = post.mean.double().var() + post.logvar.double().exp().mean()
    assert s2 == pytest.approx(float(total) ** -0.5, rel=0.02)


def test_bad_input():
    ae = _ae(channel_mults=(1, 2, 2))
    with pytest.raises(
        ValueError, match="image size 30x30 is not divisible by the autoencoder's downsampling factor f = 4"
    ):
        ae.encode(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"takes images \(1, H, W\)"):
        ae.encode(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"expected latents \(B, 3, h, w\)"):
        ae.decode(torch.zeros(1, 4, 7, 7))
    with pytest.raises(ValueError, match="invalid autoencoder shape"):
        AutoencoderKL(channel_mults=())


def test_patch_discriminator():
    x = torch.randn(4, 1, 28, 28)
    d = PatchDiscriminator(1, channels=8, n_layers=2)
    assert d(x).shape == (4, 1, 5, 5)  # 28 -> 14 -> 7 -> 6 -> 5 patch logits
    assert PatchDiscriminator(3, channels=8, n_layers=3)(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    dt = PatchDiscriminator(1, channels=8, n_layers=2, norm="group", time_embedding="sinusoidal").eval()
    with torch.no_grad():
        for p in dt.t_proj.parameters():
            p.normal_()
    a, b = dt(x, torch.full((4,), 10.0)), dt(x, torch.full((4,), 900.0))
    assert a.shape == (4, 1, 5, 5) and not torch.allclose(a, b)
    # group norm: a sample's logits do not depend on the rest of the batch
    torch.testing.assert_close(dt(x[:1], torch.full((1,), 10.0)), a[:1])
    with pytest.raises(ValueError, match="pass t"):
        dt(x)
    with pytest.raises(ValueError, match="not time-conditioned"):
        d(x, torch.zeros(4))
    with pytest.raises(ValueError, match="norm must be one of"):
        PatchDiscriminator(norm="layer")
    json.dumps(dt.config)
