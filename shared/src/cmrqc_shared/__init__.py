"""CMR-QC Stream shared library."""
