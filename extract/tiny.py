"""Tiny randomly initialised encoders, saved to disk the way real checkpoints are, so the demo,
the benchmarks and the tests load them through the same ``encoder.pretrained`` path users use
(no hub access needed). Their features are meaningless; everything around them is real."""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: The open_clip model name ``save_tiny_clip`` registers (``encoder.model``).
TINY_CLIP = "streamfeat-tiny-vit"


def save_tiny_siglip(out: Path, *, image_size: int = 384, patch_size: int = 16) -> Path:
    """Save a 2-layer, 64-wide SigLIP vision tower (24x24 patch grid at 384 px) and its image
    processor to ``out`` (seeded: the same weights every time); returns ``out``."""
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
    """Save a 2-layer ViT-16 at 224 px as an open_clip model config JSON and a state-dict
    checkpoint under ``out``, and register the config as ``TINY_CLIP`` in this process;
    returns ``(config path, checkpoint path)``."""
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


def save_tiny_siglip2(out: Path, *, naflex: bool, max_num_patches: int = 64) -> Path:
    """Save a 2-layer, 64-wide SigLIP 2 (vision and text towers, as the hub's checkpoints) and
    its image processor to ``out``, seeded. ``naflex=False``: a fixed-resolution checkpoint at
    224 px (``model_type`` siglip, as Google publishes them); ``naflex=True``: a NaFlex one
    (siglip2, an 8x8 position-embedding table, ``max_num_patches`` patches of 16 px)."""
    import transformers as tf

    torch.manual_seed(0)
    vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    vision |= {"num_attention_heads": 2, "patch_size": 16}
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1}
    text |= {"num_attention_heads": 2, "vocab_size": 64, "max_position_embeddings": 16}
    text |= {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if naflex:
        cfg = tf.Siglip2Config(text_config=text, vision_config={**vision, "num_patches": 64})
        tf.Siglip2Model(cfg).save_pretrained(out)
        tf.Siglip2ImageProcessor(max_num_patches=max_num_patches, patch_size=16).save_pretrained(
            out
        )
        return out
    fixed = tf.SiglipConfig(text_config=text, vision_config={**vision, "image_size": 224})
    tf.SiglipModel(fixed).save_pretrained(out)
    tf.SiglipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)
    return out
