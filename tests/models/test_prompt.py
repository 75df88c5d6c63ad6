"""The LIVE prompt layout and its labels, checked against tables worked out by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from data import AssistantTurn, Conversation, StreamTurn, UserTurn, conversation_from_messages
from models.prompt import (
    encode_conversation,
    encode_prompt,
    render_conversation,
    single_token_id,
)

W = 2.0  # stream_loss_weight used below, so stream and LM weights can be told apart
SYSTEM = "You watch a video."


def example() -> Conversation:
    return Conversation(
        turns=[
            StreamTurn(2, learn=True),
            UserTurn("What now?"),
            AssistantTurn("ok", learn=True),
            StreamTurn(3, learn=2),  # only the first 2 frames carry loss
            AssistantTurn("go", learn=False),
            StreamTurn(0, learn=True),  # renders nothing
            StreamTurn(1, learn=True),  # ends the text: "]" is the last character
        ],
        system=SYSTEM,
    )


EXAMPLE_TEXT = (
    "<s>You watch a video.\n"
    "\n[<v><v>,<v><v>]"
    "\nUser: What now?"
    "\nAssistant: ok</s>"
    "\n[<v><v>,<v><v>,<v><v>]"
    "\nAssistant: go</s>"
    "\n[<v><v>]"
)

# Worked out by hand from the template and the reference's learn ranges, for the GPT-2-style
# tiny tokenizer (byte-level: "Ċ" is "\n", "Ġ" a leading space; it keeps "]" and "\n" apart).
# (token, target of this position or None, weight)
EXPECTED = [
    ("<s>", None, 0),  # 0
    ("You", None, 0),
    ("Ġwatch", None, 0),
    ("Ġa", None, 0),
    ("Ġvideo", None, 0),
    (".", None, 0),  # 5
    ("Ċ", None, 0),  # system's "\n"
    ("Ċ", None, 0),  # stream's "\n"
    ("[", None, 0),
    ("<v>", None, 0),
    ("<v>", ",", W),  # 10: last <v> of frame 0 -> stay silent
    (",", None, 0),
    ("<v>", None, 0),
    ("<v>", "]", W),  # 13: last <v> of the stream's last frame -> "]"
    ("]", "Ċ", 1),  # the reference learns "]\n"; split in two, "]" -> "\n" is an LM label
    ("Ċ", None, 0),  # 15
    ("User", None, 0),
    (":", None, 0),
    ("ĠWhat", None, 0),
    ("Ġnow", None, 0),
    ("?", None, 0),  # 20
    ("Ċ", "Assistant", 1),  # learned reply = "Assistant: ok</s>"
    ("Assistant", ":", 1),
    (":", "Ġok", 1),
    ("Ġok", "</s>", 1),
    ("</s>", None, 0),  # 25
    ("Ċ", None, 0),
    ("[", None, 0),
    ("<v>", None, 0),
    ("<v>", ",", W),
    (",", None, 0),  # 30
    ("<v>", None, 0),
    ("<v>", ",", W),  # frame 1 of 3, learned (learn=2)
    (",", None, 0),
    ("<v>", None, 0),
    ("<v>", None, 0),  # 35: frame 2 not learned
    ("]", None, 0),
    ("Ċ", None, 0),
    ("Assistant", None, 0),  # unlearned reply
    (":", None, 0),
    ("Ġgo", None, 0),  # 40
    ("</s>", None, 0),
    ("Ċ", None, 0),
    ("[", None, 0),
    ("<v>", None, 0),
    ("<v>", "]", W),  # 45: the last frame of the text still targets "]"
    ("]", None, 0),  # nothing follows it
]


def test_render_matches_template() -> None:
    rendered = render_conversation(example(), bos="<s>", eos="</s>", frame_tokens=2)
    assert rendered.text == EXAMPLE_TEXT
    assert rendered.num_frames == 6 and rendered.num_learned_frames == 5
    # The worked example of docs/data.md ("The LIVE prompt"), verbatim.
    doc = Conversation(
        [
            StreamTurn(2, learn=True),
            UserTurn("What now?"),
            AssistantTurn("Cutting.", learn=True),
            StreamTurn(3, learn=True),
            AssistantTurn("Done.", learn=False),
        ],
        system="You watch.",
    )
    assert render_conversation(doc, bos="<s>", eos="</s>", frame_tokens=2).text == (
        "<s>You watch.\n\n[<v><v>,<v><v>]\nUser: What now?\nAssistant: Cutting.</s>"
        "\n[<v><v>,<v><v>,<v><v>]\nAssistant: Done.</s>"
    )
    # Default: 10 placeholders per frame; no bos when the tokenizer has none.
    one = render_conversation(Conversation([StreamTurn(1, True)], "S"), bos="", eos="</s>")
    assert one.text == "S\n\n[" + "<v>" * 10 + "]"


def test_labels_weights_and_positions_match_hand_worked_table(tokenizer: Any) -> None:
    s = encode_conversation(tokenizer, example(), frame_tokens=2, stream_loss_weight=W)
    assert s.text == EXAMPLE_TEXT
    assert tokenizer.convert_ids_to_tokens(s.input_ids.tolist()) == [t for t, _, _ in EXPECTED]
    ids = tokenizer.convert_tokens_to_ids
    expected_labels = [-100 if y is None else ids(y) for _, y, _ in EXPECTED]
    assert s.labels.tolist() == expected_labels
    assert s.weights.tolist() == [float(w) for _, _, w in EXPECTED]
    assert s.stream_positions.tolist() == [10, 13, 29, 32, 45]
    assert s.lm_positions.tolist() == [14, 21, 22, 23, 24]
    assert s.frame_positions.tolist() == [9, 10, 12, 13, 28, 29, 31, 32, 34, 35, 44, 45]
    assert s.num_frames == 6
    assert s.stream_mask.nonzero().flatten().tolist() == [10, 13, 29, 32, 45]
    assert s.input_ids.dtype == torch.long and s.weights.dtype == torch.float32


def test_llama3_style_tokenizer_learns_the_merged_stream_end(tiny_llm_llama3: Path) -> None:
    """With Llama-3's pre-tokenizer "]\\n" is one token: the responding frame targets it and no
    extra "\\n" label appears (what the reference's 2-character range was written for)."""
    from models.live import LiveConfig, build_live

    _, tok = build_live(LiveConfig(llm=str(tiny_llm_llama3), vision_dim=8, lora_r=2))
    conv = Conversation(
        [StreamTurn(2, True), AssistantTurn("ok", True), StreamTurn(1, False)], system=SYSTEM
    )
    s = encode_conversation(tok, conv, frame_tokens=2, stream_loss_weight=W)
    tokens = tok.convert_ids_to_tokens(s.input_ids.tolist())
    # By hand: <s> You Ġwatch Ġa Ġvideo .ĊĊ [ <v> <v> , <v> <v> ]Ċ Assistant : Ġok </s> Ċ [ ...
    assert tokens[:17] == [
        "<s>", "You", "Ġwatch", "Ġa", "Ġvideo", ".ĊĊ", "[", "<v>", "<v>", ",", "<v>", "<v>",
        "]Ċ", "Assistant", ":", "Ġok", "</s>",
    ]  # fmt: skip
    labelled = {i: tokens_of(tok, int(y)) for i, y in enumerate(s.labels.tolist()) if y != -100}
    assert labelled == {8: ",", 11: "]Ċ", 12: "Assistant", 13: ":", 14: "Ġok", 15: "</s>"}
    assert s.stream_positions.tolist() == [8, 11]
    assert s.weights[[8, 11]].tolist() == [W, W]
    assert s.lm_positions.tolist() == [12, 13, 14, 15]


def tokens_of(tok: Any, token_id: int) -> str:
    return str(tok.convert_ids_to_tokens(token_id))


def test_messages_in_the_reference_format_encode_the_same(tokenizer: Any) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "stream", "num_frames": 2, "learn": True},
        {"role": "user", "content": "What now?", "time": 1.0},
        {"role": "assistant", "content": "ok", "learn": True, "time": 1.0},
        {"role": "stream", "num_frames": 3, "learn": 2},
        {"role": "assistant", "content": "go"},  # no "learn": not learned, as the reference
        {"role": "stream", "num_frames": 1, "learn": True},
    ]
    conv = conversation_from_messages(messages, system=SYSTEM)
    a = encode_conversation(tokenizer, conv, frame_tokens=2)
    b = encode_conversation(tokenizer, example(), frame_tokens=2)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="valid roles"):
        conversation_from_messages([{"role": "narrator", "content": "x"}], system=SYSTEM)


