"""The offline text encoder and the caption bank."""

from __future__ import annotations

import pytest
import torch

from difflab.text import CaptionBank, TextEncoder, captions


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(max_length=12)


def test_captions_follow_labels():
    assert "a photo of a sneaker" in captions(7)
    assert "a pair of trousers" in captions(1)
    with pytest.raises(ValueError, match="label 10 is outside the 10 captioned classes"):
        captions(10)


def test_encoder_shapes_and_semantics(encoder):
    ctx, mask = encoder.encode(["a photo of a sneaker", "a photo of a sandal", "a pair of trousers", ""])
    assert ctx.shape == (4, 12, 384) and mask.shape == (4, 12) and mask.dtype == torch.bool
    assert mask[3].sum() == 2  # [CLS] [SEP]
    pooled = torch.nn.functional.normalize((ctx * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2]  # footwear is closer to footwear than to trousers
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("a sneaker")


def test_caption_bank_lookup(encoder):
    bank = CaptionBank(encoder)
    labels = torch.tensor([7, 7, 1, 10])
    ctx, mask = bank.lookup(labels, torch.Generator().manual_seed(0))
    assert ctx.shape == (4, 12, 384) and mask[3].sum() == 2
    ref, _ = encoder.encode([""])
    torch.testing.assert_close(ctx[3], ref[0])
    # every looked-up caption embedding is one of its class's captions
    own, _ = encoder.encode(captions(1))
    assert min(float((ctx[2] - o).abs().max()) for o in own) < 1e-5
    with pytest.raises(ValueError, match="labels must be in \\[0, 10\\]"):
        bank.lookup(torch.tensor([11]))
