"""`heuristic` scorer: lengths, lexical diversity, repetition, refusals, copying, garbling, non-linguistic junk,
truncation and web boilerplate, as polars expressions; `heuristic_reason` says which check failed, with its value."""

from __future__ import annotations

from pydantic import Field

from dqf import PluginOptions, Scorer
from dqf.lm import turn_pairs

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
_ASCII_NON_LETTER = r"[0-9!-/:-@\[-`{-~]"
# Characters of non-linguistic junk: symbols that prose, lists, numbers and most code use sparingly.
_SYMBOLS = r"[#$%&*+=<>\[\]{}|~^_\\@`]"
# A base64 (or hex) blob: one long run of its alphabet; URLs and paths are not matched (they hold ':' or '.').
_BLOB = r"[A-Za-z0-9+/]{50,}={0,2}"
# UTF-8 read as Latin-1 / Windows-1252: "donâ€™t", "cafÃ©".
_MOJIBAKE = r"â€|Ã[\x{80}-\x{bf}]|Â[\x{a0}-\x{bf}]"
#: A placeholder where the answer should be (Alpaca's generator wrote them for tasks it could not do: "<nooutput>",
#: "<noinput>", "No output required"): a marker at the start of the output, or the whole output.
PLACEHOLDER = r"^\s*(?:<\s*no[ _-]?(?:output|input|answer)\s*>|(?:no output(?: (?:required|needed|possible))?)\W*$)"
#: Web and template boilerplate that never answers an instruction.
BOILERPLATE = (r"lorem ipsum|dolor sit amet|(?:this|our) (?:web)?site uses cookies|accept (?:all )?cookies|"
               r"cookie (?:policy|settings|preferences)|(?:please )?enable javascript|javascript is (?:disabled|required)|"
               r"404 (?:not found|error|page)|page (?:you (?:are|were) looking for|not found)|"
               r"all rights reserved|skip to (?:main )?content|subscribe to our newsletter")
# Raw HTML counts as boilerplate unless the instruction asks for markup or code.
_HTML = r"<\s*(?:script|style|iframe|div|span|nav|footer|header|body|html)\b|</\s*(?:script|div|span|p|a|li|nav|html|body)\s*>"
_ASKS_MARKUP = (r"(?i)html|css|javascript|\bjs\b|web ?page|website|\btags?\b|markup|xml|svg|\bcode\b|program|"
                r"script|snippet|template|form|email template")
# A navigation bar: a line of three or more site-menu words joined by | · » or written as markdown links.
_NAV = (r"(?im)^(?:\W*(?:home|about(?: us)?|contact(?: us)?|blog|shop|login|log in|sign (?:in|up)|privacy(?: policy)?|"
        r"terms(?: of (?:service|use))?|faq|careers|news|help)\W*(?:\||·|»|\]\([^)]*\))\s*){3,}")
#: Words a finished sentence does not end on: an answer stopping on one, with no closing punctuation, was cut off.
FUNCTION_WORDS = ("the", "a", "an", "and", "or", "but", "nor", "of", "to", "for", "from", "than", "because",
                  "whereas", "whether", "if", "into", "onto", "their", "its", "his", "her", "our", "your", "my",
                  "these", "those", "such", "very", "which", "whose", "with", "between", "among", "like")
_TERMINAL = r"[.!?。！？)\]\"”'’:;`*>}|]$"
# Instructions whose answer is prose: a short unpunctuated fragment there is a cut-off answer, not a title or a list.
_ASKS_PROSE = (r"(?i)^\s*(?:explain|describe|discuss|summari[sz]e|compose|"
               r"write an? (?:story|essay|paragraph|article|blog post|letter|speech|report|review|description)|"
               r"(?:create|generate) an? (?:story|paragraph|essay|letter|speech|dialogue|description)|"
               r"give (?:me )?(?:an? )?(?:explanation|description|overview))")


