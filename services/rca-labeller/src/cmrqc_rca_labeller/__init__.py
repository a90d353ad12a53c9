"""CMR-QC Stream RCA labeller: Reverse Classification Accuracy with batched torch registration.

Public API: ``RcaEstimator`` (estimate one segmentation's Dice per class without its ground
truth), ``ReferenceBank`` / ``EngineConfig`` (the registration engine), the reference sets
(``synthetic_reference_set``, ``load_reference_folder``, ``reference_set_hash``) and the
service (``RcaLabellerService``, ``main``).
"""

__version__ = "0.1.0"
