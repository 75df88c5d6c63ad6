"""COIN scoring (models/coin_metrics.py) against results worked out by hand from the references'
compute_metrics (VideoLLM-online and ProVideLLM ``data/coin/benchmarks.py``). Levenshtein
distances are written out next to each case."""

from __future__ import annotations

import pytest

from models.coin_metrics import coin_accuracy, nearest_category, score_coin

PV = "providellm"
CARDS = ("take out the old card", "insert the new card", "insert the old card", "close the cover")
THREE = ("take out the old card", "insert the new card", "close the cover")


def score(correct: int, total: int, *predicted: str) -> dict[str, object]:
    return {"correct": correct, "total": total, "predicted": list(predicted)}


def test_single_answer_exact_and_trailing_dots() -> None:
    cats = ("cut bread", "spread butter")
    assert score_coin("step", "Cut bread.", ("cut bread",), cats) == score(1, 1, "cut bread")
    assert score_coin("next", "Cut bread...", ("cut bread",), cats) == score(1, 1, "cut bread")
    # fuzzy: "spred butter" is 1 from "spread butter"
    assert score_coin("step", "Spred butter", ("spread butter",), cats) == score(
        1, 1, "spread butter"
    )
    assert score_coin("step", "Spread butter.", ("cut bread",), cats) == score(
        0, 1, "spread butter"
    )
    assert score_coin(
        "task", "Replace SIM card.", ("replace sim card",), ("replace sim card", "make tea")
    ) == score(1, 1, "replace sim card")


def test_whitespace_is_not_stripped_in_videollm_online() -> None:
    cats = ("cut", "cut i")
    # "cut.  " keeps its dot (not last) and spaces: 3 from "cut", 2 from "cut i"
    assert score_coin("step", "Cut.  ", ("cut",), cats) == score(0, 1, "cut i")
    # ProVideLLM strips: "cut." is 1 from "cut", 2 from "cut i"
    assert score_coin("step", "Cut.  ", ("cut",), cats, protocol=PV) == score(1, 1, "cut")
    assert score_coin("step", "  Cut  ", ("cut",), cats, protocol=PV) == score(1, 1, "cut")


def test_ties_go_to_the_smaller_category() -> None:
    # "pour waterx" is 1 from both; min over (distance, category) picks "pour water"
    cats = ("pour waters", "pour water")
    assert nearest_category("pour waterx", cats) == "pour water"
    assert nearest_category("pour waterx", cats[::-1]) == "pour water"
    assert score_coin("step", "Pour waterx", ("pour waters",), cats) == score(0, 1, "pour water")
    assert score_coin("step", "Pour waterx", ("pour water",), cats) == score(1, 1, "pour water")


def test_empty_answer_snaps_to_the_shortest_category() -> None:
    cats = ("stir", "mix", "add", "pour water")
    assert score_coin("step", "", ("add",), cats) == score(1, 1, "add")  # "add" < "mix"
    assert score_coin("next", ".", ("mix",), cats) == score(0, 1, "add")  # "." -> ""
    assert score_coin("task", "", ("add",), cats, protocol=PV) == score(1, 1, "add")


def test_procedure_numbered_lines() -> None:
    answer = "1. Take out the old card.\n2. Insert the new card.\n3. Close the cover."
    # each line keeps "Take out the old card." (2 from its label: case and dot), fuzzy-matched
    assert score_coin("procedure", answer, THREE, CARDS) == score(3, 3, *THREE)
    assert score_coin("taskprocedure", answer, THREE, CARDS) == score(3, 3, *THREE)
    # a wrong second step: "Insert the old card." is 2 from "insert the old card"
    wrong = "1. Take out the old card.\n2. Insert the old card.\n3. Close the cover."
    assert score_coin("procedure", wrong, THREE, CARDS) == score(
        2, 3, THREE[0], "insert the old card", THREE[2]
    )


def test_procedure_fewer_and_more_lines_than_labels() -> None:
    one = "1. Take out the old card."
    assert score_coin("procedure", one, THREE, CARDS) == score(1, 1, THREE[0])
    four = "1. Take out the old card.\n2. Insert the new card.\n3. Close the cover.\n4. Close."
    assert score_coin("procedure", four, THREE, CARDS) == score(3, 3, *THREE)
    assert coin_accuracy(
        [score_coin("procedure", one, THREE, CARDS), score_coin("procedure", four, THREE, CARDS)]
    ) == pytest.approx(4 / 4)


def test_procedure_lines_without_numbers_and_empty() -> None:
    plain = "take out the old card\ninsert the new card"  # exact: no number to cut
    assert score_coin("procedure", plain, THREE, CARDS) == score(2, 2, *THREE[:2])
    # an empty answer is one empty line: the shortest category, scored against the first label
    assert score_coin("procedure", "", THREE, CARDS) == score(0, 1, "close the cover")
    # the line is cut at its LAST ". ": "Then go." is 2 from "then go"
    assert score_coin(
        "procedure", "1. Take it. Then go.", ("then go",), ("take it", "then go")
    ) == (score(1, 1, "then go"))


def test_procedure_lines_are_not_lower_cased() -> None:
    cats = ("cut", "put")
    # "Put" is 1 from both "put" and "cut": the tie goes to "cut"
    assert score_coin("procedure", "Put", ("put",), cats) == score(0, 1, "cut")
    # the trained single-step answer "Put." is 2 from both: also "cut"
    assert score_coin("procedure", "Put.", ("put",), cats) == score(0, 1, "cut")
    # a single-answer task lower-cases: exact
    assert score_coin("next", "Put.", ("put",), cats) == score(1, 1, "put")


def test_providellm_procedure_semicolons() -> None:
    answer = "take out the old card; Insert the new card ; close the cover"
    # parts stripped, not lower-cased: "Insert the new card" is 1 from its label
    assert score_coin("procedure", answer, THREE, CARDS, protocol=PV) == score(3, 3, *THREE)
    # newline-numbered output is one part: scored against the first label only
    lines = "1. take out the old card\n2. insert the new card"
    got = score_coin("taskprocedure", lines, THREE, CARDS, protocol=PV)
    assert (got["correct"], got["total"]) == (1, 1)
    # "a;b" without the space is one part
    assert score_coin("procedure", "cut;put", ("cut", "put"), ("cut", "put"), protocol=PV) == (
        score(1, 1, "cut")  # "cut;put" is 4 from both; "cut" < "put"
    )


def test_accuracy_and_bad_input() -> None:
    assert coin_accuracy([score(1, 1), score(2, 3), score(0, 1)]) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="no scored steps"):
        coin_accuracy([])
    with pytest.raises(ValueError, match="Valid choices"):
        score_coin("steps", "x", ("x",), ("x",))
    with pytest.raises(ValueError, match="Valid choices"):
        score_coin("step", "x", ("x",), ("x",), protocol="live")
    with pytest.raises(ValueError, match="one label"):
        score_coin("step", "x", ("x", "y"), ("x", "y"))
    with pytest.raises(ValueError, match="no categories"):
        score_coin("step", "x", ("y",), ())
    assert score_coin("step", "y", ("y",), ()) == score(1, 1, "y")  # exact needs no categories
