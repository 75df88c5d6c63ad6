"""Teacher-forced streaming evaluation of one LIVE sample: LM-PPL, TimeDiff, Fluency.

VideoLLM-online's ``LiveMixin.stream_evaluate``, the code behind the paper's numbers, restated on
:class:`models.prompt.EncodedSample`. How turns are cut and each metric is defined, and the one
deliberate difference from the reference: docs/models.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from models.live import LiveModel
from models.prompt import IGNORE_INDEX, EncodedSample


def fire_mask(logits: torch.Tensor, interval_token_id: int, threshold: float = 0.0) -> torch.Tensor:
    """Boolean ``(N,)``: which of ``N`` stream-position logit rows ``(N, V)`` say "respond now".

    A row fires when its argmax is not the ``,`` token, or, when ``threshold > 0``, when the
    softmax probability of ``,`` is below ``threshold``. (Below ``θ`` the reference's demo zeroes
    the ``,`` score and its evaluation the whole row before the argmax; either way the argmax is
    then not ``,`` (for the evaluation: as long as ``,`` is not token 0), hence this rule.)"""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, V), got {tuple(logits.shape)}")
    fires = logits.argmax(dim=-1) != interval_token_id
    if threshold > 0:
        p_interval = logits.float().softmax(dim=-1)[:, interval_token_id]
        fires = fires | (p_interval < threshold)
    return fires


@dataclass(frozen=True)
class TurnScores:
    """What the teacher-forced logits say about one turn on their own (before any late-case
    continuation). ``first_fire`` indexes the turn's stream positions (None: never fires);
    ``lm_correct_prefix`` is ``c`` (LM tokens right before the first wrong argmax);
    ``lm_correct`` all LM tokens whose argmax equals the label; ``lm_nll`` the mean CE."""

    n_stream: int
    n_lm: int
    first_fire: int | None
    lm_nll: float | None
    lm_correct_prefix: int
    lm_correct: int

    @property
    def lm_ppl(self) -> float | None:
        """``exp(mean CE)`` over the LM positions (None without LM positions)."""
        if self.lm_nll is None:
            return None
        return math.exp(self.lm_nll) if self.lm_nll < 700 else math.inf  # no OverflowError

    @property
    def in_turn_frame_diff(self) -> int | None:
        """``n_stream - first_fire - 1`` if a stream position fires inside the turn, else None."""
        return None if self.first_fire is None else self.n_stream - self.first_fire - 1


def turn_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    stream_positions: torch.Tensor,
    lm_positions: torch.Tensor,
    interval_token_id: int,
    threshold: float = 0.0,
) -> TurnScores:
    """Score one turn from teacher-forced ``logits`` ``(L, V)`` and pre-shifted ``labels``
    ``(L,)`` (``labels[i]`` is the target of ``logits[i]``): ``stream_positions`` and
    ``lm_positions`` are the turn's rows of ``logits`` (in order). Pure: no model involved."""
    stream_positions = torch.as_tensor(stream_positions, dtype=torch.long)
    lm_positions = torch.as_tensor(lm_positions, dtype=torch.long)
    n_stream, n_lm = int(stream_positions.numel()), int(lm_positions.numel())
    first_fire: int | None = None
    if n_stream:
        fires = fire_mask(logits[stream_positions], interval_token_id, threshold)
        if bool(fires.any()):
            first_fire = int(fires.nonzero()[0, 0])
    lm_nll: float | None = None
    correct_prefix = correct = 0
    if n_lm:
        lm_logits, lm_labels = logits[lm_positions].float(), labels[lm_positions]
        if bool((lm_labels == IGNORE_INDEX).any()):
            raise ValueError("an LM position has no label (-100); positions and labels disagree")
        lm_nll = float(F.cross_entropy(lm_logits, lm_labels))
        right = lm_logits.argmax(dim=-1) == lm_labels
        correct = int(right.sum())
        wrong = (~right).nonzero()
        correct_prefix = int(wrong[0, 0]) if wrong.numel() else n_lm
    return TurnScores(n_stream, n_lm, first_fire, lm_nll, correct_prefix, correct)


