"""Search: the reference store (manifest generations, SQLite, lock) and the ANN index (faiss)."""
