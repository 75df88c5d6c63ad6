"""Batched generation from prompts with frames: a batch gives exactly what each prompt gives
alone (greedy and beam search), stops at eos, respects max_new_tokens and decodes as the
reference. A tiny random LIVE model (float32, CPU) built through ``build_live``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from data import Conversation, StreamTurn, UserTurn
from models.generate import generate, generate_texts, left_pad, length_batches
from models.live import LiveConfig, LiveModel, build_live, trainable_parameters
from models.prompt import encode_prompt

D = 8  # feature width of the synthetic "vision encoder"
T = 2  # feature tokens per frame
SYSTEM = "You watch a video."
# (question, frames): prompts of different lengths, 0 frames included.
CASES = [
    ("What now?", 3),
    ("Hi", 0),
    ("Tell me when it happens. Cutting the onion.", 5),
    ("Look.", 1),
    ("Yes, no, maybe.", 0),
    ("Now?", 2),
]
MAX_NEW = 12


@pytest.fixture(scope="module")
def live(tiny_llm: Path) -> tuple[LiveModel, Any]:
    cfg = LiveConfig(
        llm=str(tiny_llm), vision_dim=D, frame_tokens=T, lora_r=4, lora_alpha=8, lora_dropout=0.0
    )
    model, tok = build_live(cfg)
    # LoRA B starts at zero; make the adapters and the connector matter.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval(), tok


@pytest.fixture(scope="module")
def inputs(live: tuple[LiveModel, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    _, tok = live
    g = torch.Generator().manual_seed(1)
    prompts, frames = [], []
    for question, n in CASES:
        conv = Conversation([UserTurn(question), StreamTurn(n, learn=True)], system=SYSTEM)
        prompts.append(encode_prompt(tok, conv, frame_tokens=T).input_ids)
        frames.append(torch.randn(n, T, D, generator=g))
    assert len({p.numel() for p in prompts}) == len(prompts)  # all lengths differ
    return prompts, frames


@contextmanager
def eos_bias(model: LiveModel, bias: float) -> Iterator[None]:
    """Add ``bias`` to the eos logit (a hook on lm_head) while inside."""

    def hook(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[..., model.eos_token_id] += bias
        return out

    handle = model.llm.get_output_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def one_at_a_time(model: LiveModel, prompts: list[Any], frames: list[Any], **kw: Any) -> Any:
    return [generate(model, [p], [f], **kw)[0] for p, f in zip(prompts, frames, strict=True)]


def check_lengths_and_eos(results: list[list[list[int]]], eos: int, max_new: int) -> set[str]:
    """Every sequence ends at its first eos or has max_new tokens; returns which endings
    occurred ("eos", "max")."""
    endings = set()
    for seqs in results:
        for seq in seqs:
            assert 1 <= len(seq) <= max_new
            assert eos not in seq[:-1]
            if seq[-1] == eos:
                endings.add("eos")
            else:
                assert len(seq) == max_new
                endings.add("max")
    return endings


@pytest.mark.parametrize("beams", [1, 5], ids=["greedy", "beam5"])
def test_a_batch_gives_what_each_prompt_gives_alone(
    live: tuple[LiveModel, Any], inputs: Any, beams: int
) -> None:
    model, _ = live
    prompts, frames = inputs
    kw = dict(max_new_tokens=MAX_NEW, num_beams=beams, num_return_sequences=beams)
    batched = generate(model, prompts, frames, **kw)
    single = one_at_a_time(model, prompts, frames, **kw)
    assert batched == single
    assert [len(seqs) for seqs in batched] == [beams] * len(CASES)
    if beams > 1:
        # Beam search returns different hypotheses, not copies of one.
        assert all(len({tuple(s) for s in seqs}) == beams for seqs in batched)
    # This model stops at eos for some prompts and runs to max_new_tokens for others, so both
    # stopping paths are compared between batch and single.
    assert check_lengths_and_eos(batched, model.eos_token_id, MAX_NEW) == {"eos", "max"}
    # Batches grouped by length come back in input order.
    assert generate(model, prompts, frames, batch_size=4, **kw) == single


def test_greedy_takes_the_argmax_at_every_step(live: tuple[LiveModel, Any], inputs: Any) -> None:
    """num_beams=1 is plain greedy: each step's token is the argmax of a full forward pass."""
    model, _ = live
    prompts, frames = inputs
    got = generate(model, prompts[:2], frames[:2], max_new_tokens=5)
    for (seq,), p, f in zip(got, prompts[:2], frames[:2], strict=True):
        ids = p.clone()
        for token in seq:
            with torch.no_grad():
                logits = model(ids, f if f.numel() else None).logits[0, -1]
            assert int(logits.argmax()) == token
            ids = torch.cat([ids, torch.tensor([token])])


