"""A vector store a user would deploy: Qdrant, embedded in the process or as a server, one API for both.

``QdrantStore(location)`` opens Qdrant's local mode on a folder (persisted, no server: the Python
client embeds the engine) or ``":memory:"``; ``QdrantStore("http://host:6333")`` talks to a Qdrant
server or cluster with exactly the same calls. Chunks are points: the vector plus a payload with the
chunk's text, document id and offsets; points are upserted and deleted by document id without a
rebuild. Point ids are UUIDs derived from chunk ids (Qdrant accepts only integers and UUIDs).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmbook.rag.documents import Chunk
from llmbook.rag.fusion import Ranked

COLLECTION = "chunks"
_NAMESPACE = uuid.UUID("6f1c3c1e-2b9b-4a50-9f0e-5d4c6a7b8e90")  # fixed: the same chunk id always maps to one point


def point_id(chunk_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, chunk_id))


class QdrantStore:
    """Chunks and their vectors in one Qdrant collection (cosine similarity)."""

    def __init__(self, location: str | Path, *, dim: int, collection: str = COLLECTION) -> None:
        try:
            from qdrant_client import QdrantClient, models
        except ModuleNotFoundError as error:  # an optional dependency of the `rag` extra
            raise ModuleNotFoundError("the Qdrant store needs qdrant-client: pip install 'llmbook[rag]'") from error
        self._models = models
        location = str(location)
        if location.startswith(("http://", "https://")):
            self.client = QdrantClient(url=location)  # a server or cluster: the one-line switch
        elif location == ":memory:":
            self.client = QdrantClient(location=":memory:")
        else:
            self.client = QdrantClient(path=location)  # embedded, persisted in this folder
        self.collection = collection
        if not self.client.collection_exists(collection):
            self.client.create_collection(collection, vectors_config=models.VectorParams(
                size=dim, distance=models.Distance.COSINE))
        size = self.client.get_collection(collection).config.params.vectors.size
        if size != dim:
            self.client.close()
            raise ValueError(
                f"collection {collection!r} holds {size}-d vectors, not {dim}-d: built by another embedder")

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray, *, batch_size: int = 256) -> None:
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        for start in range(0, len(chunks), batch_size):
            points = [self._models.PointStruct(id=point_id(c.id), vector=v.tolist(), payload={
                "chunk_id": c.id, "doc_id": c.doc_id, "text": c.text, "start": c.start, "end": c.end, "meta": c.meta})
                for c, v in zip(chunks[start:start + batch_size], vectors[start:start + batch_size], strict=True)]
            self.client.upsert(self.collection, points=points)

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        condition = self._models.FieldCondition(key="doc_id", match=self._models.MatchAny(any=list(doc_ids)))
        self.client.delete(self.collection, points_selector=self._models.FilterSelector(
            filter=self._models.Filter(must=[condition])))

    def search(self, vector: np.ndarray, k: int) -> Ranked:
        """(chunk id, cosine) pairs, best first."""
        found = self.client.query_points(self.collection, query=np.asarray(vector, dtype=np.float32).tolist(),
                                         limit=k, with_payload=True)
        return [(p.payload["chunk_id"], float(p.score)) for p in found.points]

    def chunk(self, chunk_id: str) -> Chunk:
        points = self.client.retrieve(self.collection, ids=[point_id(chunk_id)], with_payload=True)
        if not points:
            raise KeyError(chunk_id)
        p = points[0].payload
        return Chunk(id=p["chunk_id"], doc_id=p["doc_id"], text=p["text"], start=p["start"], end=p["end"],
                     meta=p["meta"])

    def __len__(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def close(self) -> None:
        self.client.close()
