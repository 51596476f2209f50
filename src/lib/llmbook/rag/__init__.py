"""Retrieval-augmented generation from scratch: documents and chunking, BM25, dense embeddings, vector
indexes (exact, IVF, HNSW), fusion, reranking, grounded answers. Tested against bm25s, rank_bm25,
sentence-transformers and FAISS."""
