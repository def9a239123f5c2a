"""FAISS similarity search, the collection it indexes, and the metrics of embeddings (numpy + faiss; nothing of ours).

chooser      (n, d, memory budget) → ranked FAISS factory strings (pure: no faiss calls)
vector_index one index of one encoder version: ids, vectors, search           snapshot  its FAISS snapshots
durable      the served index: FAISS + its item store, readers-writer lock, kill -9 safe
item_store   an index's items and log of writes in SQLite (store.db)      db  how index/ opens SQLite
collection   every indexed item's URI + label, folder roots, uploaded bytes (what a new encoder re-indexes)
legacy       the file layout before SQLite, converted on first open      building  one-shot builds
repair       salvaging a damaged item store                              rwlock    readers-writer lock
writes       the one write path for index + collection: publish, add, remove, reconcile
knn, probe   classifiers on embeddings (weighted kNN, linear probe)          metrics  the one set of quality figures
"""
