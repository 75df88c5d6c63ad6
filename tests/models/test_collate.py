"""A padded batch trains exactly like batch 1 with accumulation (tiny Llama, float32, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from data import AssistantTurn, Conversation, StreamTurn, UserTurn
from models.collate import batch_loss, collate
from models.live import LiveConfig, LiveModel, build_live, trainable_parameters
from models.prompt import IGNORE_INDEX, encode_conversation

D, T = 8, 2  # feature width, feature tokens per frame


def conversations() -> list[Conversation]:
    """Three samples of different token lengths and frame counts (2+3, 1, 4+2 frames)."""
    return [
        Conversation(
            [
                StreamTurn(2, learn=True),
                UserTurn("What now?"),
                AssistantTurn("ok", learn=True),
                StreamTurn(3, learn=True),
                AssistantTurn("go", learn=True),
            ],
            system="You watch a video.",
        ),
        Conversation(
            [UserTurn("Hi"), StreamTurn(1, learn=True), AssistantTurn("done.", learn=True)],
            system="You watch a video.",
        ),
        Conversation(
            [
                StreamTurn(4, learn=True),
                AssistantTurn("Cutting the onion. You pick up the knife.", learn=True),
                StreamTurn(2, learn=True),
            ],
            system="You watch a video.",
        ),
    ]


@pytest.fixture(scope="module")
def model_and_items(tiny_llm: Path) -> tuple[LiveModel, Any, list[dict[str, Any]]]:
    cfg = LiveConfig(
        llm=str(tiny_llm), vision_dim=D, frame_tokens=T, lora_r=4, lora_alpha=8, lora_dropout=0.0
    )
    torch.manual_seed(0)
    model, tok = build_live(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at 0: make every trainable tensor matter
        for p in trainable_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    items = []
    for i, conv in enumerate(conversations()):
        enc = encode_conversation(tok, conv, frame_tokens=T, stream_loss_weight=0.5)
        n_frames = int((enc.input_ids == model.v_token_id).sum()) // T
        frames = torch.randn((n_frames, T, D), generator=g)
        items.append(
            {
                "sample_id": f"s{i}",
                "input_ids": enc.input_ids,
                "labels": enc.labels,
                "weights": enc.weights,
                "frames": frames,
            }
        )
    return model, tok, items


def batch_forward(model: LiveModel, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    out = model(batch["input_ids"], batch["frames"], attention_mask=batch["attention_mask"])
    mask = (batch["input_ids"] == model.v_token_id) & (batch["labels"] != IGNORE_INDEX)
    return out.logits, batch_loss(out.logits, batch["labels"], batch["weights"], mask)


def test_collate_pads_right_and_concatenates_frames_in_order(
    model_and_items: tuple[LiveModel, Any, list[dict[str, Any]]],
) -> None:
    model, tok, items = model_and_items
    batch = collate(items, pad_token_id=tok.pad_token_id)
    lengths = [len(it["input_ids"]) for it in items]
    assert len(set(lengths)) == 3 and batch["input_ids"].shape == (3, max(lengths))
    assert batch["lengths"].tolist() == lengths and batch["sample_id"] == ["s0", "s1", "s2"]
    for i, (it, n) in enumerate(zip(items, lengths, strict=True)):
        assert torch.equal(batch["input_ids"][i, :n], it["input_ids"])
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all() and (
            batch["weights"][i, n:] == 0
        ).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lengths) - n)
    assert tok.pad_token_id != model.v_token_id
    assert torch.equal(batch["frames"], torch.cat([it["frames"] for it in items]))


def test_batch_of_three_equals_batch_one_with_three_fold_accumulation(
    model_and_items: tuple[LiveModel, Any, list[dict[str, Any]]],
) -> None:
    model, tok, items = model_and_items
    params = trainable_parameters(model)
    model.zero_grad(set_to_none=True)
    accumulated, parts = torch.zeros(()), []
    for it in items:  # batch 1: the model's own loss (live_loss), accumulated with / 3
        out = model(it["input_ids"], it["frames"], labels=it["labels"], weights=it["weights"])
        assert out.loss is not None
        (out.loss.total / len(items)).backward()
        accumulated += out.loss.total.detach() / len(items)
        parts.append(out.loss)
    grads_one = [p.grad.clone() for p in params if p.grad is not None]
    assert len(grads_one) == len(params)

    model.zero_grad(set_to_none=True)
    _, loss = batch_forward(model, collate(items, pad_token_id=tok.pad_token_id))
    loss.total.backward()
    grads_three = [p.grad for p in params]

    torch.testing.assert_close(loss.total.detach(), accumulated, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.lm.detach(), sum(p.lm.detach() for p in parts) / 3)
    torch.testing.assert_close(loss.stream.detach(), sum(p.stream.detach() for p in parts) / 3)
    assert loss.n_labels == sum(p.n_labels for p in parts)
    for a, b in zip(grads_three, grads_one, strict=True):
        assert a is not None
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # Not the batch-wide normalisation: the samples' label counts differ, so it would differ.
    assert len({p.n_labels for p in parts}) > 1


def test_batch_loss_counts_a_sample_without_labels_as_zero() -> None:
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX] * 4])
    weights = (labels != IGNORE_INDEX).float()
    loss = batch_loss(logits, labels, weights, torch.zeros_like(labels, dtype=torch.bool))
    one = torch.nn.functional.cross_entropy(logits[0, :2], labels[0, :2])
    torch.testing.assert_close(loss.total, one / 2)
    assert (loss.n_labels, loss.n_lm, loss.n_stream) == (2, 2, 0)


def test_collate_refuses_items_of_mismatched_shapes() -> None:
    item = {
        "sample_id": "x",
        "input_ids": torch.zeros(4, dtype=torch.long),
        "labels": torch.zeros(3, dtype=torch.long),
        "weights": torch.zeros(4),
        "frames": torch.zeros(0, T, D),
    }
    with pytest.raises(ValueError, match="sample 'x'.*one shape"):
        collate([item], pad_token_id=0)
