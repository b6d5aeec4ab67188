"""The seeded-bug corpus: every program in examples/bugs/ must be flagged by the toolkit
with a message that names the bug and the place."""

from __future__ import annotations

import pytest

from emudev.check import corpus

PROGRAMS = corpus.programs([corpus.DEFAULT_DIR])


def test_the_corpus_is_there():
    assert len(PROGRAMS) >= 10


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_each_seeded_bug_is_flagged(program):
    outcome = corpus.run(program)
    assert outcome.flagged, (f"{program.name}: expected a [{outcome.kind}] finding with {outcome.words!r}, got:\n"
                             + "\n".join(outcome.findings))
