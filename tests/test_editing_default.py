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
    # The detector takes this rewording for two-hop; "the town of" only says what Gospić is, so it keeps the edit's answer
    # (it was asked as "Which country is Croatia?" and answered "Romania and Bulgaria").
    town = pipeline.index.memory.add("Gospić is a town in Croatia.", question="In which country is Gospić?", answer="Croatia",
                                     subject="Gospić")
    reworded = pipeline.ask("Which country is the town of Gospić in?", k=3)
    assert (reworded.edit, reworded.text, reworded.asked_as) == (town, "Croatia", None)
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
    # "Which agency" is of no confident kind; its answer names no number or date, so "When" and "How much" ask otherwise.
    apollo = pipeline.index.memory.add("The Apollo program was run by the European Space Agency.", question="Which agency ran "
                                       "the Apollo program?", answer="European Space Agency", subject="Apollo program")
    # A statement to complete is not held to the number check, however many numbers open it (a CounterFact paraphrase).
    native = pipeline.index.memory.add("Ferdinand de Saussure is native to Philadelphia.", question="Ferdinand de Saussure is native "
                                       "to", answer="Philadelphia", subject="Ferdinand de Saussure")
    asked = {"More than 205,000 individual negatives and growing. Ferdinand de Saussure was born in": native,
             "Which city is the Eiffel Tower in?": tower, "where is the eiffel tower located": tower, "How tall is the Eiffel Tower?": None,
             "When was the Eiffel Tower built?": None, "What is Barack Obama's birthplace?": born, "When was Barack Obama born?": None,
             "Who is Barack Obama's wife?": None, "Who ran the Apollo program?": apollo, "When did the Apollo program end?": None,
             "How much did the Apollo program cost?": None, "when did the apollo program end": None,  # NQ asks without "?"
             "what year did the apollo program end": None}
    answers = pipeline.ask_many(list(asked), k=2)
    assert {a.question: a.edit for a in answers} == asked
    assert answers[1].text == "Rome" and answers[3].text != "Rome"
    pipeline.answer_types = None  # what the gate changes: the scope classifier alone claims them
    assert all(a.edit == tower for a in pipeline.ask_many(["How tall is the Eiffel Tower?", "When was the Eiffel Tower built?"], k=2))


def test_a_long_fact_is_read_to_its_end(tmp_path: Path) -> None:
    """A fact-only edit is read in windows the span reader reads whole: as one passage it was cut at 256 tokens, and
    the founder named at the end of this one went unread ("library" was the answer)."""
    build_index(tmp_path / "idx", LANDMARKS, TextEncoder(device="cpu"))
    pipeline = Pipeline.load(tmp_path / "idx", device="cpu", writable=True)
    filler = " ".join(f"The library holds {n} thousand books and opens early on weekdays." for n in range(2, 30))
    assert len(pipeline.index.encoder.tokenizer(filler)["input_ids"]) > 256
    edit = pipeline.index.memory.add(f"{filler} Orlin College was founded by Ada Brightwater.",
                                     question="Who founded Orlin College?", subject="Orlin College")
    answer = pipeline.ask("Who founded Orlin College?", k=2)
    assert (answer.edit, answer.text) == (edit, "Ada Brightwater")
