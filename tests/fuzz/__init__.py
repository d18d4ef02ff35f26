"""Fuzzing specql with mutated entity files (issue 8, item 5).

Not a test module: `tests/test_fuzz.py` (in CI, Hypothesis-driven, bounded) and
`tests/fuzz/run_many.py` (a standalone run over thousands of files, with numbers) both build
on these helpers:

- `payloads`: the hostile strings, SQL fragments, intervals and numbers;
- `mutate`: turns a real entity file into a mutated one (data-tree and raw-text mutations),
  driven by a `Chooser` so that Hypothesis (shrinkable draws) and `random.Random` (speed)
  share one generator;
- `worker`: runs `specql validate` / `specql generate` in a subprocess under a memory
  limit and a time limit, and checks what they print;
- `apply`: applies generated SQL with `psql -f` to a fresh database and checks that it
  created nothing the entity did not ask for;
- `known`: the defect classes still open, each with the issue text it matches.
"""