def late_frame_diff(
    future_logits: torch.Tensor, interval_token_id: int, threshold: float = 0.0
) -> int:
    """``frame_diff`` of a turn that stayed silent through its own frames, from the logits at the
    last ``<v>`` of each future frame fed after it (``(k, V)``, ``k >= 1``): ``-(j + 1)`` for the
    first future frame ``j`` that fires, ``-k`` if none does."""
    if future_logits.dim() != 2 or future_logits.shape[0] < 1:
        raise ValueError(f"future_logits must be (k >= 1, V), got {tuple(future_logits.shape)}")
    fires = fire_mask(future_logits, interval_token_id, threshold)
    if bool(fires.any()):
        return -(int(fires.nonzero()[0, 0]) + 1)
    return -int(future_logits.shape[0])


def turn_fluency(n_stream: int, n_lm: int, lm_correct_prefix: int, frame_diff: int) -> float:
    """Fluency of a turn: on time (``frame_diff == 0``) ``(n_v + c) / (n_v + n_lm)``; early
    ``(n_v - frame_diff) / (n_v + n_lm)``; late ``(n_v - 1) / (n_v + n_lm)``."""
    total = n_stream + n_lm
    if n_stream < 1 or n_lm < 1:
        raise ValueError(f"fluency needs stream and LM positions, got {n_stream} and {n_lm}")
    if frame_diff == 0:
        return (n_stream + lm_correct_prefix) / total
    if frame_diff > 0:
        return (n_stream - frame_diff) / total
    return (n_stream - 1) / total


def split_turns(input_ids: torch.Tensor, eos_token_id: int) -> list[tuple[int, int]]:
    """Half-open token spans ``[start, stop)`` of the turns: each ends just after an eos and
    starts where the previous one stopped (the first at 0). Tokens after the last eos are in
    no span."""
    stops = ((input_ids == eos_token_id).nonzero().flatten() + 1).tolist()
    starts = [0, *stops[:-1]] if stops else []  # no eos yet (no reply): no turn
    return list(zip(starts, stops, strict=True))


def trim_cache(cache: Any, length: int) -> None:
    """Cut a transformers ``Cache`` (e.g. ``DynamicCache``) back to its first ``length``
    positions, in place (``Cache.crop`` with the negative count transformers 5 expects)."""
    current = int(cache.get_seq_length())
    if not 0 <= length <= current:
        raise ValueError(f"cannot trim a cache of {current} positions to {length}")
    if length < current:
        cache.crop(length - current)


def frame_ids(model: LiveModel, num_frames: int) -> torch.Tensor:
    """The ids of ``num_frames`` frames as they continue a stream: ``,`` then ``frame_tokens``
    ``<v>`` for each (the template joins frames with ``,``)."""
    one = [model.interval_token_id] + [model.v_token_id] * model.frame_tokens
    return torch.tensor(one * num_frames, dtype=torch.long)


@torch.no_grad()
def future_frame_logits(
    model: LiveModel, cache: Any, keep: int, frame_features: torch.Tensor
) -> torch.Tensor:
    """Trim ``cache`` to its first ``keep`` positions (dropping e.g. a gold reply), feed the
    frames ``frame_features`` ``(k, frame_tokens, D)`` after it (``,`` + ``<v>`` each) on that
    same cache, and return the logits ``(k, V)`` at the last ``<v>`` of each frame. The cache is
    left holding ``keep`` + the fed tokens; trim it again to reuse a shorter prefix."""
    trim_cache(cache, keep)
    k = int(frame_features.shape[0])
    device = next(model.parameters()).device
    ids = frame_ids(model, k).to(device)
    positions = torch.arange(keep, keep + ids.numel(), device=device).unsqueeze(0)
    out = model(ids, frame_features, position_ids=positions, past_key_values=cache, use_cache=True)
    step = model.frame_tokens + 1
    return out.logits[0, step - 1 :: step]


