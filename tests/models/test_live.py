"""The LIVE model built from a tiny local Llama through ``build_live`` — the path users take."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from data import AssistantTurn, Conversation, StreamTurn, UserTurn
from models.checkpoints import load_checkpoint
from models.live import (
    LiveConfig,
    LiveModel,
    build_live,
    live_loss,
    load_trainable,
    save_trainable,
    trainable_parameters,
)
from models.prompt import encode_conversation

D = 8  # feature width of the synthetic "vision encoder"
T = 2  # feature tokens per frame
SYSTEM = "You watch a video."


def tiny_cfg(llm: Path, **overrides: Any) -> LiveConfig:
    kwargs: dict[str, Any] = dict(
        llm=str(llm), vision_dim=D, frame_tokens=T, lora_r=8, lora_alpha=16, lora_dropout=0.0
    )
    return LiveConfig(**(kwargs | overrides))


def conversation() -> Conversation:
    return Conversation(
        [
            StreamTurn(2, learn=True),
            UserTurn("What now?"),
            AssistantTurn("ok", learn=True),
            StreamTurn(3, learn=True),
            AssistantTurn("go", learn=True),
        ],
        system=SYSTEM,
    )


def randomize_adapters(model: LiveModel, seed: int = 0) -> None:
    """LoRA B starts at zero (adapter = identity); make every trainable tensor non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_build_live_adds_placeholder_and_freezes_the_base(tiny_llm: Path) -> None:
    model, tok = build_live(tiny_cfg(tiny_llm))
    assert tok.convert_ids_to_tokens(model.v_token_id) == "<v>"
    assert model.interval_token_id == tok.convert_tokens_to_ids(",")
    # The embedding matrix is not resized (as the reference): <v> lies past it.
    assert model.llm.get_input_embeddings().weight.shape[0] == model.v_token_id
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("connector.")} == {
        "connector.0.weight", "connector.0.bias", "connector.2.weight", "connector.2.bias",
    }  # fmt: skip
    lora = {n for n in trainable if not n.startswith("connector.")}
    assert all(".lora_A." in n or ".lora_B." in n for n in lora)
    for target in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f".{target}.lora_A." in n for n in lora), target
    assert any(n.endswith("lm_head.lora_B.default.weight") for n in lora)


def test_build_live_names_the_override_when_the_llm_is_missing(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"model\.llm="):
        build_live(LiveConfig(llm=str(tmp_path / "nowhere"), vision_dim=D))
    with pytest.raises(ValueError, match="Valid choices"):
        LiveConfig(llm="x", vision_dim=D, dtype="fp8")


def test_live_loss_equals_a_manual_computation() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[3, -100, 1, -100, 6], [-100, 0, -100, -100, 2]])
    stream = torch.tensor([[True, False, False, False, True], [False, False, False, False, True]])
    weights = torch.where(stream, 2.5, 1.0) * (labels != -100)
    parts = live_loss(logits, labels, weights, stream)
    terms: list[torch.Tensor] = []
    lm: list[torch.Tensor] = []
    st: list[torch.Tensor] = []
    for b in range(2):
        for i in range(5):
            y = int(labels[b, i])
            if y == -100:
                continue
            nll = -torch.log_softmax(logits[b, i].double(), dim=-1)[y]
            terms.append(float(weights[b, i]) * nll)
            (st if stream[b, i] else lm).append(nll)
    assert parts.n_labels == 5 and parts.n_stream == 3 and parts.n_lm == 2
    assert parts.total.item() == pytest.approx(float(sum(terms) / 5), rel=1e-6)
    assert parts.lm.item() == pytest.approx(float(sum(lm) / 2), rel=1e-6)
    assert parts.stream.item() == pytest.approx(float(sum(st) / 3), rel=1e-6)
    # No labels: a zero loss, not NaN (a window with nothing learned must not poison a step).
    empty = live_loss(logits, torch.full_like(labels, -100), weights, stream)
    assert empty.total.item() == 0.0 and empty.n_labels == 0