@pytest.mark.parametrize("beams", [1, 5], ids=["greedy", "beam5"])
def test_generation_stops_at_eos(live: tuple[LiveModel, Any], inputs: Any, beams: int) -> None:
    model, tok = live
    prompts, frames = inputs
    eos = model.eos_token_id
    kw = dict(max_new_tokens=MAX_NEW, num_beams=beams, num_return_sequences=beams)
    with eos_bias(model, 1e4):
        got = generate(model, prompts, frames, **kw)
        texts = generate_texts(model, tok, prompts, frames, **kw)
    for seqs in got:
        # The best hypothesis is eos at once; the others end at their first eos too.
        assert seqs[0] == [eos]
        assert all(s[-1] == eos and eos not in s[:-1] for s in seqs)
    assert [t[0] for t in texts] == [""] * len(CASES)


@pytest.mark.parametrize("beams", [1, 5], ids=["greedy", "beam5"])
def test_max_new_tokens_is_respected(live: tuple[LiveModel, Any], inputs: Any, beams: int) -> None:
    model, _ = live
    prompts, frames = inputs
    kw = dict(num_beams=beams, num_return_sequences=beams)
    with eos_bias(model, -1e4):  # never eos: every sequence runs to the limit
        for max_new in (1, 7):
            got = generate(model, prompts, frames, max_new_tokens=max_new, **kw)
            assert {len(s) for seqs in got for s in seqs} == {max_new}
            assert check_lengths_and_eos(got, model.eos_token_id, max_new) == {"max"}


def test_texts_decode_as_the_reference(live: tuple[LiveModel, Any], inputs: Any) -> None:
    """The reference decodes generate's padded output (pad = eos) with
    ``batch_decode(skip_special_tokens=True, clean_up_tokenization_spaces=True)``."""
    model, tok = live
    prompts, frames = inputs
    kw = dict(max_new_tokens=MAX_NEW, num_beams=5, num_return_sequences=5)
    ids = generate(model, prompts, frames, **kw)
    texts = generate_texts(model, tok, prompts, frames, **kw)
    eos = model.eos_token_id
    for seqs, got in zip(ids, texts, strict=True):
        padded = [s + [eos] * (MAX_NEW - len(s)) for s in seqs]
        expected = tok.batch_decode(
            padded, skip_special_tokens=True, clean_up_tokenization_spaces=True
        )
        assert got == expected
        assert all(tok.eos_token not in t for t in got)
    assert any(t for seqs in texts for t in seqs)  # something was decoded


def test_left_pad_positions_count_real_tokens_only() -> None:
    a, b = torch.ones(3, 4), 2 * torch.ones(1, 4)
    pad = torch.full((4,), -1.0)
    embeds, mask, positions = left_pad([a, b, torch.zeros(0, 4)], pad)
    assert embeds.shape == (3, 3, 4)
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]
    assert torch.equal(embeds[1, 2], b[0]) and torch.equal(embeds[1, 0], pad)


def test_left_padded_logits_match_the_unpadded_ones(
    live: tuple[LiveModel, Any], inputs: Any
) -> None:
    """The last-position logits of each row of a left-padded batch are those of the prompt
    alone (the prefill generate starts from)."""
    model, _ = live
    prompts, frames = inputs
    embeds = [
        model.embed(p[None], f if f.numel() else None)[0]
        for p, f in zip(prompts, frames, strict=True)
    ]
    batch, mask, positions = left_pad(embeds, torch.zeros(embeds[0].shape[-1]))
    with torch.no_grad():
        padded = model.llm(inputs_embeds=batch, attention_mask=mask, position_ids=positions)
        for row, e in enumerate(embeds):
            alone = model.llm(inputs_embeds=e[None]).logits[0, -1]
            torch.testing.assert_close(padded.logits[row, -1], alone, rtol=1e-5, atol=1e-5)


def test_length_batches_group_by_length_longest_first() -> None:
    assert length_batches([3, 9, 1, 9, 5], batch_size=2) == [[1, 3], [4, 0], [2]]
    assert length_batches([], batch_size=3) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        length_batches([1], batch_size=0)


def test_bad_arguments_are_rejected(live: tuple[LiveModel, Any], inputs: Any) -> None:
    model, _ = live
    prompts, frames = inputs
    with pytest.raises(ValueError, match="2 prompts but 1 frame tensors"):
        generate(model, prompts[:2], frames[:1], max_new_tokens=2)
    with pytest.raises(ValueError, match="num_return_sequences <= num_beams"):
        generate(model, prompts, frames, max_new_tokens=2, num_return_sequences=2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(model, prompts, frames, max_new_tokens=0)
    with pytest.raises(ValueError, match="frames"):  # 3 frames given for a 0-frame prompt
        generate(model, [prompts[1]], [frames[0]], max_new_tokens=2)


def test_training_mode_is_restored(live: tuple[LiveModel, Any], inputs: Any) -> None:
    model, _ = live
    prompts, frames = inputs
    model.train()
    try:
        generate(model, prompts[:1], frames[:1], max_new_tokens=1)
        assert model.training
    finally:
        model.eval()