@dataclass
class TurnMetrics:
    """One scored turn: token span ``[start, stop)``, its frames (all, learned or not), the
    counts, and the metrics it contributes (None where it has no stream or no LM positions).
    ``late_frames_fed`` is how many future frames the late case fed (0 otherwise)."""

    index: int
    start: int
    stop: int
    num_frames: int
    n_stream: int
    n_lm: int
    lm_ppl: float | None
    lm_correct_prefix: int
    lm_correct: int
    first_fire: int | None
    frame_diff: int | None
    late_frames_fed: int
    fluency: float | None

    @classmethod
    def from_scores(
        cls, index: int, start: int, stop: int, num_frames: int, scores: TurnScores
    ) -> TurnMetrics:
        """A turn as its teacher-forced ``scores`` alone say (before any late-case
        continuation and before its fluency is known)."""
        return cls(
            index=index,
            start=start,
            stop=stop,
            num_frames=num_frames,
            n_stream=scores.n_stream,
            n_lm=scores.n_lm,
            lm_ppl=scores.lm_ppl,
            lm_correct_prefix=scores.lm_correct_prefix,
            lm_correct=scores.lm_correct,
            first_fire=scores.first_fire,
            frame_diff=scores.in_turn_frame_diff,
            late_frames_fed=0,
            fluency=None,
        )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class SampleMetrics:
    """Per-turn results and the per-sample means: ``lm_ppl`` (turns with LM positions),
    ``time_diff`` (mean ``|frame_diff|`` / fps over turns with stream positions, seconds),
    ``fluency``, ``lm_correctness`` (the reference's mean ``c / n_lm``) and ``lm_accuracy``
    (argmax == label over all LM tokens). None where no turn contributes;
    :meth:`reference_values` applies the reference's fill-ins. ``dataclasses.asdict`` gives a
    JSON-serialisable dict."""

    fps: float
    threshold: float
    turns: list[TurnMetrics] = field(default_factory=list)
    lm_ppl: float | None = None
    time_diff: float | None = None
    fluency: float | None = None
    lm_correctness: float | None = None
    lm_accuracy: float | None = None

    @classmethod
    def from_turns(cls, turns: list[TurnMetrics], *, fps: float, threshold: float) -> SampleMetrics:
        """Aggregate scored turns into the per-sample means."""
        with_lm = [t for t in turns if t.n_lm]
        n_lm = sum(t.n_lm for t in with_lm)
        return cls(
            fps=fps,
            threshold=threshold,
            turns=turns,
            lm_ppl=_mean([t.lm_ppl for t in with_lm if t.lm_ppl is not None]),
            time_diff=_mean([abs(t.frame_diff) / fps for t in turns if t.frame_diff is not None]),
            fluency=_mean([t.fluency for t in turns if t.fluency is not None]),
            lm_correctness=_mean([t.lm_correct_prefix / t.n_lm for t in with_lm]),
            lm_accuracy=sum(t.lm_correct for t in with_lm) / n_lm if n_lm else None,
        )

    def reference_values(self) -> dict[str, float]:
        """The four numbers the reference returns per sample, with its fill-ins where nothing
        contributed (LM-PPL 1, TimeDiff 0, Fluency 1, LM correctness 1) — what its dataset-level
        means average over."""
        return {
            "lm_ppl": 1.0 if self.lm_ppl is None else self.lm_ppl,
            "time_diff": 0.0 if self.time_diff is None else self.time_diff,
            "fluency": 1.0 if self.fluency is None else self.fluency,
            "lm_correctness": 1.0 if self.lm_correctness is None else self.lm_correctness,
        }


