"""A tiny random Llama and a byte-level BPE tokenizer trained offline on a built-in corpus, saved
with ``save_pretrained`` so the benchmarks and the tests load them through
``build_live(LiveConfig(llm=dir))``, the same path users take with a hub id (no hub access)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

# The words the tests and the benchmarks use, in the layout of models/prompt.py, so that BPE
# learns them as whole tokens ("User", "Assistant", " ok", ...). Text after ``]`` is written both
# as "]\n" and "] " so the Llama-3-style pre-tokenizer sees "]\n" as a unit and can merge it.
CORPUS = [
    "A multimodal AI assistant is helping users with some activities.",
    "Below is their conversation, interleaved with the list of video frames received.",
    "You watch a video.\n\n[x,x,x]\nUser: What now?\nAssistant: ok</s>\n[x,x]\nAssistant: go",
    "System: watch.\nUser: Hi\nAssistant: ok\nUser: Tell me when it happens.\nAssistant: done.",
    "x]\nUser: Hi\nx]\nAssistant: go\nx]\nAssistant: ok\nx]\nUser: What now?\nx] x]\n",
    "Cutting the onion. You pick up the knife. Done. Stop. Look. Now. Yes, no, maybe.",
]

#: Llama-3's pre-tokenizer split regex (keeps "]\\n" together).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tiny_tokenizer(style: Literal["gpt2", "llama3"] = "gpt2") -> Any:
    """A byte-level BPE tokenizer (bos ``<s>``, eos ``</s>``, pad ``<pad>``) trained on CORPUS.

    ``gpt2`` splits punctuation from newlines, so ``]`` and ``\\n`` are separate tokens; ``llama3``
    uses Llama-3's pre-tokenizer regex, which keeps ``]\\n`` together (one token after BPE), the
    case VideoLLM-online's learn ranges were written for."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False: offsets must point at the exact characters (learn ranges rely on it).
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        min_frequency=1,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def save_tiny_llm(out: Path, *, style: Literal["gpt2", "llama3"] = "gpt2", seed: int = 0) -> Path:
    """Save a 2-layer, 64-wide, 4-head random ``LlamaForCausalLM`` and its tokenizer to ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(style)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        # Untied like Llama-3-8B, so LoRA on lm_head does not touch the input embeddings.
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_tiny_videollm_online(
    out: Path, llm_dir: Path, *, vision_dim: int = 1024, seed: int = 0
) -> Path:
    """Save a random checkpoint for the tiny Llama at ``llm_dir`` in VideoLLM-online's released
    layout (models/videollm_online.py): their ``adapter_config.json`` fields, LoRA factors under
    peft's key names for every projection and ``lm_head``, the connector as ``connector.0`` /
    ``connector.2`` (``Linear(vision_dim -> H)``, GELU, ``Linear(H -> H)``) and their tokenizer
    (``<v>`` added as an additional special token). Name ``out`` ``...-v1plus`` (10 tokens per
    frame) or ``...-v1`` (1)."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    from models.videollm_online import ADAPTER_WEIGHTS, TARGET_REGEX

    cfg = AutoConfig.from_pretrained(llm_dir)
    h, inter, r = cfg.hidden_size, cfg.intermediate_size, 128
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h)}
    shapes |= {"self_attn.o_proj": (h, h), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h)}
    shapes |= {"mlp.down_proj": (h, inter)}
    modules = {
        f"model.layers.{i}.{n}": s for i in range(cfg.num_hidden_layers) for n, s in shapes.items()
    }
    modules["lm_head"] = (cfg.vocab_size, h)
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, (fan_out, fan_in) in modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(r, fan_in, generator=g) / 50
        tensors[f"base_model.model.{name}.lora_B.weight"] = (
            torch.randn(fan_out, r, generator=g) / 50
        )
    for key, shape in {"0.weight": (h, vision_dim), "0.bias": (h,), "2.weight": (h, h)}.items():
        tensors[f"base_model.model.connector.{key}"] = torch.randn(*shape, generator=g) / 10
    tensors["base_model.model.connector.2.bias"] = torch.randn(h, generator=g) / 10
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    LoraConfig(
        r=r,
        lora_alpha=256,
        lora_dropout=0.05,
        target_modules=TARGET_REGEX,
        modules_to_save=["connector"],
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(llm_dir),
    ).save_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<v>"]})
    tokenizer.save_pretrained(str(out))
    return out