def test_forward_loss_uses_the_sample_labels_and_weights(tiny_llm: Path, tokenizer: Any) -> None:
    model, tok = build_live(tiny_cfg(tiny_llm, stream_loss_weight=3.0))
    randomize_adapters(model)
    model.eval()
    s = encode_conversation(tok, conversation(), frame_tokens=T, stream_loss_weight=3.0)
    feats = torch.randn(s.num_frames, T, D)
    with torch.no_grad():
        out = model(s.input_ids, feats, labels=s.labels, weights=s.weights)
        default = model(s.input_ids, feats, labels=s.labels)  # weights from the config
    assert out.loss is not None and default.loss is not None
    logits = out.logits[0].double()
    nll = -torch.log_softmax(logits, dim=-1).gather(1, s.labels.clamp(min=0)[:, None])[:, 0]
    idx = (s.labels != -100).nonzero().flatten()
    manual = sum(float(s.weights[i] * nll[i]) for i in idx) / len(idx)
    assert out.loss.total.item() == pytest.approx(manual, rel=1e-5)
    assert out.loss.stream.item() == pytest.approx(float(nll[s.stream_positions].mean()), rel=1e-5)
    assert out.loss.lm.item() == pytest.approx(float(nll[s.lm_positions].mean()), rel=1e-5)
    assert out.loss.n_stream == 5 and out.loss.n_lm == len(s.lm_positions)
    assert default.loss.total.item() == pytest.approx(out.loss.total.item(), rel=1e-6)


