"""The LIVE streaming-dialogue model: cached frame features -> connector -> LLM at ``<v>``.

VideoLLM-online's architecture: a connector MLP maps each cached feature token to the embedding of
one ``<v>`` placeholder; the LLM carries LoRA adapters (``lm_head`` included). The loss and the
choices kept from the reference for checkpoint compatibility: docs/models.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.prompt import FRAME_INTERVAL, IGNORE_INDEX, single_token_id

DTYPES = ("auto", "float32", "bfloat16", "float16")
CONNECTOR_FILE = "connector.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "live_config.json"
DEFAULT_LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
)


@dataclass(frozen=True)
class LiveConfig:
    """What ``build_live`` needs. ``llm`` is a hub id or a local directory holding a causal LM and
    its tokenizer; ``vision_dim`` the width of the cached feature tokens (1024 for SigLIP-L);
    ``frame_tokens`` the feature tokens per frame (1 CLS + 3x3 pooled = 10). ``lora_targets`` are
    peft module-name suffixes (``"lm_head"`` included: the reference adapts it too).
    ``attn_implementation`` is passed to ``from_pretrained`` (None = transformers' default)."""

    llm: str  # a hub id or a local directory
    vision_dim: int | None  # None: set by job=train from the store's token width
    frame_tokens: int | None = 10  # None: set by job=train from the store's tokens per frame
    v_token: str = "<v>"
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = field(default=DEFAULT_LORA_TARGETS)
    stream_loss_weight: float = 1.0
    gradient_checkpointing: bool = False
    dtype: str = "auto"
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        # Hydra hands lists; keep the dataclass hashable and JSON round-trippable.
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if not self.llm:
            raise ValueError("model.llm is empty: set it to a hub id or a local model directory")
        for name in ("vision_dim", "frame_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"model.{name} must be >= 1, got {value}")
        if not self.v_token:
            raise ValueError("model.v_token must be a non-empty string such as '<v>'")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not valid. Valid choices: {DTYPES}")
        if self.lora_r < 1 or not self.lora_targets:
            raise ValueError(
                f"LoRA needs model.lora_r >= 1 and model.lora_targets non-empty, got"
                f" r={self.lora_r}, targets={self.lora_targets}"
            )


@dataclass(frozen=True)
class LossParts:
    """``total`` = sum(weight * CE) / ``n_labels`` (what to backpropagate, as the reference);
    ``lm`` and ``stream`` = mean unweighted CE over LM and stream positions (for logging;
    0 where a part has no positions), with their counts."""

    total: torch.Tensor
    lm: torch.Tensor
    stream: torch.Tensor
    n_labels: int
    n_lm: int
    n_stream: int


@dataclass
class LiveOutput:
    """``logits`` (B, L, V); ``loss`` when labels were given; ``past_key_values`` when cached."""

    logits: torch.Tensor
    loss: LossParts | None = None
    past_key_values: Any = None


def live_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    stream_mask: torch.Tensor,
) -> LossParts:
    """The LIVE loss over pre-shifted ``labels`` (``labels[..., i]`` is the target of
    ``logits[..., i, :]``; -100 = ignored): per-position cross-entropy (in float32) times
    ``weights``, summed and divided by the number of labelled positions, as in VideoLLM-online.
    ``stream_mask`` marks the stream positions, reported separately from the LM positions."""
    if logits.shape[:-1] != labels.shape or labels.shape != weights.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} + (V,), and"
            f" weights {tuple(weights.shape)} must match labels"
        )
    labelled = labels != IGNORE_INDEX
    # Only labelled rows go through log-softmax: full-sequence float32 logits can be gigabytes.
    ce = F.cross_entropy(logits[labelled].float(), labels[labelled], reduction="none")
    n_labels = int(labelled.sum())
    total = (ce * weights[labelled].float()).sum() / max(n_labels, 1)
    is_stream = stream_mask[labelled]
    zero = ce.sum() * 0.0
    n_stream = int(is_stream.sum())
    n_lm = n_labels - n_stream
    return LossParts(
        total=total,
        lm=ce[~is_stream].mean() if n_lm else zero,
        stream=ce[is_stream].mean() if n_stream else zero,
        n_labels=n_labels,
        n_lm=n_lm,
        n_stream=n_stream,
    )


def feature_shape(cfg: LiveConfig) -> tuple[int, int]:
    """``(vision_dim, frame_tokens)``, which a model needs set (job=train takes them from the
    store when the config leaves them ``None``)."""
    if cfg.vision_dim is None or cfg.frame_tokens is None:
        raise ValueError("model.vision_dim and model.frame_tokens must be set to build a model")
    return cfg.vision_dim, cfg.frame_tokens


