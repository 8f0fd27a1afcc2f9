"""The local executor: scores and embeds in this process, batch by batch."""

from __future__ import annotations

from dqf.engine.base import Executor
from dqf.store.embeddings import embed_in_shards


class LocalExecutor(Executor):
    """Runs every scorer and embedder in this process; the plugin's ``setup()`` runs once, on first use."""

    kind = "local"

    def score_batches(self, scorer, todo, *, batch_size, view, derive, key, label, step_id):
        self.setup_once(scorer, label)
        for batch in todo.iter_slices(batch_size):
            if derive is not None:
                batch = derive(batch)
            yield batch, scorer.score(batch.select(view))

    def embed_missing(self, embedder, texts, advance, *, label, step_id):
        self.setup_once(embedder, label)
        return embed_in_shards(embedder, texts, advance)
