"""Retrieval databases: exact neighbours against brute force, the query excluded, swapping,
saving, and the feature-network check."""

import pytest
import torch

from difflab.nn import UNet
from difflab.retrieval import RetrievalDatabase


def _db(index="hnsw", n=600, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    return RetrievalDatabase(emb, "fashion_mnist", labels, index=index), emb, labels


def _brute(emb, q, k):
    e = emb / emb.norm(dim=1, keepdim=True)
    qq = q / q.norm(dim=1, keepdim=True)
    return (qq @ e.T).topk(k, dim=1).indices


@pytest.mark.parametrize("index", ["hnsw", "exact", "brute"])
def test_search_finds_the_cosine_nearest_neighbours(index):
    db, emb, _ = _db(index)
    q = torch.randn(50, 16, generator=torch.Generator().manual_seed(5))
    ids, sims = db.search(q, 5)
    ref = _brute(emb, q, 5)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, ref)) / ref.numel()
    assert recall >= (0.98 if index == "hnsw" else 1.0)
    assert (sims[:, :-1] >= sims[:, 1:] - 1e-6).all()  # best first
    assert torch.allclose(sims, (db.embeddings[ids] * (q / q.norm(dim=1, keepdim=True))[:, None]).sum(-1), atol=1e-5)


def test_the_query_is_excluded_from_its_own_neighbours():
    db, emb, _ = _db("exact")
    own = torch.arange(40)
    ids, _ = db.search(emb[:40], 4, exclude=own)
    assert not (ids == own[:, None]).any()
    ref = _brute(emb, emb[:40], 5)[:, 1:]  # the first is the query itself
    assert torch.equal(ids, ref)
    ctx = db.context(emb[:40], 4, exclude=own)
    assert ctx.shape == (40, 4, 16) and torch.allclose(ctx.norm(dim=-1), torch.ones(40, 4))


def test_a_swapped_database_returns_only_its_entries_and_feeds_a_unet():
    db, _emb, labels = _db()
    one = db.subset(db.labels == 2)
    assert len(one) == int((labels == 2).sum()) and (one.labels == 2).all()
    ctx = one.random_context(8, 3, seed=1)
    members = one.embeddings
    assert all(((members - c).abs().sum(1) < 1e-6).any() for c in ctx.reshape(-1, 16))
    net = UNet(
        in_channels=1,
        channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        image_size=8,
        head_channels=16,
        context_dim=16,
    )
    out = net(torch.randn(8, 1, 8, 8), torch.zeros(8), context=ctx)
    assert out.shape == (8, 1, 8, 8)


def test_save_and_load_keep_the_index(tmp_path):
    db, emb, _ = _db()
    db.save(tmp_path / "db")
    assert (tmp_path / "db" / "index.faiss").is_file()
    again = RetrievalDatabase.load(tmp_path / "db")
    q = emb[:10] + 0.1
    assert torch.equal(db.search(q, 3)[0], again.search(q, 3)[0])
    assert again.feature == "fashion_mnist" and torch.equal(again.labels, db.labels)


def test_a_database_of_another_feature_network_is_an_error(tmp_path):
    db, _, _ = _db()
    db.check("fashion_mnist", db.checksum, 16)
    with pytest.raises(ValueError, match="built with the feature network 'fashion_mnist'.*trained with 'digits'"):
        db.check("digits")
    with pytest.raises(ValueError, match="weights"):
        db.check("fashion_mnist", "0123456789abcdef")
    with pytest.raises(ValueError, match="16-d embeddings"):
        db.check("fashion_mnist", dim=128)
    with pytest.raises(ValueError, match="besides the query"):
        db.search(torch.randn(1, 16), len(db), exclude=torch.tensor([0]))


def test_build_embeds_images_with_a_shipped_network():
    x = torch.rand(30, 1, 8, 8) * 2 - 1
    db = RetrievalDatabase.build(x, "digits", index="exact")
    assert db.dim == 128 and len(db) == 30 and db.checksum is not None
    ids, _ = db.search(db.embeddings[:5], 1)
    assert torch.equal(ids[:, 0], torch.arange(5))
