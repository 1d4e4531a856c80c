"""The chunker: token-bounded chunks that end at paragraph and sentence boundaries."""

from __future__ import annotations

import itertools

import pytest

from rag_llm.rag.chunking import Chunker, approximate_tokens

PARAGRAPHS = [
    "The first paragraph has two sentences. It ends here.",
    "The second paragraph is a little longer than the first one. It has three sentences. "
    "This is the third.",
    "A short third paragraph.",
]


def test_every_chunk_fits_the_size_and_ends_at_a_sentence() -> None:
    text = "\n\n".join(PARAGRAPHS * 20)
    chunks = Chunker(size=40, overlap=0).split(text)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.tokens <= 40
        assert chunk.tokens == approximate_tokens(chunk.text)
        assert chunk.text.endswith(".")
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_a_paragraph_that_fits_a_fresh_chunk_starts_one_once_half_is_used() -> None:
    # 11, 22 and 5 tokens: the second fits only a fresh chunk, the third only another.
    chunks = Chunker(size=22, overlap=0).split("\n\n".join(PARAGRAPHS))
    assert [c.text for c in chunks] == PARAGRAPHS
    # Under half full, the chunk is filled sentence by sentence instead.
    chunks = Chunker(size=30, overlap=0).split("\n\n".join(PARAGRAPHS))
    assert chunks[0].text.startswith(f"{PARAGRAPHS[0]}\n\nThe second paragraph")
    assert chunks[0].text.endswith(".")


def test_overlap_repeats_whole_trailing_sentences() -> None:
    text = " ".join(f"Sentence number {n} is here." for n in range(12))  # 6 tokens each
    chunks = Chunker(size=30, overlap=12).split(text)
    for previous, chunk in itertools.pairwise(chunks):
        carried = previous.text.split(". ")[-2:]
        assert chunk.text.startswith(carried[0])
    assert all(c.tokens <= 30 for c in chunks)
    no_overlap = Chunker(size=30, overlap=0).split(text)
    assert len(no_overlap) < len(chunks)
    assert " ".join(c.text for c in no_overlap) == text


def test_a_sentence_longer_than_a_chunk_is_cut_between_words() -> None:
    words = [f"w{n}" for n in range(100)]
    chunks = Chunker(size=16, overlap=0).split(" ".join(words))
    assert all(c.tokens <= 16 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == words


def test_headings_stay_with_the_text_that_follows_them() -> None:
    text = ("# Title\n\nIntro sentence one. Intro sentence two.\n\n## Section\n\n"
            + "Body sentence here. " * 6)
    chunks = Chunker(size=24, overlap=0).split(text)
    assert not any(c.text.rstrip().splitlines()[-1].startswith("#") for c in chunks)
    assert any("## Section\nBody sentence here." in c.text for c in chunks)


def test_list_items_keep_their_lines_and_soft_wraps_are_joined() -> None:
    text = "Steps to follow,\nwrapped here:\n- mix the dough\n- let it rest"
    [chunk] = Chunker(size=50, overlap=0).split(text)
    assert chunk.text == "Steps to follow, wrapped here:\n- mix the dough\n- let it rest"


def test_a_custom_token_counter_sets_the_bounds() -> None:
    def characters(text: str) -> int:
        return len(text)

    chunks = Chunker(size=60, overlap=0, count=characters).split("\n\n".join(PARAGRAPHS))
    assert all(len(c.text) <= 60 for c in chunks)


def test_blank_text_has_no_chunks() -> None:
    assert Chunker(size=20, overlap=5).split(" \n\n \t") == []


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_bad_bounds_are_rejected(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match=r"size|overlap"):
        Chunker(size=size, overlap=overlap)
