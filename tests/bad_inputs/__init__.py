"""SeqScope's bad-input corpus: ``generate`` builds it (deterministically, into a folder),
``harness`` runs every case in worker processes and says which ones failed and why.
See ``tests/test_bad_inputs.py`` and ``KNOWN_FAILURES.md``."""
