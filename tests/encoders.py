"""Tiny randomly initialised encoders, saved to disk the way real checkpoints are, so tests load
them through the same ``encoder.pretrained`` path users use (no hub access here)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP = "streamfeat-tiny-vit"


def save_tiny_siglip(out: Path, *, image_size: int = 384, patch_size: int = 16) -> Path:
    """A 2-layer, 64-wide SigLIP vision tower (24x24 patch grid at 384 px) + its processor."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    SiglipVisionModel(cfg).save_pretrained(out)
    SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(out)
    return out


def save_tiny_clip(out: Path) -> tuple[Path, Path]:
    """A 2-layer ViT-16 at 224 px as an open_clip model config JSON + a state-dict checkpoint."""
    import open_clip

    out.mkdir(parents=True, exist_ok=True)
    config = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 224,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 16,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    cfg_path = out / f"{TINY_CLIP}.json"
    cfg_path.write_text(json.dumps(config))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    ckpt = out / "tiny-clip.pt"
    torch.save(model.state_dict(), ckpt)
    return cfg_path, ckpt
