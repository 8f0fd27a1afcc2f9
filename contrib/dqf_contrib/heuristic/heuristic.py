"""`heuristic` scorer: lengths, lexical diversity, repetition, refusals, copying and garbling, as polars expressions."""

from __future__ import annotations

from pydantic import Field

from dqf import PluginOptions, Scorer

#: Phrases that mark a refusal or an AI self-disclaimer, matched case-insensitively.
REFUSAL_PHRASES = (
    "as an ai language model",
    "as a language model",
    "as an ai assistant",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i'm sorry, i cannot",
    "i am unable to",
    "i'm unable to",
    "i cannot fulfill",
    "i can't fulfill",
    "i apologize, but",
    "i'm just an ai",
    "i am just an ai",
    "i do not have the ability to",
    "i don't have the ability to",
    "i do not have personal",
    "i don't have personal",
    "cannot provide an answer",
    "this instruction cannot be",
)
# Control characters (except tab, newline, carriage return), the replacement character and private-use code points.
_GARBLED = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x{fffd}\x{e000}-\x{f8ff}]"


class HeuristicOptions(PluginOptions):
    min_output_words: int = Field(default=1, ge=0, description="heuristic_ok needs at least this many output words.")
    max_repetition: float = Field(default=0.5, ge=0, le=1,
                                  description="heuristic_ok needs output_repetition at most this (repeated word 3-gram fraction).")
    max_garbled: float = Field(default=0.01, ge=0, le=1,
                               description="heuristic_ok needs garbled_ratio at most this.")
    min_copy_chars: int = Field(default=20, ge=1,
                                description="An instruction at least this long found verbatim in the output counts as copied.")


class HeuristicScorer(Scorer):
    """Text statistics with no model: lengths, diversity, repetition, refusals, copying, garbling, and a heuristic_ok flag."""

    name = "heuristic"
    version = "1"
    Options = HeuristicOptions
    batch_size = 8192

    def columns(self):
        import polars as pl

        return {
            "instruction_words": pl.Int32,
            "instruction_chars": pl.Int32,
            "output_words": pl.Int32,
            "output_chars": pl.Int32,
            "output_ttr": pl.Float64,
            "output_repetition": pl.Float64,
            "output_empty": pl.Boolean,
            "output_refusal": pl.Boolean,
            "output_copies_instruction": pl.Boolean,
            "garbled_ratio": pl.Float64,
            "heuristic_ok": pl.Boolean,
        }

    def score(self, batch):
        import polars as pl

        o = self.options
        instruction = pl.col("instruction")
        output = pl.col("output")
        prompt = pl.concat_str([instruction, pl.col("input")], separator="\n")
        words = output.str.to_lowercase().str.extract_all(r"\w+(?:'\w+)?")
        trigram = pl.concat_str([pl.element(), pl.element().shift(-1), pl.element().shift(-2)], separator=" ")
        n_words = words.list.len().cast(pl.Int64)  # u32 would wrap below zero in n_words - 2
        n_tri = (n_words - 2).clip(lower_bound=0)
        instr_norm = instruction.str.strip_chars().str.to_lowercase()
        text = pl.concat_str([prompt, output])
        refusal = "|".join(p.replace(".", r"\.") for p in REFUSAL_PHRASES)

        out = batch.lazy().select(
            instruction.str.count_matches(r"\S+").cast(pl.Int32).alias("instruction_words"),
            instruction.str.len_chars().cast(pl.Int32).alias("instruction_chars"),
            output.str.count_matches(r"\S+").cast(pl.Int32).alias("output_words"),
            output.str.len_chars().cast(pl.Int32).alias("output_chars"),
            pl.when(n_words > 0).then(words.list.n_unique() / n_words).otherwise(None).alias("output_ttr"),
            pl.when(n_tri > 0)
            .then(1.0 - words.list.eval(trigram).list.drop_nulls().list.n_unique() / n_tri)
            .otherwise(0.0)
            .alias("output_repetition"),
            (output.str.strip_chars().str.len_chars() == 0).alias("output_empty"),
            # Typographic apostrophes are common in model output ("I’m sorry"); match them like ASCII ones.
            output.str.to_lowercase().str.replace_all("\u2019", "'", literal=True).str.contains(refusal)
            .alias("output_refusal"),
            (
                (instr_norm.str.len_chars() >= o.min_copy_chars)
                & output.str.to_lowercase().str.contains(instr_norm, literal=True)
            ).alias("output_copies_instruction"),
            (text.str.count_matches(_GARBLED) / text.str.len_chars().clip(lower_bound=1)).alias("garbled_ratio"),
        ).with_columns(
            (
                ~pl.col("output_empty")
                & ~pl.col("output_refusal")
                & ~pl.col("output_copies_instruction")
                & (pl.col("output_words") >= o.min_output_words)
                & (pl.col("output_repetition") <= o.max_repetition)
                & (pl.col("garbled_ratio") <= o.max_garbled)
            ).alias("heuristic_ok")
        )
        return out.collect()
