"""Dataset bookkeeping: seed splits of the synthetic generator."""
