"""Checkpoints: the files (atomic, checksummed, safely loaded), what a run saves in them and resumes from,
the checks a resume passes, and the saved config read back as data."""