def test_bad_turns_and_tokens_are_rejected(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="num_frames must be >= 0"):
        StreamTurn(-1, True)
    with pytest.raises(ValueError, match="learn must be a bool or an int"):
        StreamTurn(2, 3)
    with pytest.raises(TypeError, match="StreamTurn, UserTurn or AssistantTurn"):
        Conversation(turns=["hello"], system=SYSTEM)  # type: ignore[list-item]
    # A placeholder the tokenizer does not know is split into pieces: refuse, naming the key.
    with pytest.raises(ValueError, match=r"model\.v_token.*single token"):
        encode_conversation(tokenizer, example(), v_token="<frame>", frame_tokens=2)
    with pytest.raises(ValueError, match="must be a single token"):
        single_token_id(tokenizer, "What now?", what="test")


def test_tiny_tokenizer_has_what_the_layout_needs(tokenizer: Any) -> None:
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<pad>",
    )
    pieces = {"User": ["User"], "Assistant: ok": ["Assistant", ":", "Ġok"], "\n[": ["Ċ", "["]}
    for text, tokens in pieces.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == tokens
    for char in (",", "]", "[", "\n", "<v>"):
        single_token_id(tokenizer, char, what="test")


def benchmark_sample(num_frames: int) -> Any:
    from data.benchmarks import BenchmarkSample

    return BenchmarkSample(
        sample_id="s0",
        task="step",
        video_id="v0",
        first_frame=0,
        stop_frame=num_frames,
        question="What now?",
        answer="ok",
        labels=("ok",),
        system=SYSTEM,
    )


