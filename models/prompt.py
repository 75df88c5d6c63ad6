"""Streaming conversations -> token ids, labels and loss weights (VideoLLM-online's LIVE layout).

Template (VideoLLM-online ``models/tokenization_live.py``; ``F`` = ``frame_tokens`` copies of the
``<v>`` placeholder, one per cached feature token of a frame)::

    {bos}{system}\\n                         the system turn (bos only if the tokenizer has one)
    \\n[F,F,...,F]                           a stream turn of n > 0 frames (n = 0 renders nothing)
    \\nUser: {text}                          a user turn
    \\nAssistant: {text}{eos}                an assistant turn

Turns are concatenated in order, so a new ``[ ... ]`` block opens every time frames resume. Worked
example with ``frame_tokens=2`` (the default is 10), system ``You watch.``, then
``StreamTurn(2, learn=True)``, ``UserTurn("What now?")``, ``AssistantTurn("Cutting.", learn=True)``,
``StreamTurn(3, learn=True)``, ``AssistantTurn("Done.", learn=False)`` renders as one string,
wrapped here after each turn::

    <s>You watch.\\n
    \\n[<v><v>,<v><v>]
    \\nUser: What now?
    \\nAssistant: Cutting.</s>
    \\n[<v><v>,<v><v>,<v><v>]
    \\nAssistant: Done.</s>

Labels follow the reference's character "learn ranges": a learned stream turn learns, for every
frame, the character after the frame's last ``<v>`` — ``,`` (stay silent, the "streaming EOS") or,
after the turn's last frame, ``]`` together with the character after it (``]\\n``, one Llama-3
token). So the last frame of every learned stream targets ``]`` whatever follows (an assistant
reply, a user question, or the end of the text). A learned assistant turn learns
``Assistant: {text}{eos}``. The text is tokenized once (like the reference) and every token that
starts inside a learn range becomes the target of the position before it. Labels are therefore
already shifted: ``labels[i]`` is the target of the logits at position ``i`` (``input_ids[i + 1]``);
do not hand them to a Hugging Face model, which would shift them again — use
``models.live.live_loss``. In the example: the last ``<v>`` of each frame of both streams targets
``,`` or ``]`` (stream positions, weight ``stream_loss_weight``); with a tokenizer that keeps ``]``
and ``\\n`` apart, the ``]`` of a learned stream also targets ``\\n`` (an LM position, weight 1, as
in the reference); the token before ``Assistant`` targets ``Assistant`` and so on up to ``.``
targeting ``</s>`` (LM positions, weight 1); the system text, the user turn and the unlearned
``Done.`` reply are ignored (-100, weight 0). The loss is
``sum(weight * CE) / number of labelled positions``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100
#: Between two frames of a stream turn; the "stay silent" target.
FRAME_INTERVAL = ","
#: After the last frame of a stream turn; the "respond now" target.
STREAM_END = "]"
STREAM_START = "["


@dataclass(frozen=True)
class StreamTurn:
    """A run of ``num_frames`` frames. ``learn`` is True/False, or (as in VideoLLM-online's
    augmentation) an int: only the first ``learn`` frames carry the stream loss."""

    num_frames: int
    learn: bool | int

    def __post_init__(self) -> None:
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int):
            raise TypeError(f"StreamTurn.num_frames must be an int, got {self.num_frames!r}")
        if self.num_frames < 0:
            raise ValueError(f"StreamTurn.num_frames must be >= 0, got {self.num_frames}")
        if not isinstance(self.learn, bool) and not (
            isinstance(self.learn, int) and 0 <= self.learn <= self.num_frames
        ):
            raise ValueError(
                f"StreamTurn.learn must be a bool or an int in [0, num_frames={self.num_frames}],"
                f" got {self.learn!r}"
            )

    @property
    def learned_frames(self) -> int:
        """How many leading frames of this turn carry the stream loss."""
        if isinstance(self.learn, bool):
            return self.num_frames if self.learn else 0
        return self.learn


@dataclass(frozen=True)
class UserTurn:
    """A user message; never learned."""

    text: str


@dataclass(frozen=True)
class AssistantTurn:
    """An assistant reply; ``learn`` says whether ``Assistant: {text}{eos}`` carries the LM loss."""

    text: str
    learn: bool


Turn = StreamTurn | UserTurn | AssistantTurn


@dataclass
class Conversation:
    """A system prompt followed by stream, user and assistant turns in time order."""

    turns: list[Turn]
    system: str

    def __post_init__(self) -> None:
        for turn in self.turns:
            if not isinstance(turn, StreamTurn | UserTurn | AssistantTurn):
                raise TypeError(
                    f"Conversation turns must be StreamTurn, UserTurn or AssistantTurn,"
                    f" got {turn!r}"
                )

    @property
    def num_frames(self) -> int:
        """Total frames over all stream turns (the number of feature rows the sample needs)."""
        return sum(t.num_frames for t in self.turns if isinstance(t, StreamTurn))


def conversation_from_messages(
    messages: Sequence[Mapping[str, Any]], *, system: str
) -> Conversation:
    """Build a :class:`Conversation` from VideoLLM-online's message dicts: ``{"role": "stream",
    "num_frames": n, "learn": ...}``, ``{"role": "user", "content": s}``, ``{"role": "assistant",
    "content": s, "learn": ...}`` (a missing ``learn`` means False, as in the reference; other keys
    such as ``time`` are ignored). A leading ``{"role": "system"}`` message overrides ``system``."""
    turns: list[Turn] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "system" and i == 0:
            system = str(m["content"])
        elif role == "stream":
            turns.append(StreamTurn(int(m["num_frames"]), m.get("learn", False)))
        elif role == "user":
            turns.append(UserTurn(str(m["content"])))
        elif role == "assistant":
            turns.append(AssistantTurn(str(m["content"]), bool(m.get("learn", False))))
        else:
            raise ValueError(
                f"message {i} has role {role!r}; valid roles: 'stream', 'user', 'assistant'"
                " (and 'system' as the first message)"
            )
    return Conversation(turns=turns, system=system)


@dataclass(frozen=True)
class RenderedConversation:
    """The prompt text and the half-open character ranges ``[start, stop)`` that carry loss."""

    text: str
    learn_ranges: list[tuple[int, int]]
    num_frames: int
    num_learned_frames: int


def render_conversation(
    conv: Conversation, *, bos: str, eos: str, v_token: str = "<v>", frame_tokens: int = 10
) -> RenderedConversation:
    """Render ``conv`` with the module's template and compute the reference's learn ranges.

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


def encode_conversation(
    tokenizer: Any,
    conv: Conversation,
    *,
    v_token: str = "<v>",
    frame_tokens: int = 10,
    stream_loss_weight: float = 1.0,
) -> EncodedSample:
    """Tokenize ``conv`` (a fast tokenizer with offsets, ``<v>`` already added as a special token —
    ``models.live.build_live`` does that) and label it as described in the module docstring."""
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
