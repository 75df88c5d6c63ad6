"""Streaming inference: one continuous KV cache (full) and sinks + sliding window (bounded)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from data import AssistantTurn, Conversation, StreamTurn, Turn, UserTurn
from models.evaluate import fire_mask
from models.live import LiveConfig, LiveModel, build_live, trainable_parameters
from models.prompt import encode_conversation
from models.streaming import StreamingSession, evict_middle, find_rotary, rotate_keys

D, T = 8, 2
SYSTEM = "You watch a video."
N_TRAIN = 8  # frames per training sample


def tiny_cfg(llm: Path) -> LiveConfig:
    return LiveConfig(
        llm=str(llm), vision_dim=D, frame_tokens=T, lora_r=8, lora_alpha=16, lora_dropout=0.0
    )


def event_frames(n: int, events: list[int], g: torch.Generator) -> torch.Tensor:
    """Random frames; feature 0 is +2 on event frames and -2 elsewhere."""
    feats = torch.randn(n, T, D, generator=g)
    feats[..., 0] = -2.0
    feats[events, :, 0] = 2.0
    return feats


@pytest.fixture(scope="module")
def trained(tiny_llm: Path) -> Iterator[tuple[LiveModel, Any]]:
    """The tiny model trained (~2 s) to reply "ok" right after event frames (and after a user
    question): stream decisions and replies that streaming must reproduce exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set before the per-test autouse fixture runs
    torch.manual_seed(0)
    model, tok = build_live(tiny_cfg(tiny_llm))
    opt = torch.optim.AdamW(trainable_parameters(model), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        opt.zero_grad()
        for _ in range(4):
            k = int(torch.randint(0, N_TRAIN - 1, (1,), generator=g))
            turns: list[Turn] = [
                StreamTurn(k + 1, learn=True),
                AssistantTurn("ok", learn=True),
                StreamTurn(N_TRAIN - k - 1, learn=True),
            ]
            if bool(torch.randint(0, 2, (1,), generator=g)):
                turns.append(UserTurn("What now?"))
            turns.append(AssistantTurn("ok", learn=True))
            s = encode_conversation(tok, Conversation(turns, system=SYSTEM), frame_tokens=T)
            out = model(s.input_ids, event_frames(N_TRAIN, [k, N_TRAIN - 1], g), labels=s.labels)
            assert out.loss is not None
            (out.loss.total / 4).backward()
        opt.step()
    yield model.eval(), tok
    torch.set_num_threads(threads)


def teacher_forced(
    model: LiveModel, session: StreamingSession, feats: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward over everything the (full-KV) session fed; per frame: P(,), fired, and
    whether the argmax was ","."""
    ids = torch.tensor(session.token_ids)
    sources = torch.tensor(session.token_sources)
    rows = sources[sources >= 0]
    assert torch.equal(rows, torch.arange(session.num_frames * T))  # every <v>, in order
    with torch.no_grad():
        logits = model(ids, feats[: session.num_frames]).logits[0]
    last_v = ((sources >= 0) & (sources % T == T - 1)).nonzero().flatten()
    rows_ = logits[last_v]
    p = rows_.float().softmax(-1)[:, model.interval_token_id]
    comma_argmax = rows_.argmax(-1) == model.interval_token_id
    return p, fire_mask(rows_, model.interval_token_id, threshold), comma_argmax


def assert_matches_teacher_forcing(
    model: LiveModel, session: StreamingSession, feats: torch.Tensor
) -> torch.Tensor:
    p, fired, comma_argmax = teacher_forced(model, session, feats, session.threshold)
    got_p = torch.tensor([f.interval_prob for f in session.frames])
    torch.testing.assert_close(got_p, p, rtol=0, atol=1e-5)
    assert [f.fired for f in session.frames] == fired.tolist()
    return comma_argmax


def test_full_kv_follows_the_training_template(trained: tuple[LiveModel, Any]) -> None:
    model, tok = trained
    feats = event_frames(20, [3, 9, 15], torch.Generator().manual_seed(7))
    s = StreamingSession(model, tok, system=SYSTEM, threshold=0.725, max_reply_tokens=5)
    replies = {}
    for i in range(20):
        replies[i] = s.push_frame(feats[i], i / 2)
        if i == 5:
            assert s.add_user("What now?", i / 2, respond=False) is None
        if i == 12:
            assert s.add_user("What now?", i / 2) == "ok"
    assert {i for i, r in replies.items() if r is not None} == {3, 9, 15}
    assert all(r == "ok" for r in replies.values() if r is not None)
    assert [(e["time"], e["role"], e["text"]) for e in s.timeline] == [
        (1.5, "assistant", "ok"), (2.5, "user", "What now?"), (4.5, "assistant", "ok"),
        (6.0, "user", "What now?"), (6.0, "assistant", "ok"), (7.5, "assistant", "ok"),
    ]  # fmt: skip
    # Token for token what the training template renders for the same conversation (its last
    # "]" is not fed yet: the last frame stayed silent and its "," waits for the next frame).
    conv = Conversation(
        [
            StreamTurn(4, learn=True), AssistantTurn("ok", learn=True),
            StreamTurn(2, learn=True), UserTurn("What now?"),
            StreamTurn(4, learn=True), AssistantTurn("ok", learn=True),
            StreamTurn(3, learn=True), UserTurn("What now?"), AssistantTurn("ok", learn=True),
            StreamTurn(3, learn=True), AssistantTurn("ok", learn=True),
            StreamTurn(4, learn=True),
        ],
        system=SYSTEM,
    )  # fmt: skip
    want = encode_conversation(tok, conv, frame_tokens=T).input_ids.tolist()
    assert s.token_ids == want[:-1] and tok.convert_ids_to_tokens(want[-1]) == "]"
    assert_matches_teacher_forcing(model, s, feats)
    assert len(s.latencies) == 20 and all(t > 0 for t in s.latencies)
    assert s.frames[-1].cache_tokens == s.cache_tokens == len(s.token_ids)


def test_full_kv_decisions_equal_teacher_forcing_at_a_threshold_between_probabilities(
    trained: tuple[LiveModel, Any],
) -> None:
    """θ inside the spread of P(,) on silent frames: some frames whose argmax is "," fire
    because of θ, others stay silent; every decision and P(,) equals the teacher-forced one."""
    model, tok = trained
    feats = event_frames(24, [5, 17], torch.Generator().manual_seed(8))
    probe = StreamingSession(model, tok, system=SYSTEM, threshold=0.725, max_reply_tokens=3)
    for i in range(24):
        probe.push_frame(feats[i], i / 2)
    silent = sorted(f.interval_prob for f in probe.frames if not f.fired)
    for quantile in (0.5, 0.3, 0.7, 0.2, 0.8):
        theta = silent[int(quantile * (len(silent) - 1))]
        s = StreamingSession(model, tok, system=SYSTEM, threshold=theta, max_reply_tokens=3)
        for i in range(24):
            s.push_frame(feats[i], i / 2)
        comma_argmax = assert_matches_teacher_forcing(model, s, feats)
        fired = torch.tensor([f.fired for f in s.frames])
        if (fired & comma_argmax).any() and (~fired).any():
            break
    else:
        pytest.fail(f"no θ among the silent P(,) {silent} gave both threshold fires and silence")
    # Bounded with a window that never fills is the same computation.
    b = StreamingSession(
        model, tok, system=SYSTEM, threshold=theta, max_reply_tokens=3, kv="bounded",
        window_tokens=10_000,
    )  # fmt: skip
    for i in range(24):
        b.push_frame(feats[i], i / 2)
    assert b.token_ids == s.token_ids and b.evicted_tokens == 0
    assert [f.interval_prob for f in b.frames] == pytest.approx(
        [f.interval_prob for f in s.frames], abs=1e-6
    )


def random_model(llm: Path) -> tuple[LiveModel, Any]:
    torch.manual_seed(0)
    model, tok = build_live(tiny_cfg(llm))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at 0: make the adapters matter
        for p in trainable_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval(), tok


def test_rotate_keys_moves_cached_keys_to_other_positions(tiny_llm: Path) -> None:
    """RoPE depends on relative positions only: a run at positions 300.. gives the logits of a
    run at 0.., and rotating its cached keys by -300 gives that run's cache."""
    model, tok = random_model(tiny_llm)
    conv = Conversation([StreamTurn(3, learn=True), AssistantTurn("ok", learn=True)], SYSTEM)
    s = encode_conversation(tok, conv, frame_tokens=T)
    feats = torch.randn(s.num_frames, T, D)
    n = len(s.input_ids)
    with torch.no_grad():
        at0 = model(s.input_ids, feats, use_cache=True)
        shifted = model(
            s.input_ids, feats, position_ids=torch.arange(300, 300 + n)[None], use_cache=True
        )
    torch.testing.assert_close(shifted.logits, at0.logits, rtol=1e-4, atol=1e-4)
    inv_freq = find_rotary(model).inv_freq
    for a, b in zip(at0.past_key_values.layers, shifted.past_key_values.layers, strict=True):
        torch.testing.assert_close(
            rotate_keys(b.keys, -300, inv_freq), a.keys, rtol=1e-4, atol=1e-4
        )
        assert not torch.allclose(b.keys, a.keys)  # the positions really differed
        torch.testing.assert_close(b.values, a.values, rtol=1e-4, atol=1e-4)
    # evict_middle: sinks untouched, the tail moved back by the number dropped.
    cache = at0.past_key_values
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    assert evict_middle(cache, 4, 6, inv_freq) == n - 10
    assert cache.get_seq_length() == 10
    for layer, (k, v) in zip(cache.layers, before, strict=True):
        torch.testing.assert_close(layer.keys[..., :4, :], k[..., :4, :], rtol=0, atol=0)
        torch.testing.assert_close(
            layer.keys[..., 4:, :], rotate_keys(k[..., -6:, :], 10 - n, inv_freq)
        )
        torch.testing.assert_close(layer.values, torch.cat([v[..., :4, :], v[..., -6:, :]], -2))


def fresh_logits(
    model: LiveModel, ids: list[int], sources: list[int], feats: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """A fresh forward over exactly ``ids`` at positions 0.. (``<v>`` filled from the feature
    rows ``sources``; a window may start inside a frame, so embeddings are built by hand)."""
    input_ids = torch.tensor(ids)
    v = input_ids == model.v_token_id
    embeds = model.llm.get_input_embeddings()(input_ids.masked_fill(v, 0))
    src = torch.tensor(sources)
    assert torch.equal(v, src >= 0)
    embeds[v] = model.connector(feats.reshape(-1, D)[src[v]])
    out = model.llm(inputs_embeds=embeds[None], use_cache=True)
    return out.logits[0], out.past_key_values


@pytest.fixture(scope="module")
def one_layer_llm(tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_llm`` with one decoder layer: its cached keys/values depend only on each token and
    its position, so a bounded cache must equal a fresh forward over the kept tokens exactly."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llm1") / "tiny-llama-1layer"
    cfg = AutoConfig.from_pretrained(tiny_llm)
    cfg.num_hidden_layers = 1
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llm).save_pretrained(out)
    return out


def test_bounded_cache_is_a_contiguous_cache_of_the_kept_tokens(
    one_layer_llm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one layer nothing in the cache depends on evicted context, so after every eviction
    each step's logits must equal a fresh forward over sinks + window at positions 0..n-1: this
    checks the eviction, the RoPE re-rotation and the contiguous positions together."""
    model, tok = random_model(one_layer_llm)
    s = StreamingSession(
        model, tok, system=SYSTEM, threshold=0.0, max_reply_tokens=3, kv="bounded",
        window_tokens=24, evict_tokens=5,
    )  # fmt: skip
    feats = torch.randn(40, T, D)
    steps: list[tuple[list[int], list[int], torch.Tensor, int]] = []
    feed = s._feed

    def spy(ids: list[int], sources: list[int], features: torch.Tensor | None) -> torch.Tensor:
        logits = feed(ids, sources, features)
        steps.append((list(s.token_ids), list(s.token_sources), logits, len(ids)))
        return logits

    monkeypatch.setattr(s, "_feed", spy)
    for i in range(40):
        s.push_frame(feats[i], i / 2)
        if i == 20:
            s.add_user("What now?", i / 2, respond=False)
    assert s.evicted_tokens > 100  # many evictions happened
    system_ids = tok(tok.bos_token + SYSTEM + "\n", add_special_tokens=False)["input_ids"]
    assert s.sink_tokens == len(system_ids) and s.token_ids[: s.sink_tokens] == system_ids
    for ids, sources, logits, n_new in steps:
        with torch.no_grad():
            fresh, cache = fresh_logits(model, ids, sources, feats)
        torch.testing.assert_close(logits, fresh[-n_new:], rtol=1e-4, atol=1e-4)
    # The last step's fresh cache is the session's cache, entry for entry.
    kept: Any = s.cache.layers[0]
    torch.testing.assert_close(kept.keys, cache.layers[0].keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kept.values, cache.layers[0].values)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_bounded(
    model: LiveModel, tok: Any, n_frames: int, window: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[StreamingSession, list[int], dict[int, int]]:
    """Stream ``n_frames`` frames (an event every 7th) through a bounded session, checking the
    cache bound after every frame; returns the session, every id fed, RSS at some frames."""
    max_reply = 5
    s = StreamingSession(
        model, tok, system=SYSTEM, threshold=0.725, max_reply_tokens=max_reply, kv="bounded",
        window_tokens=window, evict_tokens=window // 8,
    )  # fmt: skip
    fed: list[int] = []
    feed = s._feed

    def spy(ids: list[int], sources: list[int], features: torch.Tensor | None) -> torch.Tensor:
        fed.extend(ids)
        return feed(ids, sources, features)

    monkeypatch.setattr(s, "_feed", spy)
    # One frame brings at most: a pending eos, "\n[" (2 tokens) and its T <v>; a reply at most
    # "]\nAssistant:" (4 tokens) and max_reply tokens.
    bound = s.sink_tokens + window + (1 + 2 + T) + (4 + max_reply)
    g = torch.Generator().manual_seed(3)
    rss: dict[int, int] = {}
    for i in range(n_frames):
        s.push_frame(event_frames(1, [0] if i % 7 == 6 else [], g)[0], i / 2)
        assert s.cache_tokens <= bound, (i, s.cache_tokens, bound)
        assert len(s.token_ids) == s.cache_tokens
        if i + 1 in (n_frames // 4, n_frames):
            rss[i + 1] = rss_bytes()
    assert max(f.cache_tokens for f in s.frames) > s.sink_tokens + window  # the bound is tight
    assert sum(f.fired for f in s.frames) >= n_frames // 8  # replies did happen
    # Sinks + the most recent tokens are what is kept.
    n = s.cache_tokens
    assert s.token_ids == fed[: s.sink_tokens] + fed[len(fed) - (n - s.sink_tokens) :]
    return s, fed, rss


def test_bounded_kv_stays_bounded_and_flat(
    trained: tuple[LiveModel, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = trained
    s, fed, rss = run_bounded(model, tok, 400, 48, monkeypatch)
    assert s.evicted_tokens == len(fed) - s.cache_tokens > 10 * (s.sink_tokens + 48)
    growth = rss[400] - rss[100]
    assert growth < 4 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over 300 frames"


@pytest.mark.slow
def test_bounded_kv_over_5000_frames(
    trained: tuple[LiveModel, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endless-stream check: 5,000 frames (about 40 s here); memory and per-frame time flat."""
    model, tok = trained
    s, _, rss = run_bounded(model, tok, 5000, 400, monkeypatch)
    growth = rss[5000] - rss[1250]
    assert growth < 8 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over 3,750 frames"
    lat = s.latencies
    early, late = statistics.median(lat[1000:1500]), statistics.median(lat[4500:5000])
    assert late < 2.0 * early, (early, late)  # loose: the machine is shared
