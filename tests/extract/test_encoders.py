from __future__ import annotations

from pathlib import Path

import pytest
import torch

from extract.encoders import ClipConfig, EncoderLoadError, SiglipConfig, build_encoder, pool_tokens
from tests.encoders import TINY_CLIP


def reference_tokens(cls_token: torch.Tensor, patches: torch.Tensor, k: int) -> torch.Tensor:
    """Independent computation: mean over each cell's bin of grid rows x cols, cells row by row.

    Bins are [floor(i*G/k), ceil((i+1)*G/k)): exact G/k blocks when k divides G."""
    b, n, c = patches.shape
    g = int(n**0.5)
    cells = []
    for row in range(k):
        for col in range(k):
            r0, r1 = row * g // k, -(-(row + 1) * g // k)
            c0, c1 = col * g // k, -(-(col + 1) * g // k)
            idx = [i * g + j for i in range(r0, r1) for j in range(c0, c1)]
            cells.append(patches[:, idx, :].mean(dim=1))
    return torch.stack([cls_token, *cells], dim=1)


@pytest.mark.parametrize(
    ("g", "k"), [(24, 1), (24, 2), (24, 3), (24, 4), (24, 24), (14, 3), (14, 5)]
)
def test_pool_tokens_matches_block_means(g: int, k: int) -> None:
    torch.manual_seed(k)
    cls_token, patches = torch.randn(2, 5), torch.randn(2, g * g, 5)
    out = pool_tokens(cls_token, patches, k)
    assert out.shape == (2, 1 + k * k, 5)
    torch.testing.assert_close(out, reference_tokens(cls_token, patches, k))


def test_pool_tokens_order_is_cls_then_row_major() -> None:
    # Patch value = its grid row; pooled 3x3 cells must read 0,0,0, 1,1,1, 2,2,2 (scaled).
    g = 6
    rows = torch.arange(g).repeat_interleave(g).float()
    cols = torch.arange(g).repeat(g).float()
    patches = torch.stack([rows, cols], dim=-1)[None]  # (1, 36, 2)
    out = pool_tokens(torch.full((1, 2), -1.0), patches, 3)
    assert out[0, 0].tolist() == [-1.0, -1.0]
    assert out[0, 1:, 0].tolist() == [0.5, 0.5, 0.5, 2.5, 2.5, 2.5, 4.5, 4.5, 4.5]
    assert out[0, 1:, 1].tolist() == [0.5, 2.5, 4.5] * 3


def test_pool_must_fit_grid() -> None:
    with pytest.raises(ValueError, match=r"does not fit the 24x24.*0..24 .*: \[1, 2, 3, 4, 6"):
        pool_tokens(torch.zeros(1, 4), torch.zeros(1, 576, 4), 25)
    assert pool_tokens(torch.ones(1, 4), torch.zeros(1, 576, 4), 0).shape == (1, 1, 4)


def test_siglip_tokens_are_pooler_output_plus_pooled_grid(tiny_siglip: Path) -> None:
    from transformers import SiglipVisionModel

    enc = build_encoder(SiglipConfig(pretrained=str(tiny_siglip), device="cpu"))
    assert (enc.image_size, enc.dim, enc.tokens_per_frame) == (384, 64, 10)
    pixels = torch.randint(0, 256, (2, 3, 384, 384), dtype=torch.uint8)
    tokens = enc.encode(pixels)
    # Independent: load the checkpoint directly, normalise with 0.5/0.5 by hand.
    model = SiglipVisionModel.from_pretrained(tiny_siglip).eval()
    with torch.no_grad():
        out = model(pixel_values=(pixels.float() / 255 - 0.5) / 0.5)
    want = reference_tokens(out.pooler_output, out.last_hidden_state, 3)
    torch.testing.assert_close(tokens, want, rtol=1e-4, atol=1e-4)
    assert not enc.module.training


def test_clip_tokens_are_class_token_plus_pooled_grid(tiny_clip: tuple[Path, Path]) -> None:
    import open_clip

    cfg_path, ckpt = tiny_clip
    enc = build_encoder(
        ClipConfig(model=TINY_CLIP, pretrained=str(ckpt), model_config=str(cfg_path), device="cpu")
    )
    assert (enc.image_size, enc.dim, enc.tokens_per_frame) == (224, 64, 10)
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    tokens = enc.encode(pixels)
    model = open_clip.create_model(TINY_CLIP, pretrained=str(ckpt)).eval()
    v = model.visual
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    x = (pixels.float() / 255 - mean) / std
    with torch.no_grad():  # open_clip's ViT forward written out, stopping after ln_post
        x = v.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = v.ln_pre(x + v.positional_embedding)
        h = v.ln_post(v.transformer(x))
    want = reference_tokens(h[:, 0], h[:, 1:], 3)
    torch.testing.assert_close(tokens, want, rtol=1e-4, atol=1e-4)


def test_missing_checkpoints_name_the_override(
    tmp_path: Path, tiny_clip: tuple[Path, Path]
) -> None:
    with pytest.raises(EncoderLoadError, match="encoder.pretrained"):
        build_encoder(SiglipConfig(pretrained=str(tmp_path / "nope")))
    with pytest.raises(EncoderLoadError, match="encoder.pretrained"):
        build_encoder(SiglipConfig(pretrained="google/siglip-large-patch16-384"))  # offline here
    with pytest.raises(EncoderLoadError, match="encoder.pretrained"):
        build_encoder(ClipConfig(model="ViT-B-16", pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(EncoderLoadError, match="encoder.model="):
        build_encoder(ClipConfig(model="ViT-Nope", pretrained=None))
