"""CMR-QC Stream qc-predictor service: per-class Dice without ground truth, hot-swappable.

Public entry points: ``predictor.predict_cases`` (arrays in, predictions out),
``prepare.prepare_input`` (the networks' input), ``artifact.load_artifact`` (safe model
loading), ``main.build_service`` / ``main.main`` (the Kafka service) and the ``cmrqc``
subcommands in ``commands``.
"""

__version__ = "0.1.0"
