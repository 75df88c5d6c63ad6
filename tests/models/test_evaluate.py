"""Streaming evaluation: the reference's metrics on hand-built logits, then on the tiny model."""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from data import AssistantTurn, Conversation, StreamTurn, UserTurn
from models.evaluate import (
    SampleMetrics,
    evaluate_sample,
    fire_mask,
    frame_ids,
    future_frame_logits,
    late_frame_diff,
    score_sample,
    split_turns,
    trim_cache,
    turn_fluency,
    turn_metrics,
)
from models.live import LiveConfig, LiveModel, LiveOutput, build_live, trainable_parameters
from models.prompt import IGNORE_INDEX, EncodedSample, encode_conversation

# --- hand-built samples and logits --------------------------------------------------------
# A vocabulary of 8: the ids below; <v> is 7. One token per frame, so a frame's only <v> is its
# stream position. P(label) = 1/2 on a "right" LM row (ln 7 at the label, 0 on the other 7 ids)
# -> CE ln 2; on a "wrong" row ln 7 sits on another id -> P(label) = 1/14, CE ln 14.
BOS, COMMA, CLOSE, A, B, EOS, NL, V = range(8)
VOCAB = 8
LN7 = math.log(7)
SILENT_90 = math.log(63)  # a row with only "," at ln 63: P(,) = 63 / (63 + 7) = 0.9
SILENT_50 = LN7  # P(,) = 7 / (7 + 7) = 0.5, yet "," is the argmax


def hand_sample(turns: list[int], reply: tuple[int, ...] = (A, B, EOS)) -> EncodedSample:
    """``{bos}`` then, per turn, ``\\n[v,v,...,v]\\n`` + ``reply`` (ending with eos); every frame
    and every reply token learned."""
    ids, labels = [BOS], [IGNORE_INDEX]
    stream, lm = [], []
    for n in turns:
        ids.append(NL)
        labels.append(IGNORE_INDEX)
        for f in range(n):
            if f:
                ids.append(COMMA)
                labels.append(IGNORE_INDEX)
            ids.append(V)
            labels.append(CLOSE if f == n - 1 else COMMA)
            stream.append(len(ids) - 1)
        ids += [CLOSE, NL]
        labels += [IGNORE_INDEX, IGNORE_INDEX]
        for token in reply:
            labels[-1] = token  # the position before each reply token targets it
            lm.append(len(ids) - 1)
            ids.append(token)
            labels.append(IGNORE_INDEX)
    input_ids, label_t = torch.tensor(ids), torch.tensor(labels)
    return EncodedSample(
        text="",
        input_ids=input_ids,
        labels=label_t,
        weights=(label_t != IGNORE_INDEX).float(),
        frame_positions=(input_ids == V).nonzero().flatten(),
        stream_positions=torch.tensor(stream),
        lm_positions=torch.tensor(lm),
        num_frames=sum(turns),
        frame_tokens=1,
    )


def row(**values: float) -> torch.Tensor:
    """A logit row: 0 everywhere but the named ids (``comma=``, ``close=``, ``a=`` ...)."""
    out = torch.zeros(VOCAB)
    names = {"comma": COMMA, "close": CLOSE, "a": A, "b": B, "eos": EOS, "bos": BOS}
    for name, value in values.items():
        out[names[name]] = value
    return out


def hand_logits(sample: EncodedSample, wrong: Collection[int] = ()) -> torch.Tensor:
    """Every stream row silent (P(,) = 0.9); LM row ``i`` (the i-th LM position of the sample)
    right, or wrong when ``i`` is in ``wrong``."""
    logits = torch.zeros(len(sample.input_ids), VOCAB)
    logits[sample.stream_positions] = row(comma=SILENT_90)
    for i, pos in enumerate(sample.lm_positions.tolist()):
        label = int(sample.labels[pos])
        logits[pos, (label + 1) % VOCAB if i in wrong else label] = LN7
    return logits


def fire_at(logits: torch.Tensor, sample: EncodedSample, *stream_indices: int) -> None:
    for i in stream_indices:
        logits[sample.stream_positions[i]] = row(close=5.0)


def no_future(keep: int, first: int, count: int) -> torch.Tensor:
    raise AssertionError(f"no late turn expected, got a call for {(keep, first, count)}")


def score(
    sample: EncodedSample, logits: torch.Tensor, *, threshold: float = 0.0, future: Any = no_future
) -> SampleMetrics:
    return score_sample(
        logits, sample, v_token_id=V, interval_token_id=COMMA, eos_token_id=EOS, fps=2.0,
        threshold=threshold, future_logits=future,
    )  # fmt: skip


