"""Small helpers shared by the packages: atomic file writes, run-directory records."""
