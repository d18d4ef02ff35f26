"""The expected generated tests of each golden case are data, not part of this suite."""

collect_ignore_glob = ["*/tests/*.py"]
