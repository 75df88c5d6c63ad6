"""Streaming conversations -> token ids, labels and loss weights (VideoLLM-online's LIVE layout).

The template, a worked example and the labelling rules are in docs/data.md ("The LIVE prompt").
Labels are already shifted (``labels[i]`` is the target of the logits at position ``i``): use
``models.live.live_loss``, not a Hugging Face model's own loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from data.types import Conversation, StreamTurn, UserTurn

IGNORE_INDEX = -100
#: Between two frames of a stream turn; the "stay silent" target.
FRAME_INTERVAL = ","
#: After the last frame of a stream turn; the "respond now" target.
STREAM_END = "]"
STREAM_START = "["
#: Appended after the last turn when a reply is to be generated (the reference's
#: ``add_generation_prompt``; the reply's leading space is the model's first token to produce).
GENERATION_PROMPT = "\nAssistant:"


@dataclass(frozen=True)
class RenderedConversation:
    """The prompt text and the half-open character ranges ``[start, stop)`` that carry loss."""

    text: str
    learn_ranges: list[tuple[int, int]]
    num_frames: int
    num_learned_frames: int


def render_conversation(
    conv: Conversation,
    *,
    bos: str,
    eos: str,
    v_token: str = "<v>",
    frame_tokens: int = 10,
    generation_prompt: bool = False,
) -> RenderedConversation:
    """Render ``conv`` with the LIVE template (docs/data.md) and compute the reference's learn
    ranges. With ``generation_prompt`` the text ends with :data:`GENERATION_PROMPT`
    (``"\\nAssistant:"``, no trailing space, as the reference's ``add_generation_prompt``): the
    model's reply is generated from there.

    ``bos`` may be empty (tokenizers without one); ``eos`` must not be."""
    if not eos:
        raise ValueError("the tokenizer has no eos token; LIVE ends every assistant turn with eos")
    frame = v_token * frame_tokens
    parts: list[str] = [bos + conv.system + "\n"]
    offset = len(parts[0])
    ranges: list[tuple[int, int]] = []
    learned = 0
    for turn in conv.turns:
        if isinstance(turn, StreamTurn):
            if turn.num_frames == 0:
                continue
            frames = FRAME_INTERVAL.join([frame] * turn.num_frames)
            piece = "\n" + STREAM_START + frames + STREAM_END
            body = offset + 2  # first character of the first frame
            for f in range(turn.learned_frames):
                # The character right after frame f: "," between frames, "]" after the last one,
                # where the reference also learns the next character ("]\n" is one Llama-3 token).
                after = body + (f + 1) * len(frame) + f * len(FRAME_INTERVAL)
                width = 2 if f == turn.num_frames - 1 else 1
                ranges.append((after, after + width))
            learned += turn.learned_frames
        elif isinstance(turn, UserTurn):
            piece = "\nUser: " + turn.text
        else:
            piece = "\nAssistant: " + turn.text + eos
            if turn.learn:
                ranges.append((offset + 1, offset + len(piece)))
        parts.append(piece)
        offset += len(piece)
    if generation_prompt:
        parts.append(GENERATION_PROMPT)
    text = "".join(parts)
    # A range may reach one past the end (a learned stream that ends the conversation).
    ranges = [(a, min(b, len(text))) for a, b in ranges]
    return RenderedConversation(text, ranges, conv.num_frames, learned)


@dataclass(frozen=True)
class EncodedSample:
    """One tokenized conversation. ``labels[i]`` is the target of the logits at position ``i``
    (-100 = ignored); ``weights[i]`` its cross-entropy weight (0 where ignored). ``frame_positions``
    lists every ``<v>`` in order (frame-major, ``frame_tokens`` per frame) — where the connector's
    outputs go; ``stream_positions`` the last ``<v>`` of every learned frame; ``lm_positions`` the
    other labelled positions (the learned ``Assistant: ...{eos}`` tokens)."""

    text: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    frame_positions: torch.Tensor
    stream_positions: torch.Tensor
    lm_positions: torch.Tensor
    num_frames: int
    frame_tokens: int

    def __post_init__(self) -> None:
        n = self.input_ids.shape[0]
        if self.input_ids.shape != (n,) or self.labels.shape != (n,) or self.weights.shape != (n,):
            raise ValueError(
                f"input_ids, labels and weights must share one (L,) shape, got"
                f" {tuple(self.input_ids.shape)}, {tuple(self.labels.shape)},"
                f" {tuple(self.weights.shape)}"
            )
        if self.frame_positions.numel() != self.num_frames * self.frame_tokens:
            raise ValueError(
                f"{self.frame_positions.numel()} <v> positions for {self.num_frames} frames of"
                f" {self.frame_tokens} tokens"
            )

    @property
    def stream_mask(self) -> torch.Tensor:
        """Boolean (L,) mask of the stream positions (what ``live_loss`` weights separately)."""
        mask = torch.zeros_like(self.input_ids, dtype=torch.bool)
        mask[self.stream_positions] = True
        return mask


def single_token_id(tokenizer: Any, text: str, *, what: str) -> int:
    """The id of ``text`` if the tokenizer encodes it as exactly one token, else a ValueError."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"{what} {text!r} must be a single token, but {type(tokenizer).__name__} encodes it as"
            f" {len(ids)} tokens {tokenizer.convert_ids_to_tokens(ids)}; LIVE needs one token id"
            " per frame separator and placeholder"
        )
    return int(ids[0])


