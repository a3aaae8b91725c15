"""Tracking adapter: MLflow registration and repair (:mod:`.tracker`; the driver is the
only writer). ``kma sync``, which rebuilds MLflow from the store, is the use case
:mod:`pipeline.workflows.sync`."""
