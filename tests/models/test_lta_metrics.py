"""Ego4D LTA parsing and edit distances (models/lta_metrics.py) against values worked out by hand
from VideoLLM-online's data/ego4d/lta.py (text_to_verb_noun_ids, edit_distance, AUED)."""

from __future__ import annotations

import Levenshtein
import pytest

from data.ego4d_lta import LtaTaxonomy
from models.lta_metrics import (
    aued,
    edit_distance,
    lta_sample_scores,
    lta_scores,
    lta_submission,
    parse_lta,
)

# take, put, wash x cup, cap, knife: actions "take cup" (0, 0) ... "wash knife" (2, 2).
TAX = LtaTaxonomy.from_rows(["take", "put", "wash"], ["cup", "cap", "knife"])


def test_numbered_lines_lowercased_and_padded_with_the_last() -> None:
    text = "1. Take cup.\n2. PUT KNIFE..\n3. Wash cap."
    assert parse_lta(text, TAX) == [(0, 0), (1, 2)] + [(2, 1)] * 18


def test_lines_without_a_number_are_dropped() -> None:
    text = (
        "Sure! Here are the next actions:\n"
        "1. Take cup.\n"
        "then wash the knife\n"  # no "N." -> dropped
        "Step 2. wash knife.\n"  # "word N." counts
        "I will 3. put cup\n"  # "word N." anywhere in the line
        "- 4.put cap"  # no space needed after the number
    )
    assert parse_lta(text, TAX, num_actions=5) == [(0, 0), (2, 2), (1, 0), (1, 1), (1, 1)]


def test_more_actions_than_asked_are_cut() -> None:
    text = "\n".join(f"{n}. Wash knife." for n in range(1, 26)) + "\n26. Take cup."
    assert parse_lta(text, TAX) == [(2, 2)] * 20
    assert parse_lta("1. take cup\n2. put cup\n3. wash cup", TAX, num_actions=2) == [(0, 0), (1, 0)]


def test_nothing_parsed_falls_back_to_the_most_common_action() -> None:
    assert parse_lta("", TAX) == [(0, 0)] * 20  # every text made once: "take cup"
    assert parse_lta("I cannot tell.\nNo idea", TAX, num_actions=3) == [(0, 0)] * 3
    # "pick up cup" is made by (pick, up cup) and (pick up, cup): the most common, ids (1, 1).
    repeated = LtaTaxonomy.from_rows(["pick", "pick_up"], ["up_cup", "cup"])
    assert parse_lta("", repeated, num_actions=2) == [(1, 1), (1, 1)]


def test_unknown_text_snaps_to_the_nearest_action_ties_alphabetical() -> None:
    # "take cop": 1 edit from "take cap" and from "take cup"; "take cap" sorts first.
    assert parse_lta("1. take cop", TAX, num_actions=1) == [(0, 1)]
    # "wash knives" -> "wash knife": v -> f and drop the s, 2 edits; nothing is nearer.
    assert parse_lta("1. wash knives", TAX, num_actions=1) == [(2, 2)]
    # Only the whole text's ends are stripped of spaces: "take cup " keeps its space and is
    # 1 edit from "take cup".
    assert parse_lta("1. take cup \n2. put cap", TAX, num_actions=2) == [(0, 0), (1, 1)]
    # Empty action text: as many edits as an action has letters; the shortest are "put cap" and
    # "put cup" (7), and "put cap" sorts first.
    assert parse_lta("1.", TAX, num_actions=1) == [(1, 1)]


def test_nearest_action_is_the_minimum_over_distance_then_text() -> None:
    big = LtaTaxonomy.from_rows(
        ["take", "put", "wash", "turn_off", "open", "close", "cut", "pour"],
        ["cup", "cap", "knife", "lid", "pot", "pan", "door", "dough", "tap", "bowl"],
    )
    for text in ["tak cup", "open pan", "cot dough", "close", "x", "turn on tap", "pour bowls"]:
        expected = min((Levenshtein.distance(text, a), a) for a in big.action_ids)[1]
        assert big.nearest_action(text) == expected, text


def test_edit_distance_min_over_beams_mean_over_questions() -> None:
    preds = [
        [[1, 2, 3, 4], [1, 2, 3, 5]],  # beam 0 exact: 0
        [[9, 9, 9, 9], [2, 3, 4, 1]],  # 4 substitutions (1.0) or 1 insert + 1 delete (0.5)
    ]
    labels = [[1, 2, 3, 4], [1, 2, 3, 4]]
    assert edit_distance(preds, labels) == pytest.approx(0.25)


def test_edit_distance_lowest_of_five_beams() -> None:
    label = list(range(20))
    beams = []
    for wrong in (20, 10, 5, 1, 3):  # beam b has its first `wrong` actions replaced
        beams.append([100 + z if z < wrong else z for z in range(20)])
    assert edit_distance([beams], [label]) == pytest.approx(1 / 20)


