"""Task2Vec (Achille et al., 2019): Fisher embeddings of tasks, distances, expert selection."""