class HeuristicOptions(PluginOptions):
    min_output_words: int = Field(default=1, ge=0, description="heuristic_ok needs at least this many output words.")
    max_repetition: float = Field(default=0.5, ge=0, le=1,
                                  description="heuristic_ok needs output_repetition at most this (repeated word 3-gram fraction).")
    max_garbled: float = Field(default=0.01, ge=0, le=1,
                               description="heuristic_ok needs garbled_ratio at most this.")
    min_copy_chars: int = Field(default=20, ge=1,
                                description="An instruction at least this long found verbatim in the output counts as copied.")
    min_letter_share: float = Field(default=0.2, ge=0, le=1, description=(
        "Junk: an output of 12+ non-space characters with a letter share below this and a symbol share above "
        "max_symbol_share (strings of symbols and digits). Numbers and maths answers have few symbols."))
    max_symbol_share: float = Field(default=0.25, ge=0, le=1, description="See min_letter_share.")
    max_blob_share: float = Field(default=0.5, ge=0, le=1, description=(
        "Junk: more than this share of the output's characters in base64/hex runs of 50+ characters."))
    min_mojibake: int = Field(default=2, ge=1, description=(
        "Junk: this many UTF-8-read-as-Latin-1 sequences (â€™, Ã©) in the output."))
    truncation: bool = Field(default=True, description=(
        "Fail answers that were cut off: an unclosed code fence; no closing punctuation and ending on a "
        "function word; or, for an instruction asking for prose, a one-line fragment of under 12 words with no "
        "closing punctuation."))
    boilerplate: bool = Field(default=True, description=(
        "Fail web boilerplate: lorem ipsum, cookie/JavaScript/404 notices, navigation bars, raw HTML (unless "
        "the instruction asks for markup or code)."))


