"""CMR-QC Stream retrainer: labels in (RCA estimates, annotators' ground truth), a fine-tuned
QC predictor out — registered, compared with the serving model on a fixed holdout, and
promoted through the model registry only when it is better.

The QC model code (network, input preparation, training loop, artifact format) is the
``cmrqc-qc-predictor`` package's, used here as a library: the predictor and its retrainer must
agree on every byte of the input contract.
"""

__version__ = "0.1.0"