def test_connector_output_lands_exactly_at_placeholders(tiny_llm: Path) -> None:
    model, tok = build_live(tiny_cfg(tiny_llm))
    randomize_adapters(model)
    model.eval()
    s = encode_conversation(tok, conversation(), frame_tokens=T)
    feats = torch.randn(s.num_frames, T, D)
    seen: dict[str, torch.Tensor] = {}

    def grab(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    decoder = model.llm.get_base_model().model  # LlamaModel: what receives the embeddings
    handle = decoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(s.input_ids, feats)
    finally:
        handle.remove()
    embeds = seen["embeds"][0]
    with torch.no_grad():
        visual = model.connector(feats.reshape(-1, D))
        table = model.llm.get_input_embeddings().weight
    assert torch.equal(embeds[s.frame_positions], visual)  # frame-major, token order kept
    text = torch.ones(len(s.input_ids), dtype=torch.bool)
    text[s.frame_positions] = False
    assert torch.equal(embeds[text], table[s.input_ids[text]])


def test_batched_features_and_kv_cache_match_single_forward(tiny_llm: Path) -> None:
    model, tok = build_live(tiny_cfg(tiny_llm))
    randomize_adapters(model)
    model.eval()
    s = encode_conversation(tok, conversation(), frame_tokens=T)
    feats = torch.randn(2, s.num_frames, T, D)
    with torch.no_grad():
        batched = model(s.input_ids.repeat(2, 1), feats).logits
        flat = model(s.input_ids.repeat(2, 1), feats.reshape(-1, T, D)).logits
        one = model(s.input_ids, feats[1]).logits
        # Streaming: the first stream turn, then the rest on the same cache.
        cut = int(s.frame_positions[2 * T - 1]) + 1  # just after the 2nd frame
        head = model(s.input_ids[:cut], feats[1, :2], use_cache=True)
        tail = model(s.input_ids[cut:], feats[1, 2:], past_key_values=head.past_key_values)
    torch.testing.assert_close(batched, flat)
    torch.testing.assert_close(batched[1], one[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        torch.cat([head.logits, tail.logits], dim=1), one, rtol=1e-4, atol=1e-4
    )


def test_feature_shape_errors_name_the_problem(tiny_llm: Path, tokenizer: Any) -> None:
    model, tok = build_live(tiny_cfg(tiny_llm))
    s = encode_conversation(tok, conversation(), frame_tokens=T)
    with pytest.raises(ValueError, match=r"4 frames \(8 feature tokens\) for 10 <v>"):
        model(s.input_ids, torch.randn(4, T, D))
    with pytest.raises(ValueError, match=r"model\.frame_tokens, model\.vision_dim"):
        model(s.input_ids, torch.randn(5, T, D + 1))
    with pytest.raises(ValueError, match="no frame_features"):
        model(s.input_ids)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llm: Path) -> None:
    feats = torch.randn(5, T, D)
    grads: list[dict[str, torch.Tensor | None]] = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same LoRA A and connector init in both models
        model, tok = build_live(tiny_cfg(tiny_llm, gradient_checkpointing=checkpointing))
        assert model.llm.get_base_model().is_activation_checkpointing == checkpointing
        s = encode_conversation(tok, conversation(), frame_tokens=T)
        out = model(s.input_ids, feats, labels=s.labels)
        assert out.loss is not None
        out.loss.total.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    plain, ckpt = grads
    assert plain.keys() == ckpt.keys()
    for name, g in ckpt.items():
        assert g is not None, name
        torch.testing.assert_close(g, plain[name])
    # Gradients reach the connector through the (checkpointed) layers.
    connector_grad = ckpt["connector.0.weight"]
    assert connector_grad is not None and float(connector_grad.abs().sum()) > 0


def test_save_and_load_trainable_round_trip(tiny_llm: Path, tmp_path: Path) -> None:
    model, tok = build_live(tiny_cfg(tiny_llm))
    randomize_adapters(model, seed=3)
    model.eval()
    s = encode_conversation(tok, conversation(), frame_tokens=T)
    feats = torch.randn(s.num_frames, T, D)
    with torch.no_grad():
        before = model(s.input_ids, feats).logits
    out = save_trainable(model, tmp_path / "ckpt")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert {"connector.safetensors", "live_config.json"} <= names
    assert "model.safetensors" not in names  # the base LLM is not copied
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter_model.safetensors"))
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved), sorted(saved)

    loaded, tok2 = load_trainable(out)  # peft PeftModel.from_pretrained underneath
    assert not loaded.training
    assert tok2.convert_tokens_to_ids("<v>") == model.v_token_id
    assert loaded.cfg == model.cfg
    with torch.no_grad():
        after = loaded(s.input_ids, feats).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # The adapter is really in use: the bare base model gives other logits.
    with torch.no_grad(), loaded.llm.disable_adapter():
        bare = loaded(s.input_ids, feats).logits
    assert not torch.allclose(bare, before)

    again, _ = load_trainable(out, llm=str(tiny_llm), is_trainable=True)
    assert again.training and len(trainable_parameters(again)) == len(trainable_parameters(model))
    with pytest.raises(FileNotFoundError, match="not a LIVE checkpoint"):
        load_trainable(tmp_path)


# --- learning: the response time must come from the frame features ------------------------

N_FRAMES = 6


def marked_sample(tok: Any, g: torch.Generator) -> tuple[Any, torch.Tensor, int]:
    """Frames are random vectors; feature 0 is +2 on "event" frames and -2 elsewhere. The
    assistant replies right after the event frame k (random) and after the last frame."""
    k = int(torch.randint(0, N_FRAMES - 1, (1,), generator=g))
    conv = Conversation(
        [
            StreamTurn(k + 1, learn=True),
            AssistantTurn("ok", learn=True),
            StreamTurn(N_FRAMES - k - 1, learn=True),
            AssistantTurn("ok", learn=True),
        ],
        system=SYSTEM,
    )
    feats = torch.randn(N_FRAMES, T, D, generator=g)
    feats[..., 0] = -2.0
    feats[[k, N_FRAMES - 1], :, 0] = 2.0
    return encode_conversation(tok, conv, frame_tokens=T), feats, k


