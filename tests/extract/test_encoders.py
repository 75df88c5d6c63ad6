from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from extract.encoders import (
    ClipConfig,
    EncoderLoadError,
    Siglip2Config,
    SiglipConfig,
    build_encoder,
    pool_tokens,
)
from extract.tiny import TINY_CLIP


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


HUB_LOAD = """
import sys, time
import torch
from extract.encoders import EncoderLoadError, SiglipConfig, build_encoder
t0 = time.perf_counter()
try:
    enc = build_encoder(SiglipConfig(pretrained=sys.argv[1], device="cpu"))
except EncoderLoadError as e:
    print("ERROR", e)
else:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, enc.image_size, enc.image_size), dtype=torch.uint8)
    torch.save(enc.encode(x), sys.argv[2])
    print("LOADED", enc.provenance["weights"])
print(f"SECONDS {time.perf_counter() - t0:.1f}")
"""


def load_from_hub(repo: str, cache: Path, out: Path) -> tuple[str, float]:
    """Build a SigLIP from hub id ``repo`` in a fresh process whose hub cannot be reached."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    # Connection refused at once; the HTTP client would retry it for about a minute.
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(cache))
    r = subprocess.run(
        [sys.executable, "-c", HUB_LOAD, repo, str(out)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    return lines[0], float(lines[-1].split()[1])


def test_unreachable_hub_fails_at_once_and_names_the_override(tmp_path: Path) -> None:
    said, seconds = load_from_hub("google/siglip-large-patch16-384", tmp_path / "hub", tmp_path)
    assert said.startswith("ERROR cannot load SigLIP weights 'google/siglip-large-patch16-384'")
    assert "the hub http://127.0.0.1:9 is unreachable" in said
    assert "only the local cache is used" in said and "Set encoder.pretrained=" in said
    # Without the probe the hub client retries the refused connection for ~50 s.
    assert seconds < 30, seconds


def test_hub_id_loads_from_the_local_cache_when_the_hub_is_unreachable(
    tmp_path: Path, tiny_siglip: Path
) -> None:
    import shutil

    # The hub cache layout: models--org--name/{refs/main, snapshots/<commit>/files}.
    repo_dir = tmp_path / "hub" / "models--streamfeat-test--tiny-siglip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_siglip, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    said, _ = load_from_hub("streamfeat-test/tiny-siglip", tmp_path / "hub", tmp_path / "a.pt")
    assert said == "LOADED streamfeat-test/tiny-siglip", said
    load_from_hub(str(tiny_siglip), tmp_path / "empty", tmp_path / "b.pt")  # the directory
    torch.testing.assert_close(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt"))


@pytest.fixture(scope="module")
def tiny_siglip2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from extract.tiny import save_tiny_siglip2

    d = tmp_path_factory.mktemp("siglip2")
    return {
        "fixed": save_tiny_siglip2(d / "fixed", naflex=False),
        "naflex": save_tiny_siglip2(d / "naflex", naflex=True),
    }


def grid_reference(cls_token: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """Independent: ``grid`` (H, W, C) -> [cls, k x k cells], each the mean of the patches in
    rows [floor(i*H/k), ceil((i+1)*H/k)) x cols [floor(j*W/k), ceil((j+1)*W/k)), row by row."""
    h, w, _ = grid.shape
    cells = [cls_token]
    for i in range(k):
        for j in range(k):
            r0, r1 = i * h // k, -(-(i + 1) * h // k)
            c0, c1 = j * w // k, -(-(j + 1) * w // k)
            cells.append(grid[r0:r1, c0:c1].reshape(-1, grid.shape[-1]).mean(dim=0))
    return torch.stack(cells)


def test_siglip2_fixed_resolution_is_siglip(tiny_siglip2: dict[str, Path]) -> None:
    from transformers import SiglipModel

    enc = build_encoder(Siglip2Config(pretrained=str(tiny_siglip2["fixed"]), device="cpu"))
    assert (enc.image_size, enc.dim, enc.tokens_per_frame) == (224, 64, 10)
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    tokens = enc.encode(pixels)
    full = SiglipModel.from_pretrained(tiny_siglip2["fixed"]).eval()  # the hub's architecture
    with torch.no_grad():
        out = full.vision_model(pixel_values=(pixels.float() / 255 - 0.5) / 0.5)
    want = reference_tokens(out.pooler_output, out.last_hidden_state, 3)
    torch.testing.assert_close(tokens, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_siglip2_naflex_pools_the_real_aspect_grid(tiny_siglip2: dict[str, Path], k: int) -> None:
    from transformers import Siglip2ImageProcessor, Siglip2Model

    enc = build_encoder(Siglip2Config(pretrained=str(tiny_siglip2["naflex"]), pool=k, device="cpu"))
    assert (enc.image_size, enc.dim, enc.tokens_per_frame) == (128, 64, 1 + k * k)
    # A wide frame: its grid keeps the aspect ratio and leaves padding patches in the sequence.
    pixels = torch.randint(0, 256, (2, 3, 90, 240), dtype=torch.uint8)
    tokens = enc.encode(pixels)
    proc = Siglip2ImageProcessor.from_pretrained(tiny_siglip2["naflex"])
    inputs = proc(images=[p for p in pixels], return_tensors="pt")
    h, w = inputs["spatial_shapes"][0].tolist()
    assert w > h and h * w < 64 and int(inputs["pixel_attention_mask"][0].sum()) == h * w
    full = Siglip2Model.from_pretrained(tiny_siglip2["naflex"]).eval()
    with torch.no_grad():
        out = full.vision_model(**inputs)
    for b in range(2):
        grid = out.last_hidden_state[b, : h * w].reshape(h, w, -1)  # padding rows left out
        want = grid_reference(out.pooler_output[b], grid, k)
        torch.testing.assert_close(tokens[b], want, rtol=1e-4, atol=1e-4)


def test_pool_zero_is_cls_only_for_every_encoder(
    tiny_siglip: Path, tiny_clip: tuple[Path, Path], tiny_siglip2: dict[str, Path]
) -> None:
    cfg_path, ckpt = tiny_clip
    configs = [
        SiglipConfig(pretrained=str(tiny_siglip), pool=0, device="cpu"),
        ClipConfig(
            model=TINY_CLIP, pretrained=str(ckpt), model_config=str(cfg_path), pool=0, device="cpu"
        ),
        Siglip2Config(pretrained=str(tiny_siglip2["fixed"]), pool=0, device="cpu"),
        Siglip2Config(pretrained=str(tiny_siglip2["naflex"]), pool=0, device="cpu"),
    ]
    for cfg in configs:
        enc = build_encoder(cfg)
        pixels = torch.randint(0, 256, (2, 3, enc.image_size, enc.image_size), dtype=torch.uint8)
        cls_only = enc.encode(pixels)
        assert enc.tokens_per_frame == 1 and cls_only.shape == (2, 1, enc.dim), cfg
        full = build_encoder(replace(cfg, pool=1)).encode(pixels)
        torch.testing.assert_close(cls_only[:, 0], full[:, 0], rtol=1e-4, atol=1e-4)


def test_siglip2_refuses_other_checkpoints(tiny_clip: tuple[Path, Path], tiny_llm: Path) -> None:
    with pytest.raises(EncoderLoadError, match="not SigLIP 2"):
        build_encoder(Siglip2Config(pretrained=str(tiny_llm)))
    with pytest.raises(EncoderLoadError, match="encoder.pretrained"):
        build_encoder(Siglip2Config(pretrained="google/siglip2-so400m-patch16-naflex"))  # offline
