"""FAISS similarity search and classifiers over embeddings (numpy + faiss; imports nothing else of ours)."""

from index.chooser import IndexChoiceError, choose_index, estimate_memory, parse_factory
from index.durable import DurableIndex
from index.knn import KnnClassifier
from index.probe import LinearProbe
from index.vector_index import Hit, IndexStoreError, VectorIndex, VersionMismatchError

__all__ = [
    "Hit", "VectorIndex", "DurableIndex", "IndexStoreError", "VersionMismatchError", "IndexChoiceError",
    "choose_index", "estimate_memory", "parse_factory", "KnnClassifier", "LinearProbe",
]
