"""Ego4D LTA questions (data/ego4d_lta.py) against expectations written out from VideoLLM-online's
rules (data/ego4d/lta.py, data/utils.py, data/ego4d/ego4d.py, data/stream.py). The store runs at
2 fps; every frame number below is worked out by hand in the comment beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data import LIVE_SYSTEM_PROMPT, AnnotationError
from data.benchmarks import NOT_DONE_IN_STORE, NOT_IN_STORE, BenchmarkSample
from data.ego4d_lta import LtaTaxonomy, lta_word, read_ego4d_lta, read_lta_taxonomy

FPS = 2.0
# Taxonomy rows as fho_lta_taxonomy.json writes them -> words: take, put, wash, turn off /
# knife, sport bat, bat, nuts, cup.
VERB_ROWS = ["take_(pick,_grab)", "put_(place,_leave,_drop)", "wash", "turn_off_(switch_off)"]
NOUN_ROWS = ["knife", "bat_(sports)", "bat_(tool)", "nut_(food)", "cup"]

# Store frame counts: v1 long enough; v3 has 51 frames = 25.0 s ((51 - 1) / 2); v4 long.
FRAMES: dict[str, int | None] = {"v1": 1000, "v2": 1000, "v3": 51, "v4": 2000, "failed": None}

QUESTION_153 = (
    "After 153 video frames, anticipate the next 20 actions. Format your answer concisely,"
    " listing each action on a new line with a number prefix. No extra text output."
)

# c1's first question: actions 8..27 have verb k % 4 and noun k % 5.
C1_ANSWER_7 = """1. Take nuts.
2. Put cup.
3. Wash knife.
4. Turn off sport bat.
5. Take bat.
6. Put nuts.
7. Wash cup.
8. Turn off knife.
9. Take sport bat.
10. Put bat.
11. Wash nuts.
12. Turn off cup.
13. Take knife.
14. Put sport bat.
15. Wash bat.
16. Turn off nuts.
17. Take cup.
18. Put knife.
19. Wash sport bat.
20. Turn off bat."""
C1_LABELS_7 = (
    "0 3", "1 4", "2 0", "3 1", "0 2", "1 3", "2 4", "3 0", "0 1", "1 2",
    "2 3", "3 4", "0 0", "1 1", "2 2", "3 3", "0 4", "1 0", "2 1", "3 2",
)  # fmt: skip


def action(
    clip_uid: str,
    video_uid: str,
    parent: float,
    idx: int,
    start: float,
    end: float,
    *,
    labelled: bool = True,
) -> dict[str, Any]:
    """One ``clips`` entry as fho_lta_{split}.json has it (plus keys the reader ignores)."""
    entry: dict[str, Any] = {
        "clip_uid": clip_uid,
        "video_uid": video_uid,
        "clip_id": 7,
        "clip_parent_start_sec": parent,
        "clip_parent_end_sec": parent + 480.0,
        "action_idx": idx,
        "action_clip_start_sec": start,
        "action_clip_end_sec": end,
        "action_clip_start_frame": round(start * 30),
        "action_clip_end_frame": round(end * 30),
    }
    if labelled:
        entry |= {"verb": "x", "verb_label": idx % 4, "noun": "y", "noun_label": idx % 5}
    return entry


def clip(
    clip_uid: str, video_uid: str, parent: float, n: int, *, labelled: bool = True
) -> list[dict[str, Any]]:
    """``n`` actions: action k from 10k + 0.25 s to 10k + 5.75 s of the clip."""
    return [
        action(clip_uid, video_uid, parent, k, 10 * k + 0.25, 10 * k + 5.75, labelled=labelled)
        for k in range(n)
    ]


def lta_entries(*, labelled: bool = True) -> list[dict[str, Any]]:
    c1 = clip("c1", "v1", 100.0, 29, labelled=labelled)  # 29 actions: two questions
    c1 = c1[::2] + c1[1::2]  # not in action_idx order in the file
    c2 = clip("c2", "v2", 0.0, 27, labelled=labelled)  # 27 < 8 + 20: no question
    # c3: 28 actions; the first starts before the video (-0.5 s), the eighth ends after it.
    c3 = clip("c3", "v3", 0.5, 28, labelled=labelled)
    c3[0]["action_clip_start_sec"] = -1.0
    c3[7]["action_clip_end_sec"] = 39.5  # 40.0 s on the video > 25.0 s
    # c4: the eighth action ends at 600.5 s: 1202 frames, over the 1,200 cap.
    c4 = clip("c4", "v4", 0.0, 28, labelled=labelled)
    c4[0]["action_clip_start_sec"] = 0.0
    c4[7]["action_clip_end_sec"] = 600.5
    missing = clip("c5", "not-extracted", 0.0, 28, labelled=labelled)
    failed = clip("c6", "failed", 0.0, 28, labelled=labelled)
    return c1 + c2 + c3 + c4 + missing + failed


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def lta_folder(tmp_path: Path, split: str = "val", *, labelled: bool = True) -> Path:
    folder = tmp_path / "annotations"
    write(folder / "fho_lta_taxonomy.json", {"verbs": VERB_ROWS, "nouns": NOUN_ROWS})
    write(
        folder / f"fho_lta_{split}.json", {"version": "v2", "clips": lta_entries(labelled=labelled)}
    )
    return folder


def by_id(samples: list[BenchmarkSample]) -> dict[str, BenchmarkSample]:
    return {s.sample_id: s for s in samples}


# --- taxonomy ---------------------------------------------------------------------------------


def test_taxonomy_words_use_the_no_overlap_replacements() -> None:
    assert [lta_word(r) for r in VERB_ROWS] == ["take", "put", "wash", "turn off"]
    assert [lta_word(r) for r in NOUN_ROWS] == ["knife", "sport bat", "bat", "nuts", "cup"]
    rows = {
        "pot_(planter)": "flowerpot",
        "bat_(sports)": "sport bat",
        "bat_(tool)": "bat",
        "nut_(food)": "nuts",
        "nut_(tool)": "nut",
        "chip_(food)": "snack",
        "chip_(wood'_metal),": "chips",
        "chip_(wood,_metal)": "chip",
        "cutting_board": "cutting board",
        "pot": "pot",
    }
    assert {r: lta_word(r) for r in rows} == rows


def test_taxonomy_actions_and_most_common(tmp_path: Path) -> None:
    folder = lta_folder(tmp_path)
    tax = read_lta_taxonomy(folder / "fho_lta_taxonomy.json")
    assert tax.verbs == ("take", "put", "wash", "turn off")
    assert tax.nouns == ("knife", "sport bat", "bat", "nuts", "cup")
    assert len(tax.action_ids) == 20
    assert tax.action_ids["turn off sport bat"] == (3, 1)
    assert tax.action_ids["take knife"] == (0, 0)
    # Every text made once: the first made (first verb, first noun).
    assert tax.most_common_action == "take knife"


def test_taxonomy_repeated_action_text_is_most_common_and_keeps_the_later_ids() -> None:
    # pick + up cup, pick + cup, pick up + up cup, pick up + cup: "pick up cup" is made twice.
    tax = LtaTaxonomy.from_rows(["pick", "pick_up"], ["up_cup", "cup"])
    assert tax.action_ids == {
        "pick up cup": (1, 1),
        "pick cup": (0, 1),
        "pick up up cup": (1, 0),
    }
    assert tax.most_common_action == "pick up cup"


# --- questions --------------------------------------------------------------------------------


def test_questions_windows_rounding_and_answers(tmp_path: Path) -> None:
    found = read_ego4d_lta(lta_folder(tmp_path), split="val", fps=FPS, frames=FRAMES)
    samples = by_id(found.samples)
    # c1 gives two questions (29 - 28 + 1), in action_idx order though the file is not.
    assert [s.sample_id for s in found.samples[:2]] == ["lta/c1/7", "lta/c1/8"]
    first = samples["lta/c1/7"]
    # start 100 + 0.25 = 100.25 s -> 200.5 slots -> round half to even 200 -> frame 200;
    # end 100 + 75.75 = 175.75 s -> 351.5 -> 352 (even) -> frames 200..352 inclusive.
    assert (first.video_id, first.first_frame, first.stop_frame) == ("v1", 200, 353)
    assert first.task == "lta"
    assert first.question == QUESTION_153
    assert first.answer == C1_ANSWER_7
    assert first.labels == C1_LABELS_7
    assert first.system == LIVE_SYSTEM_PROMPT
    assert first.frame_indices is None
    assert dict(first.meta) == {
        "clip_uid": "c1",
        "last_visible_action_idx": 7,
        "verb_labels": [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3],
        "noun_labels": [3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2],
    }
    second = samples["lta/c1/8"]
    # start 110.25 s -> 220.5 -> 220; end 185.75 s -> 371.5 -> 372.
    assert (second.first_frame, second.stop_frame) == (220, 373)
    assert second.question == QUESTION_153
    assert second.labels[0] == "1 4" and second.labels[-1] == "0 3"  # actions 9 and 28
    assert second.answer is not None
    assert second.answer.split("\n")[0] == "1. Put cup."
    assert second.answer.split("\n")[-1] == "20. Take nuts."


def test_times_clamped_to_the_stored_video(tmp_path: Path) -> None:
    found = read_ego4d_lta(lta_folder(tmp_path), split="val", fps=FPS, frames=FRAMES)
    c3 = by_id(found.samples)["lta/c3/7"]
    # start 0.5 - 1.0 = -0.5 s -> -1 slot -> clamped to 0; end 0.5 + 39.5 = 40 s, clamped to the
    # duration (51 - 1) / 2 = 25.0 s -> frame 50: frames 0..50, all 51 stored frames.
    assert (c3.video_id, c3.first_frame, c3.stop_frame) == ("v3", 0, 51)
    assert c3.question.startswith("After 51 video frames, anticipate")


def test_window_over_the_cap_is_asked_with_no_frames(tmp_path: Path) -> None:
    found = read_ego4d_lta(lta_folder(tmp_path), split="val", fps=FPS, frames=FRAMES)
    c4 = by_id(found.samples)["lta/c4/7"]
    # 0 s -> frame 0; 600.5 s -> frame 1201: 1202 frames > 1200 -> cut off whole.
    assert (c4.first_frame, c4.stop_frame, c4.num_frames) == (0, 0, 0)
    assert c4.question.startswith("After 1202 video frames, anticipate the next 20 actions.")
    assert c4.answer is not None and len(c4.labels) == 20
    assert sum(found.adjusted.values()) == 1
    (reason,) = found.adjusted
    assert "1200-frame cap" in reason


def test_cap_boundary_keeps_a_window_of_exactly_the_cap(tmp_path: Path) -> None:
    folder = lta_folder(tmp_path)
    at_cap = by_id(
        read_ego4d_lta(folder, split="val", fps=FPS, frames=FRAMES, window_frames=153).samples
    )
    assert (at_cap["lta/c1/7"].first_frame, at_cap["lta/c1/7"].stop_frame) == (200, 353)
    below = read_ego4d_lta(folder, split="val", fps=FPS, frames=FRAMES, window_frames=152)
    cut = by_id(below.samples)["lta/c1/7"]
    assert (cut.first_frame, cut.stop_frame) == (200, 200)
    assert cut.question == QUESTION_153  # the uncut count
    # Over 152: c1's two windows (153 frames each) and c4's (1202); c3's 51 frames stay.
    assert sum(below.adjusted.values()) == 3


def test_skips_are_counted(tmp_path: Path) -> None:
    found = read_ego4d_lta(lta_folder(tmp_path), split="val", fps=FPS, frames=FRAMES)
    assert sorted(s.sample_id for s in found.samples) == [
        "lta/c1/7",
        "lta/c1/8",
        "lta/c3/7",
        "lta/c4/7",
    ]
    assert found.skipped == {
        "clips with fewer than 28 actions": 1,  # c2
        NOT_IN_STORE: 1,  # c5
        NOT_DONE_IN_STORE: 1,  # c6
    }
    assert isinstance(found.taxonomy, LtaTaxonomy)
    assert found.categories == {}


def test_test_unannotated_has_no_answers_or_labels(tmp_path: Path) -> None:
    folder = lta_folder(tmp_path, "test_unannotated", labelled=False)
    found = read_ego4d_lta(folder, split="test_unannotated", fps=FPS, frames=FRAMES)
    assert len(found.samples) == 4
    first = by_id(found.samples)["lta/c1/7"]
    assert (first.first_frame, first.stop_frame, first.question) == (200, 353, QUESTION_153)
    assert first.answer is None
    assert first.labels == ()
    assert dict(first.meta) == {
        "clip_uid": "c1",
        "last_visible_action_idx": 7,
        "verb_labels": None,
        "noun_labels": None,
    }


def test_path_may_be_the_split_file(tmp_path: Path) -> None:
    folder = lta_folder(tmp_path, "train")
    from_file = read_ego4d_lta(folder / "fho_lta_train.json", split="train", fps=FPS, frames=FRAMES)
    from_folder = read_ego4d_lta(folder, split="train", fps=FPS, frames=FRAMES)
    assert from_file.samples == from_folder.samples
    assert len(from_file.samples) == 4


def test_sample_trains_as_question_frames_answer(tmp_path: Path) -> None:
    found = read_ego4d_lta(lta_folder(tmp_path), split="val", fps=FPS, frames=FRAMES)
    conv = by_id(found.samples)["lta/c1/7"].conversation(with_answer=True)
    assert [type(t).__name__ for t in conv.turns] == ["UserTurn", "StreamTurn", "AssistantTurn"]


# --- annotation problems ----------------------------------------------------------------------


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="fho_lta_val.json"):
        read_ego4d_lta(tmp_path, split="val", fps=FPS, frames=FRAMES)
    write(tmp_path / "fho_lta_val.json", {"clips": []})
    with pytest.raises(AnnotationError, match="fho_lta_taxonomy.json"):
        read_ego4d_lta(tmp_path, split="val", fps=FPS, frames=FRAMES)


def test_bad_split_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_unannotated"):
        read_ego4d_lta(lta_folder(tmp_path), split="test", fps=FPS, frames=FRAMES)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], r"top level: expected an object"),
        ({"videos": []}, r"top level: missing key 'clips'"),
        ({"clips": {}}, r"clips: expected a list"),
        ({"clips": [3]}, r"clips\[0\]: expected an object"),
    ],
)
def test_wrong_shapes(tmp_path: Path, data: Any, message: str) -> None:
    folder = lta_folder(tmp_path)
    write(folder / "fho_lta_val.json", data)
    with pytest.raises(AnnotationError, match=message) as err:
        read_ego4d_lta(folder, split="val", fps=FPS, frames=FRAMES)
    assert "fho_lta_val.json" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("video_uid", None, r"clips\[3\]: missing key 'video_uid'"),
        ("action_idx", 3.0, r"clips\[3\]\.action_idx: expected an integer"),
        ("action_clip_end_sec", "5", r"clips\[3\]\.action_clip_end_sec: expected a finite number"),
        ("verb_label", 4, r"clips\[3\]\.verb_label: expected a taxonomy index in \[0, 4\)"),
        ("noun_label", None, r"clips\[3\]: missing key 'noun_label'"),
    ],
)
def test_bad_entries_name_the_entry(tmp_path: Path, key: str, value: Any, message: str) -> None:
    folder = lta_folder(tmp_path)
    entries = lta_entries()
    # The file lists c1's even actions first: clips[3] is action 6, clips[8] action 16. Labels
    # are read only for the actions to anticipate (8..28), so the label keys break action 16.
    target = 3 if key not in ("verb_label", "noun_label") else 8
    if value is None:
        del entries[target][key]
    else:
        entries[target][key] = value
    write(folder / "fho_lta_val.json", {"clips": entries})
    message = message.replace(r"clips\[3\]", rf"clips\[{target}\]")
    with pytest.raises(AnnotationError, match=message) as err:
        read_ego4d_lta(folder, split="val", fps=FPS, frames=FRAMES)
    assert "fho_lta_val.json" in str(err.value)


def test_repeated_action_idx_in_a_clip(tmp_path: Path) -> None:
    folder = lta_folder(tmp_path)
    entries = lta_entries()
    entries[1]["action_idx"] = 0  # c1's action 2 now shares index 0 with action 0
    write(folder / "fho_lta_val.json", {"clips": entries})
    with pytest.raises(AnnotationError, match=r"clips\[1\]: clip 'c1' repeats action_idx 0"):
        read_ego4d_lta(folder, split="val", fps=FPS, frames=FRAMES)


def test_bad_taxonomy(tmp_path: Path) -> None:
    folder = lta_folder(tmp_path)
    write(folder / "fho_lta_taxonomy.json", {"verbs": ["take", 3], "nouns": ["cup"]})
    with pytest.raises(
        AnnotationError, match=r"fho_lta_taxonomy.json: verbs\[1\]: expected a string"
    ):
        read_ego4d_lta(folder, split="val", fps=FPS, frames=FRAMES)
    write(folder / "fho_lta_taxonomy.json", {"verbs": ["take"], "nouns": []})
    with pytest.raises(AnnotationError, match=r"nouns: the list is empty"):
        read_ego4d_lta(folder, split="val", fps=FPS, frames=FRAMES)