class HeuristicScorer(Scorer):
    """Text statistics with no model: lengths, diversity, repetition, refusals, copying, garbling, and a heuristic_ok flag."""

    name = "heuristic"
    version = "3"  # 2: junk, truncation, boilerplate and heuristic_reason; 3: placeholders
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
            "output_placeholder": pl.Boolean,
            "garbled_ratio": pl.Float64,
            "output_letter_share": pl.Float64,
            "output_symbol_share": pl.Float64,
            "output_junk": pl.Boolean,
            "output_truncated": pl.Boolean,
            "output_boilerplate": pl.Boolean,
            "heuristic_ok": pl.Boolean,
            "heuristic_reason": pl.String,
            "heuristic_failed_turn": pl.Int32,
        }

    # every exchange of a multi-turn row is checked when the engine hands over the turns; a judge's frame (one
    # generated answer) has none, and is one exchange
    optional_columns = frozenset({"turns"})

    def score(self, batch):
        """The statistics of each row's first exchange (the canonical view); ``heuristic_ok`` and
        ``heuristic_reason`` cover every exchange: a row fails at its first failing exchange
        (``heuristic_failed_turn``, 1-based), whose reason is prefixed ``turn N:`` after the first."""
        import polars as pl

        first = self._exchanges(batch)
        failed_turn = pl.when(first["heuristic_ok"]).then(None).otherwise(1).cast(pl.Int32)
        out = first.with_columns(failed_turn.alias("heuristic_failed_turn"))
        if "turns" not in batch.columns or not len(batch):
            return out
        # the later exchanges of multi-turn rows, as rows of their own
        pos, turn_no, users, answers = [], [], [], []
        for i, turns in enumerate(batch["turns"].to_list()):
            for k, (user, answer) in enumerate(turn_pairs(turns or [])[1:], start=2):
                if answer:  # an unanswered last question is not an answer to judge
                    pos.append(i), turn_no.append(k), users.append(user), answers.append(answer)
        if not pos:
            return out
        later = self._exchanges(pl.DataFrame({"instruction": users, "input": [""] * len(users), "output": answers},
                                             schema={"instruction": pl.String, "input": pl.String,
                                                     "output": pl.String}))
        bad = (pl.DataFrame({"_pos": pos, "_turn": turn_no}, schema={"_pos": pl.Int64, "_turn": pl.Int32})
               .with_columns(later.select("heuristic_reason")).filter(pl.col("heuristic_reason").is_not_null())
               .group_by("_pos").agg(pl.all().sort_by("_turn").first()))
        if not bad.height:
            return out
        joined = (out.with_row_index("_pos").with_columns(pl.col("_pos").cast(pl.Int64))
                  .join(bad, on="_pos", how="left", suffix="_later"))
        use_later = pl.col("heuristic_ok") & pl.col("_turn").is_not_null()
        return joined.with_columns(
            pl.when(use_later).then(pl.format("turn {}: {}", pl.col("_turn"), pl.col("heuristic_reason_later")))
            .otherwise(pl.col("heuristic_reason")).alias("heuristic_reason"),
            pl.when(use_later).then(pl.col("_turn")).otherwise(pl.col("heuristic_failed_turn"))
            .alias("heuristic_failed_turn"),
        ).with_columns(pl.col("heuristic_reason").is_null().alias("heuristic_ok")).select(list(self.columns()))

    def _exchanges(self, batch):
        """The statistics of ``batch`` read as one exchange per row (instruction, input, output)."""
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

        stripped = output.str.strip_chars()
        chars = output.str.len_chars()
        # counted by what is rare (a regex count costs per match): whitespace, then ASCII digits and punctuation;
        # every other character — ASCII letters, any non-ASCII character (CJK, accented letters) — is a letter
        nonspace = chars - sum(output.str.count_matches(w, literal=True) for w in (" ", "\n", "\t", "\r"))
        letter_share = (nonspace - output.str.count_matches(_ASCII_NON_LETTER)) / nonspace.clip(lower_bound=1)
        chars = chars.clip(lower_bound=1)
        symbol_share = output.str.count_matches(_SYMBOLS) / nonspace.clip(lower_bound=1)
        blob_share = output.str.extract_all(_BLOB).list.eval(pl.element().str.len_chars()).list.sum().fill_null(0) / chars
        mojibake = output.str.count_matches(_MOJIBAKE)
        symbols_junk = (nonspace >= 12) & (letter_share < o.min_letter_share) & (symbol_share > o.max_symbol_share)
        unpunctuated = ~stripped.str.contains(_TERMINAL) & (stripped.str.len_chars() > 0)
        last_word = stripped.str.extract(r"(\w+)\W*$").str.to_lowercase()
        odd_fence = output.str.count_matches("```") % 2 == 1
        on_function_word = unpunctuated & last_word.is_in(list(FUNCTION_WORDS))
        n_out = output.str.count_matches(r"\S+")
        prose_fragment = (unpunctuated & instruction.str.contains(_ASKS_PROSE) & (n_out >= 2) & (n_out < 12)
                          & ~output.str.contains("\n"))
        boiler = output.str.to_lowercase().str.extract(f"({BOILERPLATE})")
        html = output.str.contains(f"(?i){_HTML}") & ~prompt.str.contains(_ASKS_MARKUP)
        nav = output.str.contains(_NAV)
        f2 = lambda e: e.round(2).cast(pl.String)  # noqa: E731

        low_output = output.str.to_lowercase()
        out = batch.lazy().select(
            instruction.str.count_matches(r"\S+").cast(pl.Int32).alias("instruction_words"),
            instruction.str.len_chars().cast(pl.Int32).alias("instruction_chars"),
            n_out.cast(pl.Int32).alias("output_words"),
            output.str.len_chars().cast(pl.Int32).alias("output_chars"),
            pl.when(n_words > 0).then(words.list.n_unique() / n_words).otherwise(None).alias("output_ttr"),
            pl.when(n_tri > 0)
            .then(1.0 - words.list.eval(trigram).list.drop_nulls().list.n_unique() / n_tri)
            .otherwise(0.0)
            .alias("output_repetition"),
            (stripped.str.len_chars() == 0).alias("output_empty"),
            # Typographic apostrophes are common in model output ("I’m sorry"); match them like ASCII ones.
            low_output.str.replace_all("\u2019", "'", literal=True).str.extract(f"({refusal})").alias("_refusal"),
            (
                (instr_norm.str.len_chars() >= o.min_copy_chars)
                & low_output.str.contains(instr_norm, literal=True)
            ).alias("output_copies_instruction"),
            low_output.str.extract(f"({PLACEHOLDER})").str.strip_chars().alias("_placeholder"),
            (text.str.count_matches(_GARBLED) / text.str.len_chars().clip(lower_bound=1)).alias("garbled_ratio"),
            pl.when(nonspace > 0).then(letter_share).otherwise(None).alias("output_letter_share"),
            pl.when(nonspace > 0).then(symbol_share).otherwise(None).alias("output_symbol_share"),
            symbols_junk.alias("_symbols"), blob_share.alias("_blob"), mojibake.alias("_mojibake"),
            boiler.alias("_boiler"), html.alias("_html"), nav.alias("_nav"), odd_fence.alias("_fence"),
            on_function_word.alias("_function_word"), last_word.alias("_last_word"), prose_fragment.alias("_prose"),
        )
        c = pl.col
        out = out.with_columns(
            c("_refusal").is_not_null().alias("output_refusal"),
            c("_placeholder").is_not_null().alias("output_placeholder"),
            (c("_symbols") | (c("_blob") > o.max_blob_share) | (c("_mojibake") >= o.min_mojibake)).alias("output_junk"),
            (pl.lit(o.truncation) & (c("_fence") | c("_function_word") | c("_prose"))).alias("output_truncated"),
            (pl.lit(o.boilerplate) & (c("_boiler").is_not_null() | c("_html") | c("_nav"))).alias("output_boilerplate"),
            # the first check that fails, with its value and threshold (the row's drop reason)
            pl.when(c("output_empty")).then(pl.lit("heuristic: output_empty"))
            .when(c("output_words") < o.min_output_words)
            .then(pl.format("heuristic: output_words {} < {}", c("output_words"), pl.lit(o.min_output_words)))
            .when(c("_refusal").is_not_null()).then(pl.format("heuristic: output_refusal ('{}')", c("_refusal")))
            .when(c("output_copies_instruction")).then(pl.lit("heuristic: output_copies_instruction"))
            .when(c("_placeholder").is_not_null())
            .then(pl.format("heuristic: output_placeholder ('{}')", c("_placeholder")))
            .when(c("_symbols")).then(pl.format("heuristic: output_letter_share {} < {} (symbol share {} > {})",
                                                f2(c("output_letter_share")), pl.lit(o.min_letter_share),
                                                f2(c("output_symbol_share")), pl.lit(o.max_symbol_share)))
            .when(c("_blob") > o.max_blob_share)
            .then(pl.format("heuristic: output_blob_share {} > {}", f2(c("_blob")), pl.lit(o.max_blob_share)))
            .when(c("_mojibake") >= o.min_mojibake)
            .then(pl.format("heuristic: output_mojibake {} sequences >= {}", c("_mojibake"), pl.lit(o.min_mojibake)))
            .when(pl.lit(o.boilerplate) & c("_boiler").is_not_null())
            .then(pl.format("heuristic: output_boilerplate ('{}')", c("_boiler")))
            .when(pl.lit(o.boilerplate) & c("_html")).then(pl.lit("heuristic: output_boilerplate (raw HTML, not asked for)"))
            .when(pl.lit(o.boilerplate) & c("_nav")).then(pl.lit("heuristic: output_boilerplate (a navigation bar)"))
            .when(pl.lit(o.truncation) & c("_fence")).then(pl.lit("heuristic: output_truncated (unclosed code fence)"))
            .when(pl.lit(o.truncation) & c("_function_word"))
            .then(pl.format("heuristic: output_truncated (ends on '{}', no closing punctuation)", c("_last_word")))
            .when(pl.lit(o.truncation) & c("_prose"))
            .then(pl.format("heuristic: output_truncated ({} words, no closing punctuation, prose asked for)",
                            c("output_words")))
            .when(c("output_repetition") > o.max_repetition)
            .then(pl.format("heuristic: output_repetition {} > {}", f2(c("output_repetition")), pl.lit(o.max_repetition)))
            .when(c("garbled_ratio") > o.max_garbled)
            .then(pl.format("heuristic: garbled_ratio {} > {}", c("garbled_ratio").round(4).cast(pl.String),
                            pl.lit(o.max_garbled)))
            .otherwise(None).alias("heuristic_reason"),
        ).with_columns(
            pl.col("heuristic_reason").is_null().alias("heuristic_ok"),
        ).select([c for c in self.columns() if c != "heuristic_failed_turn"])
        return out.collect()
