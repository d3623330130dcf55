"""Metrics of the papers: verification and identification scores, the Fréchet distance (FFD, FDR), clustering."""
