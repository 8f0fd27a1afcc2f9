"""EmbeddingSelector: the base of budgeted selectors over embeddings; it owns the budget, the empty case and the
vectors, and a subclass writes :meth:`EmbeddingSelector.select_from`."""

from __future__ import annotations

from typing import ClassVar

from dqf.plugin import Selector


class EmbeddingSelector(Selector):
    """A selector keeping a budget of rows (``dqf.BudgetOptions``) chosen from their embeddings.

    Its options have an ``embedder`` (a nested :class:`dqf.PluginSpec`) and the column named by
    ``score_option``, which it reads. :meth:`select` computes the budget, keeps nothing (``stats``
    ``picked = 0``) when it is 0, fetches the rows' vectors through the embedding cache and calls
    :meth:`select_from`.
    """

    nested_plugins = {"embedder": "embedder"}
    #: The option naming the column of the rows this selector ranks or weights by.
    score_option: ClassVar[str] = "score_column"

    def requires(self):
        return {getattr(self.options, self.score_option)} | self.nested_requires("embedder")

    def select(self, rows, context):
        k = self.options.budget(rows.height)
        if k == 0:
            self._stats = {"picked": 0}
            return []
        X = context.embeddings(self.nested_plugin("embedder"), rows)
        return self.select_from(rows, X, k, context)

    def select_from(self, rows, X, k: int, context):
        """Positions of the (at most ``k``) rows to keep, given their float32 vectors ``X`` (one per row)."""
        raise NotImplementedError