def marked_batch(tok: Any, n: int, g: torch.Generator) -> dict[str, Any]:
    # Every sample has the same length (6 frames, 2 replies), so rows stack without padding.
    samples = [marked_sample(tok, g) for _ in range(n)]
    return {
        "input_ids": torch.stack([s.input_ids for s, _, _ in samples]),
        "frame_features": torch.stack([f for _, f, _ in samples]),
        "labels": torch.stack([s.labels for s, _, _ in samples]),
        "weights": torch.stack([s.weights for s, _, _ in samples]),
        "events": [k for _, _, k in samples],
    }


def test_learns_when_to_respond_from_features(tiny_llm: Path) -> None:
    torch.manual_seed(0)
    model, tok = build_live(tiny_cfg(tiny_llm))
    held_out = marked_batch(tok, 32, torch.Generator().manual_seed(123))
    events = held_out.pop("events")

    def evaluate() -> Any:
        model.eval()
        with torch.no_grad():
            out = model(**held_out)
        model.train()
        return out

    start = evaluate().loss.stream.item()
    opt = torch.optim.AdamW(trainable_parameters(model), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        batch = marked_batch(tok, 16, g)
        batch.pop("events")
        out = model(**batch)
        opt.zero_grad()
        out.loss.total.backward()
        opt.step()

    final = evaluate()
    assert final.loss.stream.item() < 0.1 * start, (start, final.loss.stream.item())
    # Argmax at every frame's last <v> on held-out samples: "]" exactly at the event frames.
    comma, close = tok.convert_tokens_to_ids([",", "]"])
    last_v = held_out["input_ids"] == model.v_token_id
    last_v &= held_out["labels"] != -100  # every frame is learned here
    pred = final.logits.argmax(-1)[last_v].view(32, N_FRAMES)
    for row, k in zip(pred.tolist(), events, strict=True):
        want = [close if f in (k, N_FRAMES - 1) else comma for f in range(N_FRAMES)]
        assert row == want, (k, tok.convert_ids_to_tokens(row))
    assert len(set(events)) > 3  # the event frame really varies across held-out samples


@pytest.mark.parametrize("file", ["adapter_model.safetensors", "connector.safetensors"])
@pytest.mark.parametrize("edit", ["missing", "extra", "mis-shaped"])
def test_a_partial_checkpoint_loads_not_at_all(
    tiny_llm: Path, tmp_path: Path, file: str, edit: str
) -> None:
    """Today a missing or extra LoRA tensor loads silently (a random factor stays in place) and
    a mis-shaped one is a RuntimeError; each must be a ValueError naming the tensor."""
    from safetensors.torch import load_file, save_file

    out = save_trainable(build_live(tiny_cfg(tiny_llm))[0], tmp_path / "ckpt")
    tensors = load_file(str(out / file))
    name = sorted(tensors)[-1]
    if edit == "missing":
        del tensors[name]
    elif edit == "extra":
        name = f"{name}_stray"
        tensors[name] = torch.zeros(2)
    else:
        tensors[name] = torch.zeros(3, 5)
    save_file(tensors, str(out / file))
    with pytest.raises(ValueError, match=rf"{file} does not fit the model \({edit} {name}"):
        load_trainable(out)


def test_load_errors_name_the_setting_of_the_caller(tiny_llm: Path, tmp_path: Path) -> None:
    """model.llm for build_live (job=train), job.llm for loading a checkpoint (eval, stream);
    a local-looking path is 'no such folder', never a hub id."""
    out = save_trainable(build_live(tiny_cfg(tiny_llm))[0], tmp_path / "ckpt")
    for ref in ("./nope", "~/no/such/llm", str(tmp_path / "gone")):
        with pytest.raises(FileNotFoundError, match=rf"^job\.llm='{re.escape(ref)}': no such"):
            load_checkpoint(out, llm=ref)
        with pytest.raises(FileNotFoundError, match=rf"^model\.llm='{re.escape(ref)}': no such"):
            build_live(LiveConfig(llm=ref, vision_dim=D, frame_tokens=T))
    with pytest.raises(FileNotFoundError, match=r"^job\.adapter='\./nope': no such folder"):
        load_checkpoint("./nope")
