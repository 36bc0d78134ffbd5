"""Cases that fail on main today, while their fixes are on other branches (issue 10: bounded
loading, safe writes, parsers, run budget).  ``tests/test_bad_inputs.py`` runs every case NOT
listed here and fails if any of them fails; with ``SEQSCOPE_CORPUS_STRICT=1`` (or once this set
is empty) it runs every case.  The integrator empties this set after merging the fixes: it must
end empty.  KNOWN_FAILURES.md lists the same cases grouped by cause (``known.py`` writes both)."""

KNOWN_FAILURES: frozenset[str] = frozenset({
})
