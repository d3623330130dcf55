"""Metrics of the papers: Fréchet distances (FFD, FDR), attribution and clustering scores."""
