"""Frame-by-frame streaming inference with a LIVE model on one continuous KV cache.

What VideoLLM-online's demo does, on cached frame features, with the token stream of the training
template. ``kv="full"`` keeps the whole cache like the reference; ``kv="bounded"`` keeps attention
sinks and a sliding window, re-rotating the kept keys so positions stay contiguous. The protocol
and the RoPE arithmetic: docs/models.md.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache

from models.evaluate import fire_mask
from models.live import LiveModel
from models.prompt import FRAME_INTERVAL, STREAM_END, STREAM_START

#: VideoLLM-online's default system prompt.
DEFAULT_SYSTEM = (
    "A multimodal AI assistant is helping users with some activities. Below is their"
    " conversation, interleaved with the list of video frames received by the assistant."
)
#: RoPE types whose frequencies are fixed, so a rotation by a position delta is exact.
SHIFTABLE_ROPE = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class FrameStep:
    """One ``push_frame``: its index and time, ``P(,)`` at the frame's last ``<v>``, whether the
    model fired, the wall time of the whole call (frame forward + reply, seconds) and the cache
    length after it."""

    index: int
    time: float
    interval_prob: float
    fired: bool
    latency_s: float
    cache_tokens: int


def find_rotary(model: LiveModel) -> Any:
    """The LLM's rotary-embedding module (the one with ``inv_freq``), checked to be shiftable."""
    for module in model.llm.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "rope_type"):
            if module.rope_type not in SHIFTABLE_ROPE:
                raise ValueError(
                    f"kv='bounded' re-rotates cached keys, which needs RoPE frequencies that do"
                    f" not depend on the length; rope_type={module.rope_type!r} is not one of"
                    f" {SHIFTABLE_ROPE}. Use kv='full'"
                )
            return module
    raise ValueError(
        "kv='bounded' needs a RoPE model (a rotary embedding module with inv_freq, as in the"
        " Llama family); none found in the LLM. Use kv='full'"
    )


def rotate_keys(keys: torch.Tensor, shift: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Move post-RoPE ``keys`` ``(..., n, head_dim)`` by ``shift`` positions (negative = back):
    multiply by the RoPE rotation of angle ``shift * inv_freq`` in the Llama layout (the two
    halves of ``head_dim`` pair up, as ``rotate_half``). Computed in float32, returned in the
    keys' dtype."""
    half = keys.shape[-1] // 2
    if inv_freq.numel() != half:
        raise ValueError(
            f"head_dim {keys.shape[-1]} is not 2 x {inv_freq.numel()} RoPE frequencies (partial"
            " rotary is not supported by kv='bounded')"
        )
    angle = float(shift) * inv_freq.to(device=keys.device, dtype=torch.float32)
    cos, sin = torch.cat([angle, angle]).cos(), torch.cat([angle, angle]).sin()
    k = keys.float()
    rotated = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * cos + rotated * sin).to(keys.dtype)


def evict_middle(cache: Any, sink: int, keep_last: int, inv_freq: torch.Tensor) -> int:
    """Drop the positions between the first ``sink`` and the last ``keep_last`` of every layer of
    a ``DynamicCache``, rotating the kept tail's keys back by the number dropped so the cache
    stays contiguous (positions ``0 .. sink + keep_last - 1``). Returns how many were dropped."""
    length = int(cache.get_seq_length())
    drop = length - sink - keep_last
    if drop <= 0:
        return 0
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        tail = rotate_keys(keys[..., length - keep_last :, :], -drop, inv_freq)
        # torch.cat makes fresh tensors, so the evicted middle is freed (a view would pin it).
        layer.keys = torch.cat([keys[..., :sink, :], tail], dim=-2)
        layer.values = torch.cat([values[..., :sink, :], values[..., length - keep_last :, :]], -2)
    return drop


def _check_session(kv: str, max_reply_tokens: int) -> None:
    """Refuse a ``kv`` mode other than ``"full"``/``"bounded"`` and a reply cap below 1."""
    if kv not in ("full", "bounded"):
        raise ValueError(f"kv={kv!r} is not valid. Valid choices: 'full', 'bounded'")
    if max_reply_tokens < 1:
        raise ValueError(f"max_reply_tokens must be >= 1, got {max_reply_tokens}")


