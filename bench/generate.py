"""Generated tokens/s at batch 1 and at batch 8, same prompts, same run (``models.generate``).

A random small Llama (``--hidden`` wide, ``--layers`` layers, the tiny BPE tokenizer of
models/tiny.py) with a LIVE connector from SigLIP-L-wide feature tokens (1024, 10 per frame) is
built locally and loaded through ``build_live``, as users load a hub model. Eight benchmark-style
prompts (a question, then 4-18 frames of random features, then ``\\nAssistant:``) are answered
greedily with ``--max-new-tokens`` each: once one prompt at a time, once as one batch of 8.
Rates count the tokens returned (up to and including eos); rounds alternate the two and the best
(shortest) round of each is reported. The last line is one JSON object.

    python -m bench.generate [--hidden 256] [--layers 4] [--max-new-tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

VISION_DIM = 1024  # SigLIP-L's token width
FRAME_TOKENS = 10  # 1 CLS + 3x3 pooled, as VideoLLM-online
QUESTIONS = [
    "What now?",
    "Tell me when it happens.",
    "Cutting the onion. Done?",
    "Look.",
    "What now? Yes, no, maybe.",
    "Hi",
    "Tell me when it happens. Now.",
    "Stop. Look. Now.",
]
FRAMES = [4, 18, 8, 12, 6, 16, 10, 14]
TARGET_RATIO = 3.0


def save_llm(out: Path, *, hidden: int, layers: int) -> Path:
    """A random Llama of the given size with the tiny tokenizer, saved like a hub checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer("llama3")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build(llm: Path) -> tuple[Any, list[torch.Tensor], list[torch.Tensor]]:
    from data import Conversation, StreamTurn, UserTurn
    from models.live import LiveConfig, build_live, trainable_parameters
    from models.prompt import encode_prompt

    cfg = LiveConfig(llm=str(llm), vision_dim=VISION_DIM, frame_tokens=FRAME_TOKENS, lora_r=16)
    model, tok = build_live(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero adapters, so LoRA costs what it costs after training
        for p in trainable_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    prompts, frames = [], []
    for question, n in zip(QUESTIONS, FRAMES, strict=True):
        conv = Conversation([UserTurn(question), StreamTurn(n, learn=True)], system="A video.")
        prompts.append(encode_prompt(tok, conv, frame_tokens=FRAME_TOKENS).input_ids)
        frames.append(torch.randn(n, FRAME_TOKENS, VISION_DIM, generator=g))
    return model.eval(), prompts, frames


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from models.generate import generate

    d = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    model, prompts, frames = build(save_llm(d / "llm", hidden=args.hidden, layers=args.layers))
    n_params = sum(p.numel() for p in model.parameters())
    kw = dict(max_new_tokens=args.max_new_tokens)

    def one_at_a_time() -> list[list[list[int]]]:
        return [generate(model, [p], [f], **kw)[0] for p, f in zip(prompts, frames, strict=True)]

    def batched() -> list[list[list[int]]]:
        return generate(model, prompts, frames, **kw)

    one_at_a_time(), batched()  # warm-up
    load_before = os.getloadavg()[0]
    best1 = best8 = float("inf")
    for _ in range(args.rounds):
        t1, out1 = timed(one_at_a_time)
        t8, out8 = timed(batched)
        best1, best8 = min(best1, t1), min(best8, t8)
    tokens = sum(len(s) for seqs in out8 for s in seqs)
    rate1, rate8 = tokens / best1, tokens / best8
    result = {
        "model": f"Llama {args.layers}x{args.hidden}, {n_params / 1e6:.1f} M params, LoRA r=16",
        "prompts": len(prompts),
        "prompt_tokens": [int(p.numel()) for p in prompts],
        "generated_tokens": tokens,
        "batch1_tokens_per_s": round(rate1, 1),
        "batch8_tokens_per_s": round(rate8, 1),
        "batch8_over_batch1": round(rate8 / rate1, 2),
        "target": TARGET_RATIO,
        "target_met": rate8 / rate1 >= TARGET_RATIO,
        "identical_outputs": out1 == out8,
        "threads": args.threads,
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(
        f"greedy, {args.max_new_tokens} new tokens per prompt, {len(prompts)} prompts with"
        f" {min(FRAMES)}-{max(FRAMES)} frames x {FRAME_TOKENS} tokens, best of {args.rounds}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
