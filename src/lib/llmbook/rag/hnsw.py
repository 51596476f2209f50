"""Hierarchical navigable small-world graphs (HNSW; Malkov & Yashunin, arXiv:1603.09320).

Every vector is a node on layers 0..l, its level l drawn as floor(-ln U * mL), U ~ Uniform(0, 1],
mL = 1 / ln M, so each layer up holds ~1/M of the nodes below it. A search descends greedily from the
top layer's entry point to layer 1 (Alg. 2 with ef = 1: move to the best neighbour while it improves),
then runs a beam search on layer 0 (Alg. 2): a candidate heap C and a result heap W of the ef best seen;
expand the best candidate, score its unvisited neighbours, keep those better than W's worst; stop when
the best candidate is worse than W's worst. Cost ~ the neighbours expanded, not N.

Insertion (Alg. 1) searches each layer <= l with ef_construction and links the new node to M neighbours
chosen by the heuristic of Alg. 4: take candidates best first and keep one only if it is closer to the
new node than to every neighbour kept so far, sim(e, q) >= sim(e, r) (no extended candidates, no pruned
connections kept: FAISS's and hnswlib's defaults), which spreads links over directions instead of
spending them all inside one cluster. Links are made both ways; a node with more than Mmax links (M on
upper layers, M0 = 2M on layer 0) is pruned back with the same heuristic. Similarity is the inner product
of unit vectors (higher is closer). Deleted nodes are tombstones: they still route searches (the graph
stays connected) but never enter the results, as in hnswlib's ``mark_deleted``.

This module is the graph and its algorithms; :class:`llmbook.rag.vector_index.HNSWIndex` wraps it in
the interface every index shares (input checks, batches of queries, the distance counter, save / load).
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from llmbook.progress import ProgressBar


def select_neighbours(sims: np.ndarray, vectors: np.ndarray, m: int) -> np.ndarray:
    """The heuristic of Alg. 4: indices of at most ``m`` candidates to link to a base point.

    ``sims`` (n,) are the candidates' similarities to the base point, sorted descending; ``vectors`` (n, D)
    the candidates. Going best first, a candidate is dropped when some already-kept one r is closer to it
    than the base point is, <e, r> > <e, base>. Each kept candidate rules out at once every later one it
    dominates, so the loop runs once per kept neighbour, not once per candidate.
    """
    open_ = np.ones(len(sims), dtype=bool)  # candidates not yet kept or ruled out
    kept: list[int] = []
    while len(kept) < m:
        best = int(open_.argmax())  # the first open one: every earlier candidate is kept or ruled out
        if not open_[best]:
            break
        kept.append(best)
        open_[best] = False
        open_ &= vectors @ vectors[best] <= sims  # (n,) sim(e, best) vs sim(e, base)
    return np.array(kept, dtype=np.int64)


class HNSWGraph:
    """The layered graph over unit vectors: node id = row of ``vectors`` = insertion order."""

    def __init__(self, dim: int, *, m: int = 16, ef_construction: int = 100, seed: int = 0) -> None:
        if m < 2:
            raise ValueError(f"m must be >= 2 (mL = 1/ln m), got {m}")
        if ef_construction < 1:
            raise ValueError(f"ef_construction must be >= 1, got {ef_construction}")
        self.m = int(m)  # links per node on upper layers, and chosen per layer at insertion
        self.m0 = 2 * self.m  # link cap on layer 0, where every node lives (the paper's Mmax0 = 2M)
        self.ml = 1 / math.log(self.m)  # level normalisation: P(level >= l) = M^-l
        self.ef_construction = int(ef_construction)  # beam width while inserting: graph quality / build time
        self.seed = seed  # the levels of the n-th batch added are drawn from default_rng((seed, n))
        self.batches = 0  # batches added so far (so that a loaded graph draws the same levels next)
        self.vectors = np.empty((0, dim), dtype=np.float32)  # (N, D)
        self.levels = np.empty(0, dtype=np.int64)  # (N,) top layer of each node
        self.links: list[dict[int, np.ndarray]] = []  # [layer][node] -> neighbour ids
        self.deleted = np.empty(0, dtype=bool)  # (N,) tombstones
        self.entry_point, self.max_level = -1, -1
        self._visited = np.empty(0, dtype=np.int64)  # (N,) tag of the search that last visited each node
        self._tag = 0

    # -- search ------------------------------------------------------------------------------------------

    def greedy(self, q: np.ndarray, node: int, sim: float, layer: int) -> tuple[int, float, int]:
        """Move to the best neighbour while it beats the current node: (node, sim, dot products)."""
        links, count = self.links[layer], 0
        while True:
            nbrs = links[node]
            if not len(nbrs):
                return node, sim, count
            sims = self.vectors[nbrs] @ q  # (n,)
            count += len(nbrs)
            best = int(sims.argmax())
            if sims[best] <= sim:
                return node, sim, count
            node, sim = int(nbrs[best]), float(sims[best])

    def beam(self, q: np.ndarray, entries: list[tuple[float, int]], ef: int, layer: int,
             skip_deleted: bool) -> tuple[list[tuple[float, int]], int]:
        """Alg. 2: the ef best (sim, node) reachable from ``entries`` on ``layer``, best first; dot products.
        With ``skip_deleted``, tombstoned nodes are expanded but kept out of the results."""
        self._tag += 1
        visited, links, tag, deleted = self._visited, self.links[layer], self._tag, self.deleted
        candidates = [(-s, e) for s, e in entries]  # C: max-heap on sim
        heapq.heapify(candidates)
        results = heapq.nlargest(ef, [(s, e) for s, e in entries if not (skip_deleted and deleted[e])])
        heapq.heapify(results)  # W: min-heap of at most ef, its worst on top
        worst = results[0][0] if len(results) == ef else -math.inf  # what a node must beat to enter W
        visited[[e for _, e in entries]] = tag
        count = 0
        while candidates:
            neg_sim, node = heapq.heappop(candidates)
            if -neg_sim < worst:
                break  # the best candidate left is worse than W's worst: nothing reachable can improve W
            nbrs = links[node]
            nbrs = nbrs[visited[nbrs] != tag]
            if not len(nbrs):
                continue
            visited[nbrs] = tag
            sims = self.vectors[nbrs] @ q  # (n,) the vectorised step: all unvisited neighbours at once
            count += len(nbrs)
            for s, e in zip(sims.tolist(), nbrs.tolist()):
                if s > worst:
                    heapq.heappush(candidates, (-s, e))
                    if not (skip_deleted and deleted[e]):
                        heapq.heappush(results, (s, e))
                        if len(results) > ef:
                            heapq.heappop(results)
                        if len(results) == ef:
                            worst = results[0][0]
        return sorted(results, reverse=True), count

    def search(self, q: np.ndarray, ef: int) -> tuple[list[tuple[float, int]], int]:
        """One query (D,): the ef best live (sim, node), best first, and the dot products it took."""
        if self.entry_point < 0:
            return [], 0
        node = self.entry_point
        sim = float(self.vectors[node] @ q)
        count = 1
        for layer in range(self.max_level, 0, -1):
            node, sim, n = self.greedy(q, node, sim, layer)
            count += n
        found, n = self.beam(q, [(sim, node)], ef, 0, skip_deleted=True)
        return found, count + n

    # -- build -------------------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """Insert vectors (N, D) float32 one by one (Alg. 1); returns their node ids."""
        start = len(self.vectors)
        rng = np.random.default_rng((self.seed, self.batches))
        levels = np.floor(-np.log(1.0 - rng.random(len(vectors))) * self.ml).astype(np.int64)  # 1 - U in (0, 1]
        self.batches += 1
        self.vectors = np.concatenate([self.vectors, vectors])
        self.levels = np.concatenate([self.levels, levels])
        self.deleted = np.concatenate([self.deleted, np.zeros(len(vectors), dtype=bool)])
        self._visited = np.concatenate([self._visited, np.zeros(len(vectors), dtype=np.int64)])
        while len(self.links) <= int(levels.max(initial=-1)):
            self.links.append({})
        for node in ProgressBar(range(start, start + len(vectors)), desc="HNSW build", disable=not progress):
            self.insert(node)
        return np.arange(start, start + len(vectors), dtype=np.int64)

    def insert(self, node: int) -> None:
        level, q = int(self.levels[node]), self.vectors[node]
        for layer in range(level + 1):
            self.links[layer][node] = np.empty(0, dtype=np.int64)
        if self.entry_point < 0:
            self.entry_point, self.max_level = node, level
            return
        ep = self.entry_point
        sim = float(self.vectors[ep] @ q)
        for layer in range(self.max_level, level, -1):
            ep, sim, _ = self.greedy(q, ep, sim, layer)
        entries = [(sim, ep)]
        for layer in range(min(level, self.max_level), -1, -1):
            entries, _ = self.beam(q, entries, self.ef_construction, layer, skip_deleted=False)
            cand = np.array([e for _, e in entries], dtype=np.int64)
            sims = np.array([s for s, _ in entries], dtype=np.float32)
            chosen = cand[select_neighbours(sims, self.vectors[cand], self.m)]
            self.links[layer][node] = chosen
            cap = self.m0 if layer == 0 else self.m
            for e in chosen.tolist():
                self.link(e, node, layer, cap)
        if level > self.max_level:
            self.entry_point, self.max_level = node, level

    def link(self, node: int, new: int, layer: int, cap: int) -> None:
        """Add the link node -> new; past ``cap`` links, keep the heuristic's choice among old + new."""
        nbrs = np.concatenate([self.links[layer][node], [new]])
        if len(nbrs) > cap:
            sims = self.vectors[nbrs] @ self.vectors[node]  # (cap + 1,)
            order = np.argsort(-sims, kind="stable")
            nbrs = nbrs[order][select_neighbours(sims[order], self.vectors[nbrs[order]], cap)]
        self.links[layer][node] = nbrs

    # -- as arrays (for np.savez) ------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        state = {"m": np.array(self.m), "ef_construction": np.array(self.ef_construction),
                 "seed": np.array(self.seed), "batches": np.array(self.batches),
                 "entry_point": np.array(self.entry_point), "max_level": np.array(self.max_level),
                 "vectors": self.vectors, "levels": self.levels, "deleted": self.deleted,
                 "layers": np.array(len(self.links))}
        for layer, links in enumerate(self.links):  # ragged lists as (nodes, counts, concatenated links)
            nodes = sorted(links)
            state[f"nodes_{layer}"] = np.array(nodes, dtype=np.int64)
            state[f"counts_{layer}"] = np.array([len(links[n]) for n in nodes], dtype=np.int64)
            state[f"links_{layer}"] = np.concatenate([links[n] for n in nodes] or [np.empty(0, np.int64)])
        return state

    @classmethod
    def from_arrays(cls, state: dict[str, np.ndarray]) -> HNSWGraph:
        graph = cls(state["vectors"].shape[1], m=int(state["m"]), ef_construction=int(state["ef_construction"]),
                    seed=int(state["seed"]))
        graph.batches = int(state["batches"])
        graph.entry_point, graph.max_level = int(state["entry_point"]), int(state["max_level"])
        graph.vectors, graph.levels, graph.deleted = state["vectors"], state["levels"], state["deleted"].copy()
        graph._visited = np.zeros(len(graph.vectors), dtype=np.int64)
        for layer in range(int(state["layers"])):
            nodes, counts = state[f"nodes_{layer}"].tolist(), state[f"counts_{layer}"]
            graph.links.append(dict(zip(nodes, np.split(state[f"links_{layer}"], np.cumsum(counts)[:-1]))))
        return graph
