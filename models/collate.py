"""Batches of LIVE samples: padding-aware collation and the per-sample mean loss.

A batch of B samples must train exactly like B samples at batch 1 with B-fold gradient
accumulation (the reference trains at batch 1): :func:`collate` pads on the right, so each
sample's real tokens keep positions ``0..L_i-1`` and never see padding (causal attention), and
:func:`batch_loss` averages each sample's own LIVE loss (``sum(weight * CE) / its n_labels``)
instead of normalising by the labels of the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from models.live import LossParts, live_loss
from models.prompt import IGNORE_INDEX


def collate(items: Sequence[dict[str, Any]], *, pad_token_id: int) -> dict[str, Any]:
    """Stack dataset items (``data.StreamDataset`` / ``data.BenchmarkDataset`` keys) into a batch.

    ``input_ids`` (B, L) padded on the right with ``pad_token_id``, ``labels`` with -100 and
    ``weights`` with 0 to the longest sample; ``attention_mask`` (B, L) 1 on real tokens;
    ``frames`` every sample's frames concatenated in sample order, (sum F_i, tokens, D) — the
    order ``LiveModel.embed`` fills ``<v>`` in (row-major over the batch); ``sample_id`` the
    ids in order; ``lengths`` (B,) the real lengths. ``pad_token_id`` must not be ``<v>``'s id
    (the caller checks; padding would then take frames)."""
    if not items:
        raise ValueError("collate needs at least one item")
    lengths = [int(it["input_ids"].shape[0]) for it in items]
    longest = max(lengths)
    b = len(items)
    first = items[0]
    input_ids = torch.full((b, longest), pad_token_id, dtype=first["input_ids"].dtype)
    labels = torch.full((b, longest), IGNORE_INDEX, dtype=first["labels"].dtype)
    weights = torch.zeros((b, longest), dtype=first["weights"].dtype)
    attention_mask = torch.zeros((b, longest), dtype=torch.long)
    for i, (it, n) in enumerate(zip(items, lengths, strict=True)):
        if it["labels"].shape != it["input_ids"].shape or it["weights"].shape != (n,):
            raise ValueError(
                f"sample {it.get('sample_id')!r}: input_ids {tuple(it['input_ids'].shape)},"
                f" labels {tuple(it['labels'].shape)} and weights {tuple(it['weights'].shape)}"
                " must have one shape (L,)"
            )
        input_ids[i, :n] = it["input_ids"]
        labels[i, :n] = it["labels"]
        weights[i, :n] = it["weights"]
        attention_mask[i, :n] = 1
    return {
        "sample_id": [it.get("sample_id") for it in items],
        "input_ids": input_ids,
        "labels": labels,
        "weights": weights,
        "attention_mask": attention_mask,
        "frames": torch.cat([it["frames"] for it in items]),
        "lengths": torch.tensor(lengths),
    }


def batch_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    stream_mask: torch.Tensor,
) -> LossParts:
    """The mean over the batch's samples of each one's LIVE loss (:func:`models.live.live_loss`
    on its own row), so a batch of B equals B samples at batch 1 accumulated with ``/ B``:
    ``total``, ``lm`` and ``stream`` are the means of the per-sample values (a sample without
    labels counts 0, as at batch 1); the counts are summed. Inputs: (B, L, V) and (B, L)."""
    if logits.dim() != 3:
        raise ValueError(f"batch_loss needs (B, L, V) logits, got {tuple(logits.shape)}")
    parts = [
        live_loss(logits[i], labels[i], weights[i], stream_mask[i]) for i in range(len(logits))
    ]
    n = len(parts)
    return LossParts(
        total=torch.stack([p.total for p in parts]).sum() / n,
        lm=torch.stack([p.lm for p in parts]).sum() / n,
        stream=torch.stack([p.stream for p in parts]).sum() / n,
        n_labels=sum(p.n_labels for p in parts),
        n_lm=sum(p.n_lm for p in parts),
        n_stream=sum(p.n_stream for p in parts),
    )