def test_split_turns_ends_each_turn_at_an_eos() -> None:
    s = hand_sample([2, 1])
    # {bos} \n v , v ] \n A B eos | \n v ] \n A B eos
    assert split_turns(s.input_ids, EOS) == [(0, 10), (10, 17)]
    trailing = torch.cat([s.input_ids, torch.tensor([NL, V])])  # frames after the last reply
    assert split_turns(trailing, EOS) == [(0, 10), (10, 17)]  # ... belong to no turn


def test_on_time() -> None:
    s = hand_sample([3])
    logits = hand_logits(s, wrong={2})
    fire_at(logits, s, 2)  # the last frame fires: exactly when the reply comes
    t = turn_metrics(logits, s.labels, s.stream_positions, s.lm_positions, COMMA)
    assert (t.n_stream, t.n_lm, t.first_fire, t.in_turn_frame_diff) == (3, 3, 2, 0)
    assert (t.lm_correct_prefix, t.lm_correct) == (2, 2)
    # CE ln 2, ln 2, ln 14 -> PPL = (2 * 2 * 14) ** (1/3)
    assert t.lm_ppl == pytest.approx(56 ** (1 / 3))
    m = score(s, logits)
    assert [x.frame_diff for x in m.turns] == [0]
    assert m.fluency == pytest.approx((3 + 2) / (3 + 3))
    assert m.time_diff == 0.0
    assert m.lm_ppl == pytest.approx(56 ** (1 / 3))
    assert m.lm_accuracy == pytest.approx(2 / 3) and m.lm_correctness == pytest.approx(2 / 3)


def test_early() -> None:
    s = hand_sample([4])
    logits = hand_logits(s)
    fire_at(logits, s, 1, 3)  # fires at the 2nd of 4 frames: 2 frames early
    m = score(s, logits)
    assert (m.turns[0].first_fire, m.turns[0].frame_diff) == (1, 2)
    assert m.fluency == pytest.approx((4 - 2) / (4 + 3))
    assert m.time_diff == pytest.approx(2 / 2.0)  # 2 frames at 2 fps
    assert m.lm_ppl == pytest.approx(2.0) and m.lm_accuracy == 1.0


def test_late_with_a_later_fire() -> None:
    s = hand_sample([3, 4])
    logits = hand_logits(s)
    fire_at(logits, s, 6)  # turn 0 never fires; turn 1 fires at its last frame
    calls = []

    def future(keep: int, first: int, count: int) -> torch.Tensor:
        calls.append((keep, first, count))
        return torch.stack([row(comma=SILENT_90), row(close=5.0)])  # the 2nd future frame fires

    m = score(s, logits, future=future)
    # keep = one past turn 0's last <v> (position 6); the 4th frame (index 3) comes next;
    # min(4 frames next, 3 - 1) = 2 frames are fed.
    assert calls == [(7, 3, 2)]
    assert [t.frame_diff for t in m.turns] == [-2, 0]
    assert [t.late_frames_fed for t in m.turns] == [2, 0]
    assert [t.fluency for t in m.turns] == pytest.approx([(3 - 1) / (3 + 3), (4 + 3) / (4 + 3)])
    assert m.time_diff == pytest.approx((2 + 0) / 2 / 2.0)
    assert m.fluency == pytest.approx((2 / 6 + 1) / 2)


def test_late_and_still_silent() -> None:
    s = hand_sample([5, 2])
    logits = hand_logits(s)
    fire_at(logits, s, 6)
    calls = []

    def future(keep: int, first: int, count: int) -> torch.Tensor:
        calls.append((keep, first, count))
        return torch.stack([row(comma=SILENT_90)] * count)

    m = score(s, logits, future=future)
    assert calls == [(int(s.stream_positions[4]) + 1, 5, 2)]  # min(2 next, 5 - 1) = 2
    assert m.turns[0].frame_diff == -2  # -(frames fed)
    assert m.turns[0].fluency == pytest.approx((5 - 1) / (5 + 3))
    assert m.time_diff == pytest.approx((2 + 0) / 2 / 2.0)


def test_last_turn_silent_and_nothing_to_feed_count_as_on_time() -> None:
    s = hand_sample([3])
    m = score(s, hand_logits(s, wrong={1}))  # never fires, and no future: no call
    assert m.turns[0].frame_diff == 0 and m.turns[0].late_frames_fed == 0
    assert m.fluency == pytest.approx((3 + 1) / (3 + 3))  # scored as on time, as the reference
    # A silent 1-frame turn may feed min(next, 1 - 1) = 0 frames: frame_diff 0 as well.
    s2 = hand_sample([1, 2])
    logits = hand_logits(s2)
    fire_at(logits, s2, 2)
    assert [t.frame_diff for t in score(s2, logits).turns] == [0, 0]


