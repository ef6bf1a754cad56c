"""The command-line applications: ``sample.py`` (:mod:`inrflow.cli.sample`) and ``evaluate.py``
(:mod:`inrflow.cli.evaluate`, its ``--compare-upsampling`` in :mod:`inrflow.cli.upsampling`), with
the options they share (:mod:`inrflow.cli.options`).

Training has its own application, :mod:`inrflow.train` (``train.py``).
"""
