"""VideoLLM-online's released checkpoint layout loads as a LiveModel, logits checked by hand."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from models.checkpoints import load_checkpoint
from models.live import check_features
from models.tiny import save_tiny_videollm_online

FRAMES, TOKENS, WIDTH = 3, 10, 1024


@pytest.fixture(scope="module")
def ckpt(tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vlo") / "videollm-online-tiny-v1plus"
    return save_tiny_videollm_online(out, tiny_llm)


def test_the_tiny_checkpoint_is_in_their_layout(ckpt: Path) -> None:
    raw = json.loads((ckpt / "adapter_config.json").read_text())
    assert (raw["r"], raw["lora_alpha"], raw["modules_to_save"]) == (128, 256, ["connector"])
    assert raw["target_modules"] == (
        "model.*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head$"
    )
    keys = set(load_file(str(ckpt / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.lm_head.lora_B.weight" in keys
    assert {
        f"base_model.model.connector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    } < keys
    tok = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert "<v>" in json.dumps(tok)


def reference_logits(
    llm: Path, ckpt: Path, ids: list[int], feats: torch.Tensor, use_lora: bool = True
) -> torch.Tensor:
    """Llama + merged LoRA (W + alpha/r B A) + connector, written out from the raw tensors."""
    cfg = json.loads((llm / "config.json").read_text())
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    base = load_file(str(llm / "model.safetensors"))
    lora = load_file(str(ckpt / "adapter_model.safetensors"))
    scale = adapter["lora_alpha"] / adapter["r"] if use_lora else 0.0

    def weight(name: str) -> torch.Tensor:
        a = lora.get(f"base_model.model.{name}.lora_A.weight")
        w = base[f"{name}.weight"]
        return w if a is None else w + scale * lora[f"base_model.model.{name}.lora_B.weight"] @ a

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"])

    c = "base_model.model.connector"
    visual = F.gelu(feats.reshape(-1, WIDTH) @ lora[f"{c}.0.weight"].T + lora[f"{c}.0.bias"])
    visual = visual @ lora[f"{c}.2.weight"].T + lora[f"{c}.2.bias"]
    v_id = 431  # <v>: the first id after the base vocabulary
    rows, k = [], 0
    for i in ids:
        if i == v_id:
            rows.append(visual[k])
            k += 1
        else:
            rows.append(base["model.embed_tokens.weight"][i])
    x = torch.stack(rows)
    n, heads, hd = len(ids), cfg["num_attention_heads"], cfg["head_dim"]
    inv = 1.0 / cfg["rope_parameters"]["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.arange(n).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(t: torch.Tensor) -> torch.Tensor:  # (heads, n, hd)
        return t * cos + torch.cat([-t[..., hd // 2 :], t[..., : hd // 2]], -1) * sin

    causal = torch.full((n, n), float("-inf")).triu(1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        h = rms(x, base[f"{p}.input_layernorm.weight"])
        q, kk, v = (
            (h @ weight(f"{p}.self_attn.{m}_proj").T).reshape(n, heads, hd).transpose(0, 1)
            for m in "qkv"
        )
        att = (rope(q) @ rope(kk).transpose(-1, -2) / math.sqrt(hd) + causal).softmax(-1)
        x = x + (att @ v).transpose(0, 1).reshape(n, -1) @ weight(f"{p}.self_attn.o_proj").T
        h = rms(x, base[f"{p}.post_attention_layernorm.weight"])
        mlp = F.silu(h @ weight(f"{p}.mlp.gate_proj").T) * (h @ weight(f"{p}.mlp.up_proj").T)
        x = x + mlp @ weight(f"{p}.mlp.down_proj").T
    return rms(x, base["model.norm.weight"]) @ weight("lm_head").T


def test_their_checkpoint_loads_and_its_logits_match(ckpt: Path, tiny_llm: Path) -> None:
    model, tok = load_checkpoint(ckpt)
    assert (model.frame_tokens, model.vision_dim) == (TOKENS, WIDTH)
    assert tok.convert_tokens_to_ids("<v>") == model.v_token_id == 431
    assert model.interval_token_id == tok.convert_tokens_to_ids(",")
    frame = "<v>" * TOKENS
    text = "<s>A video.\n[" + ",".join([frame] * FRAMES) + "]\nUser: Hi\nAssistant:"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    feats = torch.randn(FRAMES, TOKENS, WIDTH, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(torch.tensor(ids), feats).logits[0]
        want = reference_logits(tiny_llm, ckpt, ids, feats)
    assert got.shape == want.shape == (len(ids), 431)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The LoRA factors count: without them the logits differ.
    bare = reference_logits(tiny_llm, ckpt, ids, feats, use_lora=False)
    assert (got - bare).abs().max() > 1e-2


def test_a_mismatched_store_is_refused_naming_what_differs(ckpt: Path, tiny_llm: Path) -> None:
    model, _ = load_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"tokens per frame: model 10, store s.zarr 1"):
        check_features(model, 1, WIDTH, "store s.zarr")
    with pytest.raises(ValueError, match=r"token width: model 1024, store s.zarr 768"):
        check_features(model, TOKENS, 768, "store s.zarr")
    check_features(model, TOKENS, WIDTH, "store s.zarr")
    # live1 (CLS only) is told by the name.
    live1 = save_tiny_videollm_online(ckpt.parent / "videollm-online-tiny-v1", tiny_llm)
    assert load_checkpoint(live1)[0].frame_tokens == 1


def test_a_saved_tokenizer_without_v_is_refused(ckpt: Path, tiny_llm: Path, tmp_path: Path) -> None:
    """Their tokenizer carries ``<v>``; one without it is not theirs (today: 'at id None')."""
    from transformers import AutoTokenizer

    bad = Path(shutil.copytree(ckpt, tmp_path / "videollm-online-tiny-v1plus"))
    AutoTokenizer.from_pretrained(tiny_llm).save_pretrained(bad)  # the base's: no <v>
    with pytest.raises(ValueError, match=r"the saved tokenizer has no <v> token"):
        load_checkpoint(bad)


def test_a_mis_shaped_tensor_in_their_layout_is_refused_by_name(ckpt: Path, tmp_path: Path) -> None:
    bad = Path(shutil.copytree(ckpt, tmp_path / "videollm-online-tiny-v1plus"))
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    for key in ("base_model.model.lm_head.lora_A.weight", "base_model.model.connector.2.weight"):
        tensors[key] = torch.zeros(3, 5)
        save_file(tensors, str(bad / "adapter_model.safetensors"))
        with pytest.raises(ValueError, match=rf"mis-shaped {key} \[3, 5\]"):
            load_checkpoint(bad)
        tensors = load_file(str(ckpt / "adapter_model.safetensors"))