def test_threshold_counts_unlikely_silence_as_a_response() -> None:
    s = hand_sample([3])
    logits = hand_logits(s)
    logits[s.stream_positions[1]] = row(comma=SILENT_50)  # argmax "," but P(,) = 0.5
    fire_at(logits, s, 2)
    rows = logits[s.stream_positions]
    assert fire_mask(rows, COMMA).tolist() == [False, False, True]
    assert fire_mask(rows, COMMA, 0.725).tolist() == [False, True, True]
    assert fire_mask(rows, COMMA, 0.4).tolist() == [False, False, True]
    assert score(s, logits).turns[0].frame_diff == 0  # θ = 0: plain argmax
    m = score(s, logits, threshold=0.725)
    assert m.turns[0].frame_diff == 1  # fires at the 2nd of 3 frames
    assert m.fluency == pytest.approx((3 - 1) / (3 + 3))
    assert m.threshold == 0.725
    # The late case uses θ too.
    future = torch.stack([row(comma=SILENT_90), row(comma=SILENT_50), row(close=5.0)])
    assert late_frame_diff(future, COMMA) == -3
    assert late_frame_diff(future, COMMA, 0.725) == -2
    assert late_frame_diff(future[:2], COMMA) == -2


def test_fluency_formula_and_reference_fill_ins() -> None:
    assert turn_fluency(4, 6, 5, 0) == pytest.approx(9 / 10)
    assert turn_fluency(4, 6, 5, 3) == pytest.approx(1 / 10)
    assert turn_fluency(4, 6, 5, -7) == pytest.approx(3 / 10)
    with pytest.raises(ValueError, match="stream and LM"):
        turn_fluency(0, 6, 5, 0)
    empty = SampleMetrics.from_turns([], fps=2.0, threshold=0.0)
    assert empty.lm_ppl is None and empty.time_diff is None
    assert empty.reference_values() == {
        "lm_ppl": 1.0, "time_diff": 0.0, "fluency": 1.0, "lm_correctness": 1.0,
    }  # fmt: skip


# --- the tiny model: KV trim and the whole evaluation --------------------------------------

D, T = 8, 2
SYSTEM = "You watch a video."


