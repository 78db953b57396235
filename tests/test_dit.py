"""DiT (Peebles & Xie 2023): adaLN-Zero initialisation, patchify, position embedding, conditioning."""

import pytest
import torch
import torch.nn.functional as F

from difflab import nn as dl_nn
from difflab.nn.dit import DiT, patchify, sincos_pos_embed_2d, unpatchify


def _tiny(**kw) -> DiT:
    args = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=3, num_heads=4)
    args.update(kw)
    torch.manual_seed(0)
    return DiT(**args)


def _batch(n=4, c=3, s=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, c, s, s, generator=g), torch.randint(0, 1000, (n,), generator=g).float()


def test_fresh_dit_outputs_exactly_zero():
    x, t = _batch()
    for kw in ({}, {"num_classes": 5}, {"learned_variance": True}, {"context_dim": 6}):
        net = _tiny(**kw)
        cond = {"context": torch.randn(4, 7, 6)} if "context_dim" in kw else {}
        out = net(x, t, **cond)
        assert out.shape == (4, 6 if kw.get("learned_variance") else 3, 8, 8)
        assert torch.equal(out, torch.zeros_like(out)), kw


def _grads(net: DiT, x, t, y) -> dict[str, float]:
    net.zero_grad(set_to_none=True)
    F.mse_loss(net(x, t, y=y), torch.randn_like(x, generator=None)).backward()
    return {n: (0.0 if p.grad is None else float(p.grad.abs().sum())) for n, p in net.named_parameters()}


def test_adaln_zero_gradients_at_init_and_after_one_step():
    """At initialisation everything upstream of the zeroed final linear layer is cut off, so only
    that layer gets a gradient; one optimizer step later the gradient reaches every block's
    adaLN modulation (the paper's reason the zero-initialised blocks still train)."""
    torch.manual_seed(0)
    net = _tiny(num_classes=5)
    x, t = _batch()
    y = torch.tensor([0, 1, 2, 5])
    g0 = _grads(net, x, t, y)
    nonzero = {n for n, v in g0.items() if v > 0}
    assert nonzero == {"final_layer.linear.weight", "final_layer.linear.bias"}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    opt.step()
    g1 = _grads(net, x, t, y)
    for i in range(3):
        for p in ("weight", "bias"):
            assert g1[f"blocks.{i}.adaLN_modulation.{p}"] > 0, (i, p)
    assert g1["final_layer.adaLN_modulation.weight"] > 0 and g1["x_embedder.weight"] > 0
    # the blocks are still identities (gates at zero): nothing inside them, nor c's embeddings, yet
    for name in ("blocks.0.attn.qkv.weight", "blocks.2.mlp.0.weight", "y_embedder.weight", "t_embedder.1.weight"):
        assert g1[name] == 0, name
    opt.step()  # the gates open: now every parameter gets a gradient
    g2 = _grads(net, x, t, y)
    assert {n for n, v in g2.items() if v == 0} == set()


def test_patchify_round_trip_and_layout():
    x = torch.randn(2, 3, 8, 12)
    p = 4
    tok = patchify(x, p)
    assert tok.shape == (2, 2 * 3, p * p * 3)
    assert torch.equal(unpatchify(tok, p, 3, 2, 3), x)
    tok2 = torch.randn(2, 6, p * p * 3)
    assert torch.equal(patchify(unpatchify(tok2, p, 3, 2, 3), p), tok2)
    # token (row 0, column 1) holds pixels [0:4, 4:8], flattened (row, column, channel)
    assert torch.equal(tok[:, 1], x[:, :, 0:4, 4:8].permute(0, 2, 3, 1).reshape(2, -1))


def test_patch_embedding_is_the_papers_strided_convolution():
    """A Linear on patchify(x) = Conv2d(kernel = stride = p) with the weight laid out (row, col, channel)."""
    net = _tiny()
    x, _ = _batch()
    w = net.x_embedder.weight.reshape(32, 2, 2, 3).permute(0, 3, 1, 2)
    conv = F.conv2d(x, w, net.x_embedder.bias, stride=2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(net.x_embedder(patchify(x, 2)), conv, rtol=1e-5, atol=1e-5)


def test_sincos_position_embedding():
    """MAE's 2-D embedding: the first half of the channels depends only on the column, the second
    half only on the row, each [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k/(D/4))."""
    D, G = 16, 5
    pe = sincos_pos_embed_2d(D, G).reshape(G, G, D)  # (row, column, channel)
    assert torch.allclose(pe[:, :, : D // 2], pe[:1, :, : D // 2].expand(G, G, D // 2))
    assert torch.allclose(pe[:, :, D // 2 :], pe[:, :1, D // 2 :].expand(G, G, D // 2))
    w = 10000.0 ** (-torch.arange(D // 4) / (D // 4))
    col = 3.0
    torch.testing.assert_close(pe[0, 3, : D // 2], torch.cat([torch.sin(col * w), torch.cos(col * w)]))
    assert len({tuple(v.tolist()) for v in pe.reshape(G * G, D)}) == G * G  # every position distinct


def test_null_label_and_config_rebuild():
    net = _tiny(num_classes=5)
    with torch.no_grad():  # make the network non-trivial
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = _batch()
    assert torch.equal(net(x, t), net(x, t, y=torch.full((4,), 5)))
    assert not torch.allclose(net(x, t, y=torch.zeros(4, dtype=torch.long)), net(x, t))
    clone = dl_nn.build("dit", **net.config)
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone(x, t, y=torch.arange(4)), net(x, t, y=torch.arange(4)))
    import json

    json.dumps(net.config)


def test_cross_attention_mask():
    net = _tiny(context_dim=6)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = _batch()
    ctx = torch.randn(4, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 4)
    ctx2 = ctx.clone()
    ctx2[:, 3:] = 100.0  # padding tokens, masked out
    torch.testing.assert_close(net(x, t, context=ctx, context_mask=mask), net(x, t, context=ctx2, context_mask=mask))
    assert not torch.allclose(net(x, t, context=ctx), net(x, t, context=ctx2))


def test_sizes_table():
    net = DiT(input_size=4, patch_size=2, in_channels=1, size="XS")
    assert (net.config["depth"], net.config["hidden_size"], net.config["num_heads"]) == (6, 256, 4)
    assert DiT(input_size=4, patch_size=2, in_channels=1, depth=1).config["hidden_size"] == 384  # S by default


def test_bad_input():
    with pytest.raises(ValueError, match="input_size 28 is not divisible by patch_size 3"):
        DiT(input_size=28, patch_size=3, size="T")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        DiT(input_size=8, hidden_size=36, num_heads=5, depth=1)
    with pytest.raises(ValueError, match="unknown DiT size 'M'"):
        DiT(size="M")
    with pytest.raises(ValueError, match="not both"):
        DiT(size="S", hidden_size=64)
    net = _tiny()
    with pytest.raises(ValueError, match=r"expects inputs \(B, 3, 8, 8\), got \(2, 3, 16, 16\)"):
        net(torch.zeros(2, 3, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="pass context"):
        _tiny(context_dim=4)(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="not divisible by the patch size 3"):
        patchify(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match="bad arguments for network 'dit'"):
        dl_nn.build("dit", patch=2)
