"""Reports: savings verification and the RECP assessment, as self-contained HTML with plots."""
