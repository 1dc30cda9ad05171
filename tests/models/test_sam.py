"""SAM prompt encoder and two-way transformer: official-SAM semantics and parity with HF transformers."""
import math

import pytest
import torch
from torch import nn

from escnet.models.sam import LayerNorm2d, PromptEncoder, TwoWayTransformer
from escnet.weights.sam import to_hf_sam

C, GRID, CANVAS = 256, (24, 24), (384, 384)


def _randomise_norms(module: nn.Module, seed: int) -> nn.Module:
    """Default inits leave norms at weight 1 / bias 0, which would hide swapped or missing norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.LayerNorm, LayerNorm2d)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return module


@pytest.fixture(scope="module")
def prompt_encoder():
    torch.manual_seed(0)
    return _randomise_norms(PromptEncoder(C, GRID, CANVAS, mask_in_chans=16), 1).eval()


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(0)
    return _randomise_norms(TwoWayTransformer(depth=2, embedding_dim=C, num_heads=8, mlp_dim=2048), 2).eval()


def _points(n=3):
    g = torch.Generator().manual_seed(3)
    coords = torch.rand(n, 4, 2, generator=g) * 383
    labels = torch.tensor([[1, 0, -1, 1], [0, 0, 1, -1], [-1, -1, -1, -1]])[:n]
    return coords, labels


def _hf_prompt_encoder(ours: PromptEncoder):
    modeling_sam = pytest.importorskip("transformers.models.sam.modeling_sam")
    from transformers import SamConfig

    cfg = SamConfig(vision_config=dict(num_pos_feats=C // 2),
                    prompt_encoder_config=dict(hidden_size=C, image_size=CANVAS[0], patch_size=CANVAS[0] // GRID[0],
                                               mask_input_channels=16))
    hf = modeling_sam.SamPromptEncoder(cfg)
    prefix = "prompt_encoder."
    sd = to_hf_sam({prefix + k: v for k, v in ours.state_dict().items()})
    hf.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True)
    return hf.eval()


def test_sparse_and_dense_match_hf(prompt_encoder):
    hf = _hf_prompt_encoder(prompt_encoder)
    coords, labels = _points()
    masks = torch.randn(3, 1, 96, 96)
    with torch.no_grad():
        sparse, dense = prompt_encoder(points=(coords, labels), masks=masks)
        hf_sparse, hf_dense = hf(coords[:, None], labels[:, None], None, masks)  # HF has a point-batch axis
        _, no_mask = prompt_encoder(points=(coords, labels))
        _, hf_no_mask = hf(coords[:, None], labels[:, None], None, None)
    assert sparse.shape == (3, 5, C) and dense.shape == (3, C, *GRID)
    torch.testing.assert_close(sparse, hf_sparse[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(dense, hf_dense, atol=1e-4, rtol=0)
    torch.testing.assert_close(no_mask, hf_no_mask, atol=0, rtol=0)


def test_dense_pe_matches_hf(prompt_encoder):
    hf = _hf_prompt_encoder(prompt_encoder)
    h, w = GRID
    # HF's SamModel.get_image_wide_positional_embeddings: pixel-centre grid in [0, 1], (x, y) order.
    grid = torch.stack(torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h, indexing="xy"), -1)
    with torch.no_grad():
        ref = hf.shared_embedding(grid).permute(2, 0, 1)[None]
        ours = prompt_encoder.get_dense_pe()
    assert ours.shape == (1, C, h, w)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_point_embedding_follows_sam_formulas(prompt_encoder):
    """Reference written from SAM's formulas: +0.5 shift, /input size, [sin, cos](2 pi (2p - 1) G)."""
    coords, labels = _points()
    with torch.no_grad():
        sparse = prompt_encoder.embed_points(coords, labels, pad=True)
    g = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    x, y = coords[0, 0]
    p = torch.stack([(x + 0.5) / CANVAS[1], (y + 0.5) / CANVAS[0]])
    proj = 2 * math.pi * ((2 * p - 1) @ g)
    pe = torch.cat([proj.sin(), proj.cos()])
    torch.testing.assert_close(sparse[0, 0], pe + prompt_encoder.point_embeddings[1].weight[0], atol=1e-4, rtol=0)
    x, y = coords[0, 1]
    p = torch.stack([(x + 0.5) / CANVAS[1], (y + 0.5) / CANVAS[0]])
    proj = 2 * math.pi * ((2 * p - 1) @ g)
    pe = torch.cat([proj.sin(), proj.cos()])
    torch.testing.assert_close(sparse[0, 1], pe + prompt_encoder.point_embeddings[0].weight[0], atol=1e-4, rtol=0)
    # not-a-point: positional encoding zeroed, only the learned embedding, wherever the point is
    nap = prompt_encoder.not_a_point_embed.weight[0]
    for i, j in [(0, 2), (0, 4), (1, 3), (2, 0), (2, 3), (2, 4)]:
        torch.testing.assert_close(sparse[i, j], nap, atol=0, rtol=0)


