"""Integration: with the real default models, a two-hop question about an edited subject is read beyond the edit."""
from __future__ import annotations

from pathlib import Path

from indexer.encoder import TextEncoder
from indexer.index import build_index
from indexer.records import Document
from rag.pipeline import Pipeline

LANDMARKS = [
    Document("eiffel", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It is 330 metres tall "
             "and was built from 1887 to 1889."),
    Document("obama", "Barack Obama", "Barack Obama was born on August 4, 1961, in Honolulu, Hawaii. He married Michelle Robinson in 1992."),
]
PLACES = [
    Document("iraq", "Iraq", "Iraq is a country in Western Asia. Its capital and largest city is Baghdad."),
    Document("norway", "Norway", "Norway is a Nordic country in Northern Europe. Its capital and largest city is Oslo."),
    Document("kenya", "Kenya", "Kenya is a country in East Africa. Its capital and largest city is Nairobi."),
]


def test_two_hop_question_takes_the_second_hop_from_the_edits_answer(tmp_path: Path) -> None:
    build_index(tmp_path / "idx", PLACES, TextEncoder(device="cpu"))
    pipeline = Pipeline.load(tmp_path / "idx", device="cpu", writable=True)  # the shipped span reader, scope classifier, detector
    assert pipeline.two_hop is not None
    question = "What is the capital of the country Kim Myhr is a citizen of?"
    edit = pipeline.index.memory.add("Kim Myhr, who has a citizenship from Iraq.", question="Kim Myhr, who has a citizenship from",
                                     answer="Iraq", subject="Kim Myhr")
    answer = pipeline.ask(question, k=3, mode="hybrid")  # asked as "What is the capital of Iraq?"
    assert answer.edit == edit and answer.passages[0].doc_id == "iraq" and answer.text == "Baghdad"
    assert pipeline.ask("Kim Myhr, who has a citizenship from", k=3).text == "Iraq"  # the edit's own question: its answer
    unrelated = pipeline.ask("What is the capital of Kenya?", k=3)
    assert unrelated.edit is None
    assert Pipeline.load(tmp_path / "idx", device="cpu", two_hop="none").two_hop is None
    # Its relation threshold is a probability of the scope classifier: a cosine-threshold decider goes without it.
    assert Pipeline.load(tmp_path / "idx", device="cpu", scope="similarity").two_hop is None


def test_an_edit_leaves_questions_about_its_subject_that_ask_for_another_kind_of_answer(tmp_path: Path) -> None:
    """The scope classifier puts "How tall is the Eiffel Tower?" in the scope of an edit of where it is; the shipped
    answer-type classifier keeps it out (a number is asked for, not a place), and paraphrases in."""
    build_index(tmp_path / "idx", LANDMARKS, TextEncoder(device="cpu"))
    pipeline = Pipeline.load(tmp_path / "idx", device="cpu", writable=True)
    assert pipeline.answer_types is not None
    tower = pipeline.index.memory.add("The Eiffel Tower is in Rome.", question="Where is the Eiffel Tower?", answer="Rome", subject="Eiffel Tower")
    born = pipeline.index.memory.add("Barack Obama was born in Kenya.", question="Where was Barack Obama born?", answer="Kenya",
                                     subject="Barack Obama")
    asked = {"Which city is the Eiffel Tower in?": tower, "where is the eiffel tower located": tower, "How tall is the Eiffel Tower?": None,
             "When was the Eiffel Tower built?": None, "What is Barack Obama's birthplace?": born, "When was Barack Obama born?": None,
             "Who is Barack Obama's wife?": None}
    answers = pipeline.ask_many(list(asked), k=2)
    assert {a.question: a.edit for a in answers} == asked
    assert answers[0].text == "Rome" and answers[2].text != "Rome"
    pipeline.answer_types = None  # what the gate changes: the scope classifier alone claims them
    assert all(a.edit == tower for a in pipeline.ask_many(["How tall is the Eiffel Tower?", "When was the Eiffel Tower built?"], k=2))