def test_generation_prompt_ends_the_text_with_assistant_colon() -> None:
    conv = benchmark_sample(2).conversation(with_answer=False)
    plain = render_conversation(conv, bos="<s>", eos="</s>", frame_tokens=2)
    assert plain.text == "<s>You watch a video.\n\nUser: What now?\n[<v><v>,<v><v>]"
    prompted = render_conversation(
        conv, bos="<s>", eos="</s>", frame_tokens=2, generation_prompt=True
    )
    # The reference's add_generation_prompt: "\nAssistant:" with no trailing space.
    assert prompted.text == plain.text + "\nAssistant:"
    # The last frame's "]\n" range, cut at the end of the plain text, is whole again.
    assert plain.learn_ranges == [(46, 47), (53, 54)]
    assert prompted.learn_ranges == [(46, 47), (53, 55)]
    assert (prompted.num_frames, prompted.num_learned_frames) == (2, 2)
    # The default is unchanged: no generation prompt.
    assert render_conversation(example(), bos="<s>", eos="</s>", frame_tokens=2).text == (
        EXAMPLE_TEXT
    )


def test_encode_prompt_tokens_and_frame_positions(tokenizer: Any) -> None:
    p = encode_prompt(
        tokenizer, benchmark_sample(2).conversation(with_answer=False), frame_tokens=2
    )
    assert p.text == "<s>You watch a video.\n\nUser: What now?\n[<v><v>,<v><v>]\nAssistant:"
    assert tokenizer.convert_ids_to_tokens(p.input_ids.tolist()) == [
        "<s>", "You", "Ġwatch", "Ġa", "Ġvideo", ".", "Ċ", "Ċ", "User", ":", "ĠWhat", "Ġnow",
        "?", "Ċ", "[", "<v>", "<v>", ",", "<v>", "<v>", "]", "Ċ", "Assistant", ":",
    ]  # fmt: skip
    assert p.frame_positions.tolist() == [15, 16, 18, 19]
    assert (p.num_frames, p.frame_tokens) == (2, 2)
    assert p.input_ids.dtype == torch.long
    # Zero frames: the stream renders nothing and the prompt holds no placeholder.
    empty = encode_prompt(tokenizer, benchmark_sample(0).conversation(with_answer=False))
    assert empty.text == "<s>You watch a video.\n\nUser: What now?\nAssistant:"
    assert empty.frame_positions.numel() == 0 and empty.num_frames == 0


@pytest.mark.parametrize("style", ["gpt2", "llama3"])
def test_prompt_tokens_are_a_prefix_of_the_training_tokens(
    style: str, tokenizer: Any, tiny_llm_llama3: Path
) -> None:
    """What the model is prompted with at evaluation is exactly the start of what it was trained
    on (question, frames, "\\nAssistant:"), token for token, with both tokenizer styles."""
    if style == "llama3":
        from models.live import LiveConfig, build_live

        _, tokenizer = build_live(LiveConfig(llm=str(tiny_llm_llama3), vision_dim=8, lora_r=2))
    sample = benchmark_sample(3)
    prompt = encode_prompt(tokenizer, sample.conversation(with_answer=False), frame_tokens=2)
    train = encode_conversation(tokenizer, sample.conversation(with_answer=True), frame_tokens=2)
    n = prompt.input_ids.numel()
    assert torch.equal(train.input_ids[:n], prompt.input_ids)
    assert train.text.startswith(prompt.text)
    assert torch.equal(train.frame_positions, prompt.frame_positions)
    # The first generated token is the answer's first token (" ok"), which training learns.
    assert tokens_of(tokenizer, int(train.labels[n - 1])) == "Ġok"


def test_encode_prompt_rejects_an_unknown_placeholder(tokenizer: Any) -> None:
    conv = benchmark_sample(1).conversation(with_answer=False)
    with pytest.raises(ValueError, match=r"model\.v_token.*single token"):
        encode_prompt(tokenizer, conv, v_token="<frame>", frame_tokens=2)
    with pytest.raises(ValueError, match="frame_tokens must be >= 1"):
        encode_prompt(tokenizer, conv, frame_tokens=0)