def build_connector(vision_dim: int, hidden_size: int) -> nn.Sequential:
    """``Linear(vision_dim -> H), GELU, Linear(H -> H)`` — the reference's connector, with the same
    submodule names (``0.*``, ``2.*``) so its state dicts map one to one. Exact (erf) GELU, as the
    reference's ``GELUActivation`` uses."""
    return nn.Sequential(
        nn.Linear(vision_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
    )


class LiveModel(nn.Module):
    """A peft-wrapped causal LM plus the connector. ``forward`` takes token ids containing ``<v>``
    placeholders and the frame features that fill them, in order."""

    def __init__(
        self,
        cfg: LiveConfig,
        llm: Any,
        connector: nn.Sequential,
        *,
        v_token_id: int,
        interval_token_id: int,
        eos_token_id: int,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_dim, self.frame_tokens = feature_shape(cfg)
        # Any: a peft PeftModel (typed loosely; its methods are forwarded to the base model).
        self.llm: Any = llm
        self.connector = connector
        self.v_token_id = v_token_id
        self.interval_token_id = interval_token_id
        self.eos_token_id = eos_token_id

    def embed(self, input_ids: torch.Tensor, frame_features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with every ``<v>`` replaced, in row-major order, by the connector
        output of the next feature token. ``frame_features``: (F, frame_tokens, D) or
        (B, F, frame_tokens, D); F * frame_tokens (summed over the batch) must equal the number of
        ``<v>`` in ``input_ids``."""
        embedding = self.llm.get_input_embeddings()
        v_mask = input_ids == self.v_token_id
        # <v> may lie past the embedding matrix (it is never resized): look up a valid id instead;
        # those rows are overwritten below.
        embeds = embedding(input_ids.masked_fill(v_mask, 0))
        n_v = int(v_mask.sum())
        if frame_features is None:
            if n_v:
                raise ValueError(f"input_ids hold {n_v} <v> placeholders but no frame_features")
            return embeds
        if frame_features.dim() not in (3, 4) or frame_features.shape[-2:] != (
            self.frame_tokens,
            self.vision_dim,
        ):
            raise ValueError(
                f"frame_features must be (F, {self.frame_tokens}, {self.vision_dim}) or"
                f" (B, F, {self.frame_tokens}, {self.vision_dim}) (model.frame_tokens,"
                f" model.vision_dim), got {tuple(frame_features.shape)}"
            )
        tokens = frame_features.reshape(-1, self.vision_dim)
        if tokens.shape[0] != n_v:
            raise ValueError(
                f"{tokens.shape[0] // self.frame_tokens} frames"
                f" ({tokens.shape[0]} feature tokens) for {n_v} <v> placeholders in input_ids"
            )
        first = next(self.connector.parameters())
        visual = self.connector(tokens.to(device=first.device, dtype=first.dtype))
        return embeds.masked_scatter(v_mask.unsqueeze(-1), visual.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        frame_features: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> LiveOutput:
        """Run the LLM on ``input_ids`` (B, L) or (L,) with ``<v>`` filled from
        ``frame_features``. With ``labels`` (pre-shifted, see :mod:`models.prompt`) the loss is
        computed too; ``weights`` default to 1 on labelled positions and
        ``cfg.stream_loss_weight`` on labelled ``<v>`` positions (the stream positions)."""
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
            labels = None if labels is None else labels.unsqueeze(0)
            weights = None if weights is None else weights.unsqueeze(0)
            if attention_mask is not None and attention_mask.dim() == 1:
                attention_mask = attention_mask.unsqueeze(0)
        out = self.llm(
            inputs_embeds=self.embed(input_ids, frame_features),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        loss = None
        if labels is not None:
            stream_mask = (input_ids == self.v_token_id) & (labels != IGNORE_INDEX)
            if weights is None:
                weights = (labels != IGNORE_INDEX).float()
                weights = weights.masked_fill(stream_mask, self.cfg.stream_loss_weight)
            loss = live_loss(out.logits, labels, weights, stream_mask)
        return LiveOutput(
            logits=out.logits,
            loss=loss,
            past_key_values=out.past_key_values if use_cache else None,
        )


def _torch_dtype(name: str) -> Any:
    return name if name == "auto" else getattr(torch, name)


def _looks_local(ref: str) -> bool:
    """Whether an LLM reference is meant as a path (``/x``, ``./x``, ``~/x``, ``a/b/c``): such a
    reference is never looked up on the hub, whose ids are ``name`` or ``org/name``."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref


def _load_base(
    cfg: LiveConfig, *, llm_key: str = "model.llm", origin: str = ""
) -> tuple[Any, Any, dict[str, int]]:
    """Tokenizer (with ``<v>`` added) and the bare causal LM from ``cfg.llm``. ``llm_key`` is
    the setting that changes it in error messages (``model.llm`` for job=train, ``job.llm`` for
    eval and stream); ``origin`` says where the value came from (e.g. a checkpoint's config)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fix = f"set {llm_key}=<hub id or local folder with config.json, weights and tokenizer files>"
    ref = cfg.llm
    if _looks_local(ref):
        local = Path(ref).expanduser()
        if not local.is_dir():
            what = "not a folder" if local.exists() else "no such folder"
            raise FileNotFoundError(f"{llm_key}={ref!r}{origin}: {what}; {fix}")
        ref = str(local)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
        kwargs: dict[str, Any] = {"dtype": _torch_dtype(cfg.dtype)}
        if cfg.attn_implementation is not None:
            kwargs["attn_implementation"] = cfg.attn_implementation
        llm = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as e:
        # FileNotFoundError and ValueError are what the command line reports as one line.
        error = FileNotFoundError if isinstance(e, OSError) else ValueError
        raise error(
            f"cannot load the LLM {llm_key}={cfg.llm!r}{origin} ({type(e).__name__}:"
            f" {' '.join(str(e).split())[:300]}); {fix}; without network access use a local"
            " folder (or a populated HF cache with HF_HUB_OFFLINE=1)"
        ) from e
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{cfg.llm!r} loads a slow tokenizer ({type(tokenizer).__name__}); LIVE labels need"
            " a fast tokenizer with offset mappings (install `tokenizers`, or convert it)"
        )
    if tokenizer.eos_token is None:
        raise ValueError(f"the tokenizer of {cfg.llm!r} has no eos token; LIVE needs one")
    tokenizer.add_tokens([cfg.v_token], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as the reference; padding is left-side
    tokenizer.padding_side = "left"
    ids = {
        "v_token_id": single_token_id(tokenizer, cfg.v_token, what="model.v_token"),
        "interval_token_id": single_token_id(tokenizer, FRAME_INTERVAL, what="the separator"),
        "eos_token_id": int(tokenizer.eos_token_id),
    }
    if cfg.gradient_checkpointing:
        # Non-reentrant: inputs are embeddings built outside the LLM, so no input grads hack.
        ckpt_kwargs = {"use_reentrant": False}
        if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.x name
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        llm.config.use_cache = False
    return tokenizer, llm, ids


def _connector_for(cfg: LiveConfig, llm: Any) -> nn.Sequential:
    hidden = llm.get_input_embeddings().weight.shape[1]
    connector = build_connector(feature_shape(cfg)[0], hidden)
    # Float32 unless the whole model was asked to be half precision; the LLM's dtype is applied
    # to the connector output in LiveModel.embed.
    if cfg.dtype in ("bfloat16", "float16"):
        connector = connector.to(_torch_dtype(cfg.dtype))
    return connector


def build_live(cfg: LiveConfig) -> tuple[LiveModel, Any]:
    """Load tokenizer and LLM from ``cfg.llm``, add ``<v>``, wrap the LLM with fresh LoRA adapters
    (peft ``get_peft_model``: base frozen) and attach a fresh, trainable connector. Returns the
    model (in train mode) and the tokenizer to pass to ``models.prompt.encode_conversation``."""
    from peft import LoraConfig, get_peft_model

    tokenizer, llm, ids = _load_base(cfg)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        task_type="CAUSAL_LM",
    )
    try:
        peft_llm = get_peft_model(llm, lora)
    except ValueError as e:
        raise ValueError(
            f"LoRA targets {cfg.lora_targets} do not fit {cfg.llm!r} ({e}); set"
            " model.lora_targets to module-name suffixes of that model"
        ) from e
    model = LiveModel(cfg, peft_llm, _connector_for(cfg, llm), **ids)
    return model.train(), tokenizer


def trainable_parameters(model: LiveModel) -> list[nn.Parameter]:
    """The parameters the optimizer should see: LoRA adapters and the connector."""
    return [p for p in model.parameters() if p.requires_grad]


def save_trainable(model: LiveModel, path: str | Path) -> Path:
    """Write what training changed to ``path``: the peft adapter (``adapter_config.json``,
    ``adapter_model.safetensors``), ``connector.safetensors`` and ``live_config.json``. The base
    LLM is not copied: ``load_trainable`` loads it again from the saved ``llm`` (hub id or dir)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # peft would also copy the base embedding and lm_head weights because "lm_head" is a LoRA
    # target; they are unchanged (never resized), so only the adapters are written.
    model.llm.save_pretrained(str(path), save_embedding_layers=False)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.connector.state_dict().items()}
    save_file(state, str(path / CONNECTOR_FILE))
    (path / CONFIG_FILE).write_text(json.dumps(asdict(model.cfg), indent=2) + "\n")
    return path


def load_live_config(path: str | Path) -> LiveConfig:
    """Read the ``LiveConfig`` saved next to an adapter by ``save_trainable``."""
    file = Path(path) / CONFIG_FILE
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is damaged (not JSON: {e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file} is damaged (a JSON object expected, got {type(raw).__name__})")
    known = {f.name for f in fields(LiveConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{file} has unknown keys {unknown}; known: {sorted(known)}")
    return LiveConfig(**raw)


def check_features(model: LiveModel, tokens_per_frame: int, dim: int, source: str) -> None:
    """Refuse frame features the model was not trained on, naming what differs."""
    diffs = []
    if tokens_per_frame != model.frame_tokens:
        diffs.append(f"tokens per frame: model {model.frame_tokens}, {source} {tokens_per_frame}")
    if dim != model.vision_dim:
        diffs.append(f"token width: model {model.vision_dim}, {source} {dim}")
    if diffs:
        raise ValueError(
            f"the checkpoint does not fit the features of {source} ({'; '.join(diffs)}); extract"
            " with the encoder and encoder.pool the checkpoint was trained with"
        )


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors ``file``; a damaged file is a ``ValueError`` naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # noqa: BLE001 - safetensors' errors are not OSError/ValueError
        raise ValueError(
            f"{file} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None


def check_tensors(
    file: Path, saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], why: str
) -> None:
    """Refuse ``saved`` unless it has exactly the names and shapes of ``expected``, naming the
    missing, extra and mis-shaped tensors (a checkpoint loads whole or not at all: peft and
    ``load_state_dict(strict=False)`` would otherwise leave random or zero weights in place)."""

    def names(keys: list[str]) -> str:
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        return ", ".join(keys[:3]) + more

    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    shapes = {
        k: (tuple(saved[k].shape), tuple(expected[k].shape))
        for k in sorted(set(saved) & set(expected))
        if saved[k].shape != expected[k].shape
    }
    parts = []
    if missing:
        parts.append(f"missing {names(missing)}")
    if extra:
        parts.append(f"extra {names(extra)}")
    if shapes:
        parts.append(
            "mis-shaped "
            + names([f"{k} {list(got)} (model: {list(want)})" for k, (got, want) in shapes.items()])
        )
    if parts:
        raise ValueError(f"{file} does not fit the model ({'; '.join(parts)}): {why}")


def load_trainable(
    path: str | Path,
    *,
    llm: str | None = None,
    is_trainable: bool = False,
    llm_key: str = "job.llm",
) -> tuple[LiveModel, Any]:
    """Rebuild a model saved by ``save_trainable``: the base LLM from the saved ``llm`` (or the
    ``llm`` given here, e.g. a local copy; ``llm_key`` names that setting in errors), the
    adapter as peft ``get_peft_model`` with the saved ``adapter_config.json`` and the connector
    from ``connector.safetensors``, each refused unless every tensor is there with its shape.
    Returns the model in eval mode (train mode, adapters and connector trainable, with
    ``is_trainable``)."""
    from peft import (
        PeftConfig,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    path = Path(path)
    for name in (CONFIG_FILE, CONNECTOR_FILE, "adapter_config.json", ADAPTER_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a LIVE checkpoint: {name} is missing")
    cfg = load_live_config(path)
    origin = ""
    if llm is not None:
        cfg = replace(cfg, llm=llm)
    else:
        origin = f" (the base LLM {path / CONFIG_FILE} names)"
    tokenizer, base, ids = _load_base(cfg, llm_key=llm_key, origin=origin)
    why = (
        f"it was not saved from LoRA on {cfg.llm!r} ({llm_key}) with these settings, or it is"
        " damaged, so it is refused whole"
    )
    lora = PeftConfig.from_pretrained(str(path))
    lora.inference_mode = not is_trainable
    peft_llm = get_peft_model(base, lora)
    adapter = read_tensors(path / ADAPTER_FILE)
    expected = get_peft_model_state_dict(peft_llm, save_embedding_layers=False)
    check_tensors(path / ADAPTER_FILE, adapter, expected, why)
    set_peft_model_state_dict(peft_llm, adapter)
    connector = _connector_for(cfg, base)
    state = read_tensors(path / CONNECTOR_FILE)
    check_tensors(path / CONNECTOR_FILE, state, connector.state_dict(), why)
    connector.load_state_dict(state)
    peft_llm.requires_grad_(False)
    if is_trainable:
        for name, p in peft_llm.named_parameters():
            p.requires_grad_(".lora_" in name)
    connector.requires_grad_(is_trainable)
    model = LiveModel(cfg, peft_llm, connector, **ids)
    return (model.train() if is_trainable else model.eval()), tokenizer
