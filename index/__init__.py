"""FAISS similarity search, the collection it indexes, and the metrics of embeddings (numpy + faiss; nothing of ours).

chooser      (n, d, memory budget) → ranked FAISS factory strings (pure: no faiss calls)
vector_index one index of one encoder version: ids, metadata, search          snapshot  its on-disk layout
durable      the served index: write-ahead log, readers-writer lock, kill -9 safe
collection   every indexed item's URI + label, and uploaded bytes (what a new encoder re-indexes)
writes       the one write path for index + collection: publish, add, remove, reconcile
knn, probe   classifiers on embeddings (weighted kNN, linear probe)          metrics  the one set of quality figures
"""
