"""What the two DEITA scorers share: the expected score over the tokens "1".."6" after a prompt, per turn."""

from __future__ import annotations

from pydantic import Field

from dqf import DqfError

from dqf.lm import CausalLMOptions, CausalLMScorer, question, single_token_ids, turn_pairs

SCORE_TOKENS = ("1", "2", "3", "4", "5", "6")


def score_token_ids(tokenizer) -> list[int]:
    """The ids of "1".."6" as tokens of their own (DEITA reads Llama's ids 29896, 29906, ...)."""
    return single_token_ids(tokenizer, SCORE_TOKENS)


class DeitaOptions(CausalLMOptions):
    max_length: int = Field(default=2048, gt=0, description="Most prompt tokens; longer texts lose their end "
                                                            "(the response first, then the query). Also capped "
                                                            "by the model's max_position_embeddings.")
    column: str = Field(default="", description="Output column (default: the scorer's); the per-turn scores go "
                                                "to `<column>_turns`.")


class DeitaScorer(CausalLMScorer):
    """Σ i · softmax(logits of "1".."6")_i at the first generated position (a score in [1, 6]), for every turn.

    Each user turn of a row (with the reply to it) is one prompt; ``<column>_turns`` holds the
    turns' scores in order and ``<column>`` their mean (the score itself for a one-turn row).
    Rows come with the derived ``turns`` column; a batch without it (a direct call) is scored
    on its canonical view, one turn per row.
    """

    default_column = ""
    backend_needs = frozenset({"next_token"})

    @property
    def column(self) -> str:
        return self.options.column or self.default_column

    def columns(self):
        import polars as pl

        return {self.column: pl.Float64, f"{self.column}_turns": pl.List(pl.Float64)}

    def requires(self):
        return {"turns"}

    counters = ("rows_scored", "turns_scored", "multi_turn_rows", "truncated_turns")

    def stats(self):
        st = super().stats()
        if not st.get("first_turn_only_rows"):
            st.pop("first_turn_only_rows", None)
        return st

    def loaded(self):
        try:
            self._digits = score_token_ids(self.tokenizer)
        except DqfError as exc:
            raise DqfError(f"{self.name}: {exc}") from None

    def _enc(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])

    def fit(self, template: str, values: dict[str, str], cut_order: tuple[str, ...]) -> list[int]:
        """Ids of ``template.format(**values)``; when too long, the fields in ``cut_order`` lose their ends in turn."""
        ids = self._enc(template.format(**values), True)
        limit = self.max_length
        if len(ids) <= limit:
            return ids
        self.count("truncated_turns")
        # tokenize the fixed pieces and the fields apart, then trim fields until it fits
        pieces, rest = [], template
        for name in values:
            before, _, rest = rest.partition("{" + name + "}")
            pieces.append(("fixed", before))
            pieces.append((name, values[name]))
        pieces.append(("fixed", rest))
        toks = [self._enc(text, i == 0) for i, (_, text) in enumerate(pieces)]
        over = sum(map(len, toks)) - limit
        for name in cut_order:
            if over <= 0:
                break
            j = next(j for j, (n, _) in enumerate(pieces) if n == name)
            cut = min(over, len(toks[j]))
            toks[j] = toks[j][:len(toks[j]) - cut]
            over -= cut
        if over > 0:
            raise DqfError(f"{self.name}: the prompt without the row's text is longer than max_length={limit}")
        return [t for tk in toks for t in tk]

    def prompt_ids(self, query: str, response: str) -> list[int]:
        """Token ids of the prompt scoring one (query, response) turn."""
        raise NotImplementedError

    def row_pairs(self, batch) -> list[list[tuple[str, str]]]:
        """The (query, response) turns of each row of ``batch``."""
        canonical = [(question(i or "", x or ""), o or "")
                     for i, x, o in zip(batch["instruction"], batch["input"], batch["output"])]
        if "turns" not in batch.columns:
            if "n_turns" in batch.columns:
                self.count("first_turn_only_rows", int((batch["n_turns"].fill_null(1) > 1).sum()))
            return [[c] for c in canonical]
        out = []
        for turns, c in zip(batch["turns"].to_list(), canonical):
            pairs = turn_pairs(turns) if turns is not None else []
            out.append(pairs or [c])  # no record (a frame built by a plugin): its canonical view
        return out

    def score_batch(self, batch):
        import numpy as np
        import polars as pl

        rows = self.row_pairs(batch)
        prompts = [self.prompt_ids(q, r) for pairs in rows for q, r in pairs]
        lp = self.next_token(prompts, [[d] for d in self._digits])
        w = np.exp(lp - lp.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        flat = [None if np.isnan(v) else float(v) for v in w @ np.arange(1, 7, dtype=np.float64)]
        per_turn, pos = [], 0
        for pairs in rows:
            per_turn.append(flat[pos:pos + len(pairs)])
            pos += len(pairs)
        means = [None if any(v is None for v in t) else sum(t) / len(t) for t in per_turn]
        self.count("turns_scored", len(prompts))
        self.count("multi_turn_rows", sum(1 for t in per_turn if len(t) > 1))
        return pl.DataFrame({self.column: means, f"{self.column}_turns": per_turn}, schema=self.columns())