def _shifted_labels(
    rendered: RenderedConversation, input_ids: torch.Tensor, starts: list[int]
) -> torch.Tensor:
    """The labels of ``rendered``'s tokens (``starts``: each token's first character): every
    token that starts inside a learn range is the target of the position before it."""
    # First token starting at each character (byte-level BPE can split one character into
    # several tokens that share its offsets; a learn range begins at the first of them).
    token_at: dict[int, int] = {}
    for i, s in enumerate(starts):
        token_at.setdefault(s, i)

    def boundary(char: int) -> int:
        if char not in token_at:
            context = rendered.text[max(0, char - 12) : char + 12]
            raise ValueError(
                f"character {char} of the prompt ({rendered.text[char : char + 1]!r} in"
                f" {context!r}) does not start a token: the tokenizer merges it with the"
                " character before, so its label cannot be placed as the reference does"
            )
        return token_at[char]

    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for a, b in rendered.learn_ranges:
        start = boundary(a)
        stop = len(input_ids) if b > starts[-1] else boundary(b)
        # The token at j is the target of position j - 1 (labels are pre-shifted).
        labels[start - 1 : stop - 1] = input_ids[start:stop]
    return labels


def encode_conversation(
    tokenizer: Any,
    conv: Conversation,
    *,
    v_token: str = "<v>",
    frame_tokens: int = 10,
    stream_loss_weight: float = 1.0,
) -> EncodedSample:
    """Tokenize ``conv`` (a fast tokenizer with offsets, ``<v>`` already added as a special token —
    ``models.live.build_live`` does that) and label it as docs/data.md describes ("The LIVE
    prompt")."""
    if frame_tokens < 1:
        raise ValueError(f"frame_tokens must be >= 1, got {frame_tokens}")
    v_id = single_token_id(tokenizer, v_token, what="the frame placeholder (model.v_token)")
    single_token_id(tokenizer, FRAME_INTERVAL, what="the frame separator")
    single_token_id(tokenizer, STREAM_END, what="the stream end")
    rendered = render_conversation(
        conv,
        bos=tokenizer.bos_token or "",
        eos=tokenizer.eos_token or "",
        v_token=v_token,
        frame_tokens=frame_tokens,
    )
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    starts = [int(s) for s, _ in enc["offset_mapping"]]
    labels = _shifted_labels(rendered, input_ids, starts)
    v_mask = input_ids == v_id
    labelled = labels != IGNORE_INDEX
    if bool((labels == v_id).any()):
        raise AssertionError("a <v> placeholder became a target; the learn ranges are misaligned")
    stream_mask = v_mask & labelled
    weights = labelled.to(torch.float32)
    weights[stream_mask] = float(stream_loss_weight)
    sample = EncodedSample(
        text=rendered.text,
        input_ids=input_ids,
        labels=labels,
        weights=weights,
        frame_positions=v_mask.nonzero().flatten(),
        stream_positions=stream_mask.nonzero().flatten(),
        lm_positions=(labelled & ~v_mask).nonzero().flatten(),
        num_frames=rendered.num_frames,
        frame_tokens=frame_tokens,
    )
    if sample.stream_positions.numel() != rendered.num_learned_frames:
        raise AssertionError(
            f"{sample.stream_positions.numel()} stream positions for"
            f" {rendered.num_learned_frames} learned frames; the tokenizer split the layout"
            " unexpectedly"
        )
    return sample


@dataclass(frozen=True)
class EncodedPrompt:
    """A tokenized generation prompt: ``input_ids`` (L,) of the conversation followed by
    :data:`GENERATION_PROMPT`, and ``frame_positions``, every ``<v>`` in order (frame-major,
    ``frame_tokens`` per frame), where ``num_frames`` frames of features go. No labels: what
    follows is generated (``models.generate``)."""

    text: str
    input_ids: torch.Tensor
    frame_positions: torch.Tensor
    num_frames: int
    frame_tokens: int

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 1:
            raise ValueError(f"input_ids must be (L,), got {tuple(self.input_ids.shape)}")
        if self.frame_positions.numel() != self.num_frames * self.frame_tokens:
            raise ValueError(
                f"{self.frame_positions.numel()} <v> positions for {self.num_frames} frames of"
                f" {self.frame_tokens} tokens"
            )


def encode_prompt(
    tokenizer: Any, conv: Conversation, *, v_token: str = "<v>", frame_tokens: int = 10
) -> EncodedPrompt:
    """Tokenize ``conv`` rendered with the generation prompt (``...\\nAssistant:``), as the
    reference prompts its benchmarks: ``tokenizer`` as for :func:`encode_conversation` (``<v>``
    added as a special token); learn flags in ``conv`` are ignored."""
    if frame_tokens < 1:
        raise ValueError(f"frame_tokens must be >= 1, got {frame_tokens}")
    v_id = single_token_id(tokenizer, v_token, what="the frame placeholder (model.v_token)")
    rendered = render_conversation(
        conv,
        bos=tokenizer.bos_token or "",
        eos=tokenizer.eos_token or "",
        v_token=v_token,
        frame_tokens=frame_tokens,
        generation_prompt=True,
    )
    ids = tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor(ids, dtype=torch.long)
    return EncodedPrompt(
        text=rendered.text,
        input_ids=input_ids,
        frame_positions=(input_ids == v_id).nonzero().flatten(),
        num_frames=rendered.num_frames,
        frame_tokens=frame_tokens,
    )
