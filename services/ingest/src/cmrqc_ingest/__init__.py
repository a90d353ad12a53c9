"""CMR-QC Stream ingest service: DICOM C-STORE SCP, DICOMweb STOW-RS and folder backfill.

Received instances are spooled to disk, grouped into series, and each complete short-axis
cine series is assembled into ED and ES volumes, stored as blobs and announced as
``VolumeReady`` events. See ``services/ingest/README.md``.
"""

__version__ = "0.1.0"