def test_aued_by_hand() -> None:
    # ED@1..4 of [1, 2, 3, 4] vs [1, 9, 3, 9]: 0, 1/2, 1/3, 2/4. Trapezoids: 1/4 + 5/12 + 5/12
    # = 13/12; divided by Z - 1 = 3: 13/36.
    assert aued([[[1, 2, 3, 4]]], [[1, 9, 3, 9]]) == pytest.approx(13 / 36)
    label = list(range(20))
    # All wrong: ED@z = 1 for every z -> area 19 -> 1.0. All right: 0.
    assert aued([[[50] * 20]], [label]) == pytest.approx(1.0)
    assert aued([[label]], [label]) == 0.0
    # Only the first wrong: ED@z = 1/z -> (H_20 - (1 + 1/20) / 2) / 19.
    first_wrong = [99, *label[1:]]
    assert aued([[first_wrong]], [label]) == pytest.approx(0.16172313984966746)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="N x K x Z"):
        edit_distance([[1, 2]], [[1, 2]])
    with pytest.raises(ValueError, match="Z >= 2"):
        aued([[[1]]], [[1]])


# Verb right but for step 2, noun right but for step 3: each one step of three; the action
# (both must match) two.
PRED = [[(0, 0), (9, 1), (2, 9)]]  # one beam
LABEL = [(0, 0), (1, 1), (2, 2)]


def test_verb_noun_action_scores() -> None:
    scores = lta_scores([PRED], [LABEL])
    # verb ED@1..3: 0, 1/2, 1/3 -> AUED (1/4 + 5/12) / 2 = 1/3
    # noun ED@1..3: 0, 0, 1/3 -> AUED (1/6) / 2 = 1/12
    # action ED@1..3: 0, 1/2, 2/3 -> AUED (1/4 + 7/12) / 2 = 5/12
    assert scores == pytest.approx(
        {
            "verb_ed3": 1 / 3,
            "noun_ed3": 1 / 3,
            "action_ed3": 2 / 3,
            "verb_aued": 1 / 3,
            "noun_aued": 1 / 12,
            "action_aued": 5 / 12,
        }
    )
    assert lta_sample_scores(PRED, LABEL) == pytest.approx(
        {
            "verb_ed3": 1 / 3,
            "noun_ed3": 1 / 3,
            "action_ed3": 2 / 3,
            "verb_aued": 1 / 3,
            "noun_aued": 1 / 12,
            "action_aued": 5 / 12,
        }
    )


def test_action_symbols_tell_pairs_apart() -> None:
    # (1, 2) and (2, 1) are different actions though they share ids.
    scores = lta_sample_scores([[(1, 2), (2, 1)]], [(2, 1), (1, 2)])
    assert scores == {
        "verb_ed2": 1.0,
        "noun_ed2": 1.0,
        "action_ed2": 1.0,
        "verb_aued": 1.0,  # ED@1 = ED@2 = 1
        "noun_aued": 1.0,
        "action_aued": 1.0,
    }
    with pytest.raises(ValueError, match="same number of beams"):
        lta_scores([[[(0, 0)]], [[(0, 0)], [(1, 1)]]], [[(0, 0)], [(0, 0)]])


def test_ids_outside_the_taxonomy() -> None:
    with pytest.raises(ValueError, match=r"verb id 9 is not in the taxonomy's \[0, 3\)"):
        lta_sample_scores(PRED, LABEL, TAX)  # PRED's step 2 has verb 9; TAX has 3 verbs
    with pytest.raises(ValueError, match=r"noun id 3 is not in the taxonomy's \[0, 3\)"):
        lta_sample_scores([[(0, 0), (1, 3)]], [(0, 0), (1, 1)], TAX)
    assert lta_sample_scores([[(0, 0), (1, 2)]], [(0, 0), (1, 1)], TAX)["noun_ed2"] == 0.5


def test_mean_of_sample_scores_is_the_set_score() -> None:
    # Question 1 as above; question 2 exact. Every score halves.
    both = lta_scores([PRED, [LABEL]], [LABEL, LABEL])
    assert both == pytest.approx(
        {
            "verb_ed3": 1 / 6,
            "noun_ed3": 1 / 6,
            "action_ed3": 1 / 3,
            "verb_aued": 1 / 6,
            "noun_aued": 1 / 24,
            "action_aued": 5 / 24,
        }
    )


def test_parsed_beams_to_scores() -> None:
    beams = [parse_lta(t, TAX, num_actions=2) for t in ("1. take cup\n2. put cap", "1. wash cup")]
    # beams: [(0,0),(1,1)] and [(2,0),(2,0)]; label (0,0),(1,1): the first beam is exact.
    assert lta_scores([beams], [[(0, 0), (1, 1)]])["action_ed2"] == 0.0


def test_submission_file() -> None:
    records = [
        {
            "clip_uid": "c1",
            "last_visible_action_idx": 7,
            "beams": [[(0, 3), (1, 4)], [(2, 0), (3, 1)]],
        },
        {"clip_uid": "c1", "last_visible_action_idx": 8, "beams": [[[5, 6], [7, 8]]]},
    ]
    assert lta_submission(records) == {
        "c1_7": {"verb": [[0, 1], [2, 3]], "noun": [[3, 4], [0, 1]]},
        "c1_8": {"verb": [[5, 7]], "noun": [[6, 8]]},
    }
    with pytest.raises(ValueError, match="'c1_7' appears twice"):
        lta_submission([records[0], records[0]])
    with pytest.raises(ValueError, match="missing \\['beams'\\]"):
        lta_submission([{"clip_uid": "c1", "last_visible_action_idx": 7}])