def tiny_model(tiny_llm: Path) -> tuple[LiveModel, Any]:
    torch.manual_seed(0)
    model, tok = build_live(
        LiveConfig(
            llm=str(tiny_llm), vision_dim=D, frame_tokens=T, lora_r=8, lora_alpha=16,
            lora_dropout=0.0,
        )
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at 0: make the adapters matter
        for p in trainable_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval(), tok


def test_trimmed_cache_gives_the_logits_of_a_fresh_forward(tiny_llm: Path) -> None:
    model, tok = tiny_model(tiny_llm)
    conv = Conversation(
        [
            StreamTurn(3, learn=True),
            AssistantTurn("ok", learn=True),
            StreamTurn(4, learn=True),
            UserTurn("What now?"),
            AssistantTurn("go", learn=True),
            StreamTurn(3, learn=True),
            AssistantTurn("ok", learn=True),
        ],
        system=SYSTEM,
    )
    s = encode_conversation(tok, conv, frame_tokens=T)
    feats = torch.randn(s.num_frames, T, D)
    with torch.no_grad():
        out = model(s.input_ids, feats, use_cache=True)
    cache = out.past_key_values
    assert cache.get_seq_length() == len(s.input_ids)
    future = torch.randn(3, T, D)
    # Late continuations of turn 1 (after frame 7), then turn 0 (after frame 3), on one cache.
    for frames_kept in (7, 3):
        keep = int(s.frame_positions[frames_kept * T - 1]) + 1
        got = future_frame_logits(model, cache, keep, future)
        assert cache.get_seq_length() == keep + 3 * (T + 1)
        ids = torch.cat([s.input_ids[:keep], frame_ids(model, 3)])
        with torch.no_grad():
            fresh = model(ids, torch.cat([feats[:frames_kept], future])).logits[0]
        last_v = keep + torch.arange(3) * (T + 1) + T  # "," then T <v>: the last <v> of each
        assert (ids[last_v] == model.v_token_id).all()
        torch.testing.assert_close(got, fresh[last_v], rtol=1e-4, atol=1e-4)
    trim_cache(cache, 5)
    assert cache.get_seq_length() == 5
    with pytest.raises(ValueError, match="cannot trim"):
        trim_cache(cache, 6)


class Steered(LiveModel):
    """The tiny model with its stream decisions scripted by the features: at the last ``<v>`` of
    a frame whose feature [0, 0] is > 0 the logit of ``]`` gets +50 (fires), elsewhere the logit
    of ``,`` gets +50 (silent). LM logits are the model's own."""

    close_id: int = 0

    def forward(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> LiveOutput:
        out = super().forward(input_ids, *args, **kwargs)
        feats = args[0] if args else kwargs.get("frame_features")
        if feats is not None:
            last_v = (input_ids.reshape(-1) == self.v_token_id).nonzero().flatten()[T - 1 :: T]
            marked = feats.reshape(-1, T, D)[:, 0, 0] > 0
            out.logits[0, last_v[~marked], self.interval_token_id] += 50.0
            out.logits[0, last_v[marked], self.close_id] += 50.0
        return out


def test_evaluate_sample_end_to_end(tiny_llm: Path) -> None:
    base, tok = tiny_model(tiny_llm)
    model = Steered(
        base.cfg, base.llm, base.connector, v_token_id=base.v_token_id,
        interval_token_id=base.interval_token_id, eos_token_id=base.eos_token_id,
    )  # fmt: skip
    model.close_id = tok.convert_tokens_to_ids("]")
    frames = [3, 4, 3, 4, 5, 2]
    turns: list[Any] = []
    for n in frames:
        turns += [StreamTurn(n, learn=True), AssistantTurn("ok", learn=True)]
    s = encode_conversation(tok, Conversation(turns, system=SYSTEM), frame_tokens=T)
    feats = torch.randn(s.num_frames, T, D)
    feats[..., 0, 0] = -1.0
    starts = [sum(frames[:i]) for i in range(len(frames))]
    for turn, local in [(0, 2), (1, 1), (3, 1)]:  # marked frames (turn, frame in turn)
        feats[starts[turn] + local, 0, 0] = 1.0
    model.train()
    m = evaluate_sample(model, s, feats, fps=2.0)
    assert model.training  # restored
    # turn 0: fires at its last frame (0); turn 1: at frame 1 of 4 (2 early); turn 2: silent,
    # fed min(4, 3 - 1) = 2 frames of turn 3, whose 2nd is marked (-2); turn 3: frame 1 of 4
    # (2 early); turn 4: silent, fed min(2, 5 - 1) = 2 unmarked frames (-2); turn 5: the last,
    # silent (0).
    assert [t.frame_diff for t in m.turns] == [0, 2, -2, 2, -2, 0]
    assert [t.late_frames_fed for t in m.turns] == [0, 0, 2, 0, 2, 0]
    assert m.time_diff == pytest.approx((0 + 2 + 2 + 2 + 2 + 0) / 6 / 2.0)
    # LM metrics from a plain forward (no cache, no steering: LM rows are not steered).
    with torch.no_grad():
        logits = base(s.input_ids, feats).logits[0]
    ppls, fluencies = [], []
    for t in m.turns:
        lm = s.lm_positions[(s.lm_positions >= t.start) & (s.lm_positions < t.stop)]
        nll = torch.nn.functional.cross_entropy(logits[lm], s.labels[lm])
        ppls.append(math.exp(float(nll)))
        right = (logits[lm].argmax(-1) == s.labels[lm]).tolist()
        c = right.index(False) if False in right else len(right)
        assert (t.lm_correct_prefix, t.lm_correct) == (c, sum(right))
        n_v, n_lm = t.n_stream, t.n_lm
        assert n_v == frames[t.index]
        fd = t.frame_diff
        assert fd is not None
        want = (n_v + c) if fd == 0 else (n_v - fd) if fd > 0 else (n_v - 1)
        fluencies.append(want / (n_v + n_lm))
    assert [t.lm_ppl for t in m.turns] == pytest.approx(ppls, rel=1e-4)
    assert m.lm_ppl == pytest.approx(sum(ppls) / len(ppls), rel=1e-4)
    assert m.fluency == pytest.approx(sum(fluencies) / len(fluencies))
    back = json.loads(json.dumps(asdict(m)))
    assert back["turns"][2]["frame_diff"] == -2 and back["fps"] == 2.0


def test_evaluate_sample_with_no_reply_scores_nothing(tiny_llm: Path) -> None:
    model, tok = tiny_model(tiny_llm)
    s = encode_conversation(
        tok, Conversation([StreamTurn(3, learn=True)], system=SYSTEM), frame_tokens=T
    )
    assert split_turns(s.input_ids, model.eos_token_id) == []
    m = evaluate_sample(model, s, torch.randn(s.num_frames, T, D), fps=2.0)
    assert m.turns == [] and m.lm_ppl is None and m.time_diff is None
    assert (
        m.reference_values()
        == SampleMetrics.from_turns([], fps=2.0, threshold=0.0).reference_values()
    )