def test_padding_and_prompt_counts(prompt_encoder):
    coords, labels = _points(2)
    boxes = torch.tensor([[10.0, 20.0, 100.0, 200.0], [0.0, 0.0, 383.0, 383.0]])
    with torch.no_grad():
        no_box, _ = prompt_encoder(points=(coords, labels))
        with_box, _ = prompt_encoder(points=(coords, labels), boxes=boxes)
        empty, dense = prompt_encoder(points=None)
    assert no_box.shape == (2, 5, C)  # one not-a-point pad without boxes
    assert with_box.shape == (2, 6, C)  # no pad, two box corners
    torch.testing.assert_close(no_box[:, :4], with_box[:, :4])
    assert empty.shape == (1, 0, C) and dense.shape == (1, C, *GRID)
    torch.testing.assert_close(dense[0, :, 5, 7], prompt_encoder.no_mask_embed.weight[0])
    assert prompt_encoder.no_mask_dense(4).shape == (4, C, *GRID)
    assert prompt_encoder.embed_masks(torch.zeros(2, 1, 96, 96)).shape == (2, C, *GRID)


def test_bad_shapes_name_the_problem(prompt_encoder, transformer):
    with pytest.raises(ValueError, match=r"masks must be \(N, 1, 96, 96\).*\(2, 1, 48, 48\)"):
        prompt_encoder.embed_masks(torch.zeros(2, 1, 48, 48))
    with pytest.raises(ValueError, match="points must be"):
        prompt_encoder.embed_points(torch.zeros(2, 3, 2), torch.zeros(2, 4, dtype=torch.long), pad=True)
    with pytest.raises(ValueError, match=r"image_embedding must be \(N, 256, h, w\)"):
        transformer(torch.zeros(1, 128, 4, 4), torch.zeros(1, 128, 4, 4), torch.zeros(1, 3, 128))


def test_two_way_transformer_matches_hf(transformer):
    modeling_sam = pytest.importorskip("transformers.models.sam.modeling_sam")
    from transformers import SamMaskDecoderConfig

    # Official SAM's norm1..norm4 are nn.LayerNorm with the default eps 1e-5; HF's default
    # layer_norm_eps is 1e-6. We implement the official value, so HF is configured to match it.
    assert all(m.eps == 1e-5 for m in transformer.modules() if isinstance(m, nn.LayerNorm))
    cfg = SamMaskDecoderConfig(hidden_size=C, num_hidden_layers=2, num_attention_heads=8, mlp_dim=2048,
                               attention_downsample_rate=2, layer_norm_eps=1e-5)
    cfg._attn_implementation = "eager"  # standalone HF module: no model-level dispatch sets it
    hf = modeling_sam.SamTwoWayTransformer(cfg).eval()
    prefix = "mask_decoder.transformer."
    sd = to_hf_sam({f"transformer.{k}": v for k, v in transformer.state_dict().items()}
                   | {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.zeros(2, C // 2)})
    hf.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True)

    torch.manual_seed(4)
    n, p = 2, 10
    image, pe, tokens = torch.randn(n, C, *GRID), torch.randn(1, C, *GRID), torch.randn(n, p, C)
    with torch.no_grad():
        q, k = transformer(image, pe, tokens)
        hq, hk = hf(tokens[:, None], image, pe.expand(n, -1, -1, -1), attention_similarity=None)
    assert q.shape == (n, p, C) and k.shape == (n, GRID[0] * GRID[1], C)
    assert (q - hq[:, 0]).abs().max() < 1e-4
    assert (k - hk[:, 0]).abs().max() < 1e-4


def test_expanded_image_embedding_equals_materialised_copy():
    torch.manual_seed(5)
    n, dim = 4, 64
    transformer = _randomise_norms(TwoWayTransformer(depth=2, embedding_dim=dim, num_heads=4, mlp_dim=128), 6).eval()
    image = torch.randn(1, dim, *GRID).expand(n, -1, -1, -1)
    assert image.stride(0) == 0
    tokens = torch.randn(n, 7, dim)
    pe = torch.randn(1, dim, *GRID)
    with torch.no_grad():
        q_view, k_view = transformer(image, pe, tokens)
        q_copy, k_copy = transformer(image.contiguous(), pe, tokens)
    torch.testing.assert_close(q_view, q_copy, atol=1e-6, rtol=0)
    torch.testing.assert_close(k_view, k_copy, atol=1e-6, rtol=0)
