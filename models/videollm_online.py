"""VideoLLM-online's released checkpoints (``chenjoya/videollm-online-8b-v1plus``) as a LiveModel.

Their training saves a peft LoRA adapter of ``LiveLlamaForCausalLM``: ``adapter_config.json``
(``r=128``, ``lora_alpha=256``, ``target_modules`` the regex
``model.*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head$``,
``modules_to_save=['connector']``) and ``adapter_model.safetensors`` holding the LoRA factors
(``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``) and the whole connector
(``base_model.model.connector.0.*`` / ``connector.2.*``: ``Linear(1024 -> H)``, GELU,
``Linear(H -> H)``). ``<v>`` is added to the tokenizer, ``,`` separates frames; ``live1+``
checkpoints take 10 tokens per frame (CLS + 3x3), ``live1`` 1 (CLS). docs/videollm-online.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from models.live import (
    LiveConfig,
    LiveModel,
    _connector_for,
    _load_base,
    check_tensors,
    read_tensors,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Their LoRA target modules (a regex peft full-matches against module names).
TARGET_REGEX = r"model.*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head$"
#: Tokens per frame of their two released variants.
VARIANT_FRAME_TOKENS = {"live1+": 10, "live1": 1}
_CONNECTOR_KEY = re.compile(r"(?:^|\.)connector\.(0|2)\.(weight|bias)$")


def resolve(ref: str | Path) -> Path:
    """A local checkpoint directory, or a hub id fetched (or found in the local cache) with
    ``huggingface_hub.snapshot_download``; jobs call it inside ``extract.encoders.hub_access``,
    so an unreachable hub falls back to the local cache at once, as for every other hub id."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if str(ref).startswith(("/", ".", "~")) or str(ref).count("/") != 1:
        what = "not a folder" if path.exists() else "no such folder"
        raise FileNotFoundError(
            f"job.adapter={ref!r}: {what} (set it to a checkpoint folder or a hub id org/name)"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(ref)))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: one readable reason
        raise FileNotFoundError(
            f"job.adapter={ref!r}: cannot fetch it from the hub ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); download it first or give a local directory"
        ) from None


def is_videollm_online(path: Path) -> bool:
    """Their layout: a peft adapter that saves the connector as a module (no live_config.json)."""
    cfg_file = path / ADAPTER_CONFIG
    if not cfg_file.is_file() or (path / "live_config.json").is_file():
        return False
    return "connector" in (json.loads(cfg_file.read_text()).get("modules_to_save") or [])


def variant_frame_tokens(name: str) -> int | None:
    """Tokens per frame told by a checkpoint's name: ``v1plus``/``live1+`` -> 10,
    ``v1``/``live1`` -> 1, else None."""
    low = name.lower()
    if "v1plus" in low or "live1+" in low or "live1plus" in low:
        return VARIANT_FRAME_TOKENS["live1+"]
    if re.search(r"(v1|live1)(?![\w+])", low):
        return VARIANT_FRAME_TOKENS["live1"]
    return None