def _bounded_inv_freq(
    model: LiveModel, sink_tokens: int, window_tokens: int, evict_tokens: int
) -> torch.Tensor:
    """Check the sizes of ``kv="bounded"`` and return the float32 RoPE frequencies its
    evictions rotate the kept keys with (the model must have a shiftable RoPE)."""
    if sink_tokens < 0 or window_tokens < 1:
        raise ValueError(
            f"kv='bounded' needs sink_tokens >= 0 and window_tokens >= 1, got"
            f" {sink_tokens} and {window_tokens}"
        )
    if not 1 <= evict_tokens <= window_tokens:
        raise ValueError(
            f"evict_tokens must be in [1, window_tokens={window_tokens}], got {evict_tokens}"
        )
    inv_freq: torch.Tensor = find_rotary(model).inv_freq.detach().float()
    return inv_freq


class StreamingSession:
    """Stream one video's cached frames through a LIVE model (docs/models.md).

    ``push_frame(features, time)`` feeds one frame ``(frame_tokens, D)`` and returns the reply if
    the model fired, else None; ``add_user(text, time)`` inserts a user turn. ``timeline`` lists
    ``{"time", "role", "text"}`` of every user turn and reply; ``frames`` a :class:`FrameStep` per
    frame (``latencies`` their wall times), keeping the last ``history`` (None = all).
    ``token_ids`` / ``token_sources`` are the ids held in the cache, aligned with it, and for each
    ``<v>`` the global feature row it came from (``frame * frame_tokens + j``; -1 for text).
    ``kv="bounded"`` keeps ``sink_tokens`` (default: the system prompt's tokens) + at most
    ``window_tokens`` recent tokens, evicting at least ``evict_tokens`` at a time. The model is
    put in eval mode."""

    def __init__(
        self,
        model: LiveModel,
        tokenizer: Any,
        *,
        system: str = DEFAULT_SYSTEM,
        threshold: float = 0.725,
        max_reply_tokens: int = 100,
        kv: Literal["full", "bounded"] = "full",
        sink_tokens: int | None = None,
        window_tokens: int = 4096,
        evict_tokens: int | None = None,
        history: int | None = None,
    ) -> None:
        _check_session(kv, max_reply_tokens)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.max_reply_tokens = max_reply_tokens
        self.kv = kv
        self.device = next(model.parameters()).device
        self.frame_tokens = model.frame_tokens
        system_text = (tokenizer.bos_token or "") + system + "\n"
        self.sink_tokens = len(self._tokenize(system_text)) if sink_tokens is None else sink_tokens
        self.window_tokens = window_tokens
        self.evict_tokens = max(window_tokens // 8, 1) if evict_tokens is None else evict_tokens
        self._inv_freq: torch.Tensor | None = None
        if kv == "bounded":
            self._inv_freq = _bounded_inv_freq(
                model, self.sink_tokens, window_tokens, self.evict_tokens
            )
        self.cache = DynamicCache()
        self.timeline: list[dict[str, Any]] = []
        self.frames: deque[FrameStep] = deque(maxlen=history)
        self.token_ids: list[int] = []
        self.token_sources: list[int] = []
        self.num_frames = 0
        self.evicted_tokens = 0
        # Text decided but not fed yet: the system prompt (tokenized with what opens the
        # conversation, as the reference does), a queued user turn; ids: a reply's closing eos.
        self._pending_text = system_text
        self._pending_ids: list[int] = []
        self._in_stream = False  # inside "[ ... ]": the next frame follows a "," (silence)
        self._eos = model.eos_token_id

    # --- public API -------------------------------------------------------------------------

    @property
    def cache_tokens(self) -> int:
        """Positions held in the KV cache now."""
        return int(self.cache.get_seq_length())

    @property
    def latencies(self) -> list[float]:
        """Wall time of each recorded ``push_frame`` call (seconds, reply generation included)."""
        return [f.latency_s for f in self.frames]

    @torch.no_grad()
    def push_frame(self, features: torch.Tensor, time_seconds: float) -> str | None:
        """Feed one frame's features ``(frame_tokens, D)`` and decide; returns the reply if the
        model fired (it is then also in ``timeline``), else None."""
        start = time.perf_counter()
        if features.shape[0] != self.frame_tokens:
            raise ValueError(
                f"a frame has {self.frame_tokens} feature tokens (model.frame_tokens), got"
                f" features of shape {tuple(features.shape)}"
            )
        opener = FRAME_INTERVAL if self._in_stream else "\n" + STREAM_START
        ids = self._take_pending(opener)
        first_row = self.num_frames * self.frame_tokens
        sources = [-1] * len(ids) + list(range(first_row, first_row + self.frame_tokens))
        ids = ids + [self.model.v_token_id] * self.frame_tokens
        logits = self._feed(ids, sources, features.unsqueeze(0))
        row = logits[-1:].float()
        p_interval = float(row.softmax(dim=-1)[0, self.model.interval_token_id])
        fired = bool(fire_mask(row, self.model.interval_token_id, self.threshold)[0])
        self._in_stream = True
        reply = None
        if fired:
            self._in_stream = False
            reply = self._respond(STREAM_END + "\nAssistant:")
            self.timeline.append({"time": time_seconds, "role": "assistant", "text": reply})
        self.frames.append(
            FrameStep(
                index=self.num_frames,
                time=time_seconds,
                interval_prob=p_interval,
                fired=fired,
                latency_s=time.perf_counter() - start,
                cache_tokens=self.cache_tokens,
            )
        )
        self.num_frames += 1
        return reply

    @torch.no_grad()
    def add_user(self, text: str, time_seconds: float, *, respond: bool = True) -> str | None:
        """Insert a user turn (closing an open stream with ``]``). With ``respond`` (the demo's
        behaviour) ``\\nAssistant:`` follows and the reply is generated and returned; otherwise
        the turn is queued and fed with the next frame, and None is returned."""
        self.timeline.append({"time": time_seconds, "role": "user", "text": text})
        turn = (STREAM_END if self._in_stream else "") + "\nUser: " + text
        self._in_stream = False
        if not respond:
            self._pending_text += turn
            return None
        reply = self._respond(turn + "\nAssistant:")
        self.timeline.append({"time": time_seconds, "role": "assistant", "text": reply})
        return reply

    # --- internals --------------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _take_pending(self, text: str) -> list[int]:
        ids = self._pending_ids + self._tokenize(self._pending_text + text)
        self._pending_ids, self._pending_text = [], ""
        return ids

    def _respond(self, prompt: str) -> str:
        """Feed ``prompt`` (after anything pending) and decode greedily on the cache until eos or
        ``max_reply_tokens``; the eos closing the reply is fed with whatever comes next."""
        ids = self._take_pending(prompt)
        logits = self._feed(ids, [-1] * len(ids), None)
        generated: list[int] = []
        while True:
            token = int(logits[-1].argmax())
            generated.append(token)
            if token == self._eos or len(generated) >= self.max_reply_tokens:
                break
            logits = self._feed([token], [-1], None)
        # A reply cut at the limit still ends with eos, so the next frame follows the template.
        self._pending_ids = [token] if token == self._eos else [token, self._eos]
        text = self.tokenizer.decode(
            [t for t in generated if t != self._eos], skip_special_tokens=True
        )
        return str(text).strip()

    def _feed(
        self, ids: list[int], sources: list[int], features: torch.Tensor | None
    ) -> torch.Tensor:
        """Append ``ids`` (with ``features`` for their ``<v>``) to the cache at the next
        contiguous positions; returns their logits ``(len(ids), V)``. In bounded mode the middle
        is evicted first when the window is full."""
        if self.kv == "bounded":
            self._maybe_evict()
        start = self.cache_tokens
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(ids), device=self.device).unsqueeze(0)
        out = self.model(
            input_ids, features, position_ids=positions, past_key_values=self.cache, use_cache=True
        )
        self.token_ids.extend(ids)
        self.token_sources.extend(sources)
        return out.logits[0]

    def _maybe_evict(self) -> None:
        length = self.cache_tokens
        if length - self.sink_tokens <= self.window_tokens or self._inv_freq is None:
            return
        keep_last = self.window_tokens - self.evict_tokens
        dropped = evict_middle(self.cache, self.sink_tokens, keep_last, self._inv_freq)
        cut = slice(self.sink_tokens, self.sink_tokens + dropped)
        del self.token_ids[cut]
        del self.token_sources[cut]
        self.evicted_tokens += dropped
