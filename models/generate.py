"""Batched generation from prompts with frames (the benchmarks' evaluation by generation).

Each prompt (``models.prompt.encode_prompt``) is embedded with its own frames
(``LiveModel.embed``), the embeddings are left-padded into one batch with an attention mask and
position ids that count only real tokens, and Hugging Face ``generate`` continues from there
with the KV cache: greedy when ``num_beams == 1``, beam search otherwise — the reference's
evaluation settings (COIN: greedy, ``max_new_tokens=512``; Ego4D LTA: 5 beams, 5 returned).
Padding never changes a result: a batch gives the token ids each prompt gives alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from models.live import LiveModel


def length_batches(lengths: Sequence[int], *, batch_size: int) -> list[list[int]]:
    """Indices into ``lengths`` in batches of at most ``batch_size``, longest first, so that each
    batch holds prompts of similar length (little padding) and the largest batch comes first
    (out-of-memory shows at once). Ties keep input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(
    embeds: Sequence[torch.Tensor], pad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack (L_i, H) embeddings into (B, L, H), right-aligned, with ``pad`` (H,) in front.
    Returns ``(inputs_embeds, attention_mask, position_ids)``: the mask is 1 on real tokens; a
    real token's position counts the real tokens before it (0 for each prompt's first token),
    as if the prompt were alone; padding gets position 0 (masked out anyway)."""
    if not embeds:
        raise ValueError("left_pad needs at least one embedding sequence")
    length = max(e.shape[0] for e in embeds)
    batch = pad.to(embeds[0].dtype).expand(len(embeds), length, pad.shape[-1]).clone()
    mask = torch.zeros(len(embeds), length, dtype=torch.long, device=batch.device)
    for row, e in enumerate(embeds):
        if e.shape[0]:
            batch[row, length - e.shape[0] :] = e
            mask[row, length - e.shape[0] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return batch, mask, positions


def _check_args(
    prompts: Sequence[torch.Tensor],
    frames: Sequence[torch.Tensor],
    max_new_tokens: int,
    num_beams: int,
    num_return_sequences: int,
) -> None:
    if len(prompts) != len(frames):
        raise ValueError(
            f"{len(prompts)} prompts but {len(frames)} frame tensors: give one (F, frame_tokens,"
            " D) tensor per prompt (F = 0 for a prompt without frames)"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(
            f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, got"
            f" num_beams={num_beams}, num_return_sequences={num_return_sequences}"
        )
    for i, p in enumerate(prompts):
        if p.dim() != 1 or p.numel() == 0:
            raise ValueError(f"prompt {i} must be non-empty token ids (L,), got {tuple(p.shape)}")


def _until_eos(ids: list[int], eos: int) -> list[int]:
    """``ids`` up to and including the first eos (what follows is padding)."""
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def _generate_batch(
    model: LiveModel,
    prompts: Sequence[torch.Tensor],
    frames: Sequence[torch.Tensor],
    *,
    max_new_tokens: int,
    num_beams: int,
    num_return_sequences: int,
) -> list[list[list[int]]]:
    embedding = model.llm.get_input_embeddings()
    device = embedding.weight.device
    embeds = [
        model.embed(p.to(device).unsqueeze(0), f if f.numel() else None)[0]
        for p, f in zip(prompts, frames, strict=True)
    ]
    eos = model.eos_token_id
    # pad = eos, as the reference's tokenizer; padded rows are masked, so the value is moot.
    pad = embedding(torch.tensor([eos], device=device))[0]
    inputs_embeds, attention_mask, position_ids = left_pad(embeds, pad)
    kwargs: dict[str, Any] = dict(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        # Explicit although transformers 5.x derives the same from the mask
        # (_prepare_position_ids_for_generation) and extends them by one per step. RoPE would
        # cancel a per-row shift only in exact arithmetic; true positions keep each row's
        # numerics those of its prompt alone.
        position_ids=position_ids,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        do_sample=False,
        use_cache=True,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    out = model.llm.generate(**kwargs)
    # With inputs_embeds (no input_ids) generate returns the new tokens only.
    rows = [_until_eos(row, eos) for row in out.tolist()]
    k = num_return_sequences
    return [rows[i * k : (i + 1) * k] for i in range(len(prompts))]


@torch.inference_mode()
def generate(
    model: LiveModel,
    prompts: Sequence[torch.Tensor],
    frames: Sequence[torch.Tensor],
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    num_return_sequences: int = 1,
    batch_size: int | None = None,
) -> list[list[list[int]]]:
    """Continue each prompt (token ids (L,), e.g. ``encode_prompt(...).input_ids``) given its
    frames ((F, frame_tokens, D); F may be 0) and return, per prompt, ``num_return_sequences``
    lists of new token ids (best beam first), each ending at and including the first eos when
    one was generated (padding after it dropped), at most ``max_new_tokens`` long. Greedy when
    ``num_beams == 1``, beam search otherwise; all prompts in one batch, or in batches of
    ``batch_size`` grouped by length (:func:`length_batches`); results are in input order either
    way and equal to generating one prompt at a time. The model is run in eval mode."""
    _check_args(prompts, frames, max_new_tokens, num_beams, num_return_sequences)
    settings = dict(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
    )
    was_training = model.training
    model.eval()
    try:
        if batch_size is None:
            return _generate_batch(model, prompts, frames, **settings)
        results: list[list[list[int]]] = [[] for _ in prompts]
        for idx in length_batches([p.numel() for p in prompts], batch_size=batch_size):
            outs = _generate_batch(
                model, [prompts[i] for i in idx], [frames[i] for i in idx], **settings
            )
            for i, seqs in zip(idx, outs, strict=True):
                results[i] = seqs
        return results
    finally:
        model.train(was_training)


def generate_texts(
    model: LiveModel,
    tokenizer: Any,
    prompts: Sequence[torch.Tensor],
    frames: Sequence[torch.Tensor],
    **kwargs: Any,
) -> list[list[str]]:
    """:func:`generate`, decoded as the reference's ``compute_metrics`` does
    (``skip_special_tokens=True, clean_up_tokenization_spaces=True``: eos and padding vanish).
    ``kwargs`` go to :func:`generate`. Returns, per prompt, one text per returned sequence."""
    return [
        tokenizer.batch_decode(seqs, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        for seqs in generate(model, prompts, frames, **kwargs)
    ]
