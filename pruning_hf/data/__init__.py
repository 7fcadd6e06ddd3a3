"""Text for calibration and evaluation: sources (embedded corpus, files, Hub datasets) -> token windows."""