def _inside(positions: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return positions[(positions >= start) & (positions < stop)]


#: A turn silent through its own frames that the late case continues: the turn, ``keep`` (one
#: past its last stream position), the index of the first frame after it, the frames to feed.
_LateTurn = tuple[TurnMetrics, int, int, int]


def _score_turns(
    logits: torch.Tensor,
    sample: EncodedSample,
    v_token_id: int,
    eos_token_id: int,
    interval_token_id: int,
    threshold: float,
) -> tuple[list[TurnMetrics], list[_LateTurn]]:
    """Score every turn that has learned positions from the teacher-forced logits alone; the
    turns that stay silent and are not the last come back a second time, as late-case
    continuations to feed (their ``frame_diff`` is 0 until then)."""
    ft = sample.frame_tokens
    is_v = (sample.input_ids == v_token_id).long()
    # frames_before[i]: whole frames among the first i tokens.
    frames_before = torch.cat([torch.zeros(1, dtype=torch.long), is_v.cumsum(0)]) // ft
    spans = split_turns(sample.input_ids, eos_token_id)
    device = logits.device
    labels = sample.labels.to(device)
    turns: list[TurnMetrics] = []
    late: list[_LateTurn] = []
    for r, (start, stop) in enumerate(spans):
        stream = _inside(sample.stream_positions, start, stop)
        lm = _inside(sample.lm_positions, start, stop)
        if stream.numel() == 0 and lm.numel() == 0:
            continue  # nothing learned in this turn: the reference skips it
        scores = turn_metrics(
            logits, labels, stream.to(device), lm.to(device), interval_token_id, threshold
        )
        num_frames = int(frames_before[stop] - frames_before[start])
        turn = TurnMetrics.from_scores(r, start, stop, num_frames, scores)
        if scores.n_stream and turn.frame_diff is None:
            turn.frame_diff = 0  # the last turn, or no future frame to feed
            if r < len(spans) - 1:
                next_start, next_stop = spans[r + 1]
                next_frames = int(frames_before[next_stop] - frames_before[next_start])
                # At most this turn's frames - 1: "current as centre", as the reference says.
                count = min(next_frames, num_frames - 1)
                if count > 0:
                    keep = int(stream[-1]) + 1  # drop everything after the last stream <v>
                    late.append((turn, keep, int(frames_before[stop]), count))
        turns.append(turn)
    return turns, late


#: ``future_logits(keep, first_frame, count)``: trim the teacher-forced cache to ``keep``
#: positions, feed frames ``first_frame .. first_frame + count - 1`` after it and return the
#: logits ``(count, V)`` at the last ``<v>`` of each.
FutureLogits = Callable[[int, int, int], torch.Tensor]


def score_sample(
    logits: torch.Tensor,
    sample: EncodedSample,
    *,
    v_token_id: int,
    interval_token_id: int,
    eos_token_id: int,
    fps: float,
    threshold: float = 0.0,
    future_logits: FutureLogits,
) -> SampleMetrics:
    """All metrics of one sample from its teacher-forced ``logits`` ``(L, V)`` (docs/models.md
    gives the rules). Pure apart from ``future_logits``, which is called for every turn
    that stays silent and is not the last, with ``keep`` = one past the turn's last stream
    position, the index of the first frame after the turn and the number of frames to feed; the
    calls come in decreasing ``keep`` so that one cache can be trimmed in place each time."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    turns, late = _score_turns(
        logits, sample, v_token_id, eos_token_id, interval_token_id, threshold
    )
    # Later turns first: each trim then only removes what a later turn (or the frames fed for
    # it) added, so a single cache serves every late turn without copies.
    for turn, keep, first, count in sorted(late, key=lambda item: -item[1]):
        future = future_logits(keep, first, count)
        if future.shape[0] != count:
            raise ValueError(f"future_logits returned {future.shape[0]} rows for {count} frames")
        turn.frame_diff = late_frame_diff(future, interval_token_id, threshold)
        turn.late_frames_fed = count
    for turn in turns:
        if turn.n_stream and turn.n_lm and turn.frame_diff is not None:
            turn.fluency = turn_fluency(
                turn.n_stream, turn.n_lm, turn.lm_correct_prefix, turn.frame_diff
            )
    return SampleMetrics.from_turns(turns, fps=fps, threshold=threshold)


@torch.no_grad()
def evaluate_sample(
    model: LiveModel,
    sample: EncodedSample,
    frame_features: torch.Tensor,
    *,
    fps: float,
    threshold: float = 0.0,
) -> SampleMetrics:
    """Evaluate one sample as the reference does (docs/models.md): one teacher-forced
    forward with a KV cache, :func:`score_sample` on its logits, and for turns that stay silent
    (except the last) the late-case continuation on the trimmed cache
    (:func:`future_frame_logits`). ``frame_features`` are the sample's ``(num_frames,
    frame_tokens, D)`` features; ``fps`` converts frame differences to seconds; ``threshold`` is
    ``θ`` (0 = plain argmax, as the released evaluation). The model is put in eval mode for the
    call and restored afterwards."""
    if frame_features.shape[0] != sample.num_frames:
        raise ValueError(
            f"{frame_features.shape[0]} frames of features for a sample of {sample.num_frames}"
        )
    if sample.frame_tokens != model.frame_tokens:
        raise ValueError(
            f"the sample has {sample.frame_tokens} tokens per frame, the model"
            f" {model.frame_tokens} (model.frame_tokens)"
        )
    if not split_turns(sample.input_ids.flatten(), model.eos_token_id):
        # A conversation with no reply yet: nothing to score, the reference's defaults apply.
        return SampleMetrics.from_turns([], fps=fps, threshold=threshold)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = model(sample.input_ids.to(device), frame_features, use_cache=True)
        cache = out.past_key_values

        def future(keep: int, first: int, count: int) -> torch.Tensor:
            return future_frame_logits(model, cache, keep, frame_features[first : first + count])

        return score_sample(
            out.logits[0],
            sample,
            v_token_id=model.v_token_id,
            interval_token_id=model.interval_token_id,
            eos_token_id=model.eos_token_id,
            fps=fps,
            threshold=threshold,
            future_logits=future,
        )
    finally:
        model.train(was_training)
