"""The command-line applications: ``sample.py`` (:mod:`inrflow.cli.sample`) and ``evaluate.py``
(:mod:`inrflow.cli.evaluate`), with the sampler options they share (:mod:`inrflow.cli.options`).

Training has its own application, :mod:`inrflow.train` (``train.py``).
"""