def split_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``adapter_model.safetensors`` split into (LoRA tensors for peft, connector state dict)."""
    lora: dict[str, torch.Tensor] = {}
    connector: dict[str, torch.Tensor] = {}
    for key, value in read_tensors(path / ADAPTER_WEIGHTS).items():
        m = _CONNECTOR_KEY.search(key)
        if m:
            connector[f"{m.group(1)}.{m.group(2)}"] = value
        else:
            lora[key] = value
    want = {"0.weight", "0.bias", "2.weight", "2.bias"}
    if set(connector) != want:
        raise ValueError(
            f"{path / ADAPTER_WEIGHTS}: the connector must have {sorted(want)} (connector.0 and"
            f" connector.2 of their Linear-GELU-Linear), found {sorted(connector)}"
        )
    return lora, connector


def _frame_tokens(path: Path, name: str, frame_tokens: int | None) -> int:
    told = variant_frame_tokens(name) or variant_frame_tokens(path.name)
    if told is not None:
        return told
    if frame_tokens in VARIANT_FRAME_TOKENS.values():
        assert frame_tokens is not None
        return frame_tokens
    raise ValueError(
        f"cannot tell whether {name!r} is live1+ (10 tokens per frame) or live1 (1 token): its"
        " name says neither; give the store (whose tokens per frame decide) or rename it"
    )


def _check_saved_tokenizer(path: Path, cfg: LiveConfig, v_token_id: int) -> None:
    """Their saved tokenizer (if any) must put ``<v>`` where the base tokenizer + ``<v>`` does."""
    if not (path / "tokenizer_config.json").is_file():
        return
    from transformers import AutoTokenizer

    try:
        vocab = AutoTokenizer.from_pretrained(str(path)).get_vocab()
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path}: the saved tokenizer does not load ({type(e).__name__}:"
            f" {' '.join(str(e).split())[:200]})"
        ) from None
    saved = vocab.get(cfg.v_token)
    if saved is None:
        raise ValueError(
            f"{path}: the saved tokenizer has no {cfg.v_token} token, so it is not the tokenizer"
            " this checkpoint was trained with; restore it, or remove the tokenizer files"
            " (tokenizer*.json, special_tokens_map.json) to use the base LLM's tokenizer + <v>"
        )
    if saved != v_token_id:
        raise ValueError(
            f"{path}: the saved tokenizer puts {cfg.v_token} at id {saved}, the base + <v> at"
            f" {v_token_id}: it was not trained on {cfg.llm!r}"
        )


def load_videollm_online(
    ref: str | Path,
    *,
    llm: str | None = None,
    frame_tokens: int | None = None,
    dtype: str = "auto",
    llm_key: str = "job.llm",
) -> tuple[LiveModel, Any]:
    """Load one of their checkpoints (directory or hub id) onto the base LLM its
    ``adapter_config.json`` names (or ``llm``, e.g. a local copy). Tokens per frame come from
    the name (``v1plus`` / ``live1+`` = 10, ``v1`` / ``live1`` = 1), else from ``frame_tokens``
    (the store's, when it is 1 or 10). Every LoRA and connector tensor must be there with its
    shape (else nothing loads); ``llm_key`` names the base-LLM setting in errors. Returns the
    model in eval mode and its tokenizer."""
    from peft import (
        LoraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    path = resolve(ref)
    if not is_videollm_online(path):
        raise ValueError(
            f"{ref!r} is not in VideoLLM-online's layout (see docs/videollm-online.md)"
        )
    raw = json.loads((path / ADAPTER_CONFIG).read_text())
    lora_state, conn_state = split_state(path)
    vision_dim = int(conn_state["0.weight"].shape[1])
    cfg = LiveConfig(
        llm=llm or raw["base_model_name_or_path"],
        vision_dim=vision_dim,
        frame_tokens=_frame_tokens(path, str(ref), frame_tokens),
        lora_r=int(raw["r"]),
        lora_alpha=int(raw["lora_alpha"]),
        lora_dropout=float(raw.get("lora_dropout", 0.0)),
        lora_targets=(str(raw["target_modules"]),),
        dtype=dtype,
    )
    origin = "" if llm else f" (the base LLM {path / ADAPTER_CONFIG} names)"
    tokenizer, base, ids = _load_base(cfg, llm_key=llm_key, origin=origin)
    _check_saved_tokenizer(path, cfg, ids["v_token_id"])
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=raw["target_modules"],
        task_type="CAUSAL_LM",
    )
    peft_llm = get_peft_model(base, lora)
    why = (
        f"it is not a LoRA of {cfg.llm!r} ({llm_key}) in VideoLLM-online's layout, or it is"
        " damaged, so it is refused whole"
    )
    expected = get_peft_model_state_dict(peft_llm, save_embedding_layers=False)
    check_tensors(path / ADAPTER_WEIGHTS, lora_state, expected, why)
    set_peft_model_state_dict(peft_llm, lora_state)
    connector = _connector_for(cfg, base)
    conn_expected = {
        f"base_model.model.connector.{k}": v for k, v in connector.state_dict().items()
    }
    conn_saved = {f"base_model.model.connector.{k}": v for k, v in conn_state.items()}
    check_tensors(path / ADAPTER_WEIGHTS, conn_saved, conn_expected, why)
    connector.load_state_dict(conn_state)
    peft_llm.requires_grad_(False)
    connector.requires_grad_(False)
    return LiveModel(cfg, peft_llm, connector, **ids).eval(), tokenizer
