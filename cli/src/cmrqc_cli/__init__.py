"""The cmrqc command-line front door."""
