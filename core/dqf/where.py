"""The grammar of a step's ``where``: a row predicate over columns and literals, checked before polars sees it.

A recipe is untrusted input, and polars' SQL would run subqueries and table functions
(``read_csv('http://…')``) inside a predicate. :func:`parse_where` accepts only columns, literals,
comparison / boolean / arithmetic operators, ``IS [NOT] NULL``, ``[NOT] IN (literals)``,
``[NOT] BETWEEN``, ``[NOT] [I]LIKE`` and the scalar functions in :data:`FUNCTIONS`; anything else is
rejected with the construct named, without being evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Scalar functions a predicate may call.
FUNCTIONS = frozenset({
    "abs", "ceil", "ceiling", "floor", "round", "sqrt", "ln", "log10", "exp", "length", "char_length", "lower", "upper",
    "trim", "ltrim", "rtrim", "starts_with", "ends_with", "coalesce", "nullif", "greatest", "least",
})
#: Words with a meaning in the grammar; any other bare word is a column.
_KEYWORDS = frozenset({"and", "or", "not", "is", "null", "in", "between", "like", "ilike", "true", "false"})
#: SQL words that would start a query or a construct this grammar does not have.
_FORBIDDEN = frozenset({"select", "from", "with", "exists", "case", "cast", "values", "union"})
_COMPARISONS = ("<=", ">=", "<>", "!=", "==", "=", "<", ">")
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>'(?:[^']|'')*')
  | (?P<qid>"(?:[^"]|"")+")
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|==|[=<>+\-*/%(),])
""", re.X)


class WhereError(ValueError):
    """A ``where`` that is not a row predicate; the message names the construct."""


@dataclass
class Where:
    """A checked predicate: the columns it reads and whether its value is surely Boolean (else the column it is)."""

    text: str
    columns: set[str] = field(default_factory=set)
    boolean: bool = False
    bare_column: str | None = None


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise WhereError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0
        self.columns: set[str] = set()

    def peek(self, k: int = 0) -> tuple[str, str] | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def word(self, *words: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t is not None and t[0] == "word" and t[1].lower() in words

    def op(self, *ops: str) -> bool:
        t = self.peek()
        return t is not None and t[0] == "op" and t[1] in ops

    def take(self):
        t = self.peek()
        if t is None:
            raise WhereError("the expression ends too early")
        self.i += 1
        return t

    def expect_op(self, op: str):
        t = self.take()
        if t != ("op", op):
            raise WhereError(f"expected {op!r}, found {t[1]!r}")

    # Each level returns (is_boolean, bare column name or None).
    def parse(self):
        result = self.or_()
        if self.peek() is not None:
            raise WhereError(f"unexpected {self.peek()[1]!r} after a complete expression")
        return result

    def or_(self):
        left = self.and_()
        while self.word("or"):
            self.take()
            self.and_()
            left = (True, None)
        return left

    def and_(self):
        left = self.not_()
        while self.word("and"):
            self.take()
            self.not_()
            left = (True, None)
        return left

    def not_(self):
        if self.word("not"):
            self.take()
            self.not_()
            return True, None
        return self.cmp()

    def cmp(self):
        left = self.add()
        if self.op(*_COMPARISONS):
            self.take()
            self.add()
            return True, None
        if self.word("is"):
            self.take()
            if self.word("not"):
                self.take()
            if not self.word("null", "true", "false"):
                raise WhereError("IS must be followed by [NOT] NULL, TRUE or FALSE")
            self.take()
            return True, None
        negated = self.word("not") and self.word("in", "between", "like", "ilike", k=1)
        if negated:
            self.take()
        if self.word("in"):
            self.take()
            self.expect_op("(")
            if self.word("select"):
                raise WhereError("a subquery is not allowed; IN takes a list of literals")
            self.literal()
            while self.op(","):
                self.take()
                self.literal()
            self.expect_op(")")
            return True, None
        if self.word("between"):
            self.take()
            self.add()
            if not self.word("and"):
                raise WhereError("BETWEEN needs AND")
            self.take()
            self.add()
            return True, None
        if self.word("like", "ilike"):
            self.take()
            t = self.take()
            if t[0] != "str":
                raise WhereError("LIKE takes a quoted pattern")
            return True, None
        if negated:
            raise WhereError("NOT must be followed by IN, BETWEEN or LIKE here")
        return left

    def add(self):
        left = self.mul()
        while self.op("+", "-"):
            self.take()
            self.mul()
            left = (False, None)
        return left

    def mul(self):
        left = self.unary()
        while self.op("*", "/", "%"):
            self.take()
            self.unary()
            left = (False, None)
        return left

    def unary(self):
        if self.op("-", "+"):
            self.take()
            self.unary()
            return False, None
        return self.primary()

    def literal(self):
        if self.op("-"):
            self.take()
        t = self.take()
        if t[0] in ("num", "str") or (t[0] == "word" and t[1].lower() in ("true", "false", "null")):
            return
        raise WhereError(f"expected a literal, found {t[1]!r}")

    def primary(self):
        t = self.take()
        kind, text = t
        if kind in ("num", "str"):
            return False, None
        if kind == "qid":
            name = text[1:-1].replace('""', '"')
            self.columns.add(name)
            return False, name
        if kind == "op" and text == "(":
            if self.word("select", "with", "values", "from"):
                raise WhereError("a subquery is not allowed in `where`")
            inner = self.or_()
            self.expect_op(")")
            return inner
        if kind == "word":
            low = text.lower()
            if low in ("true", "false"):
                return True, None
            if low == "null":
                return False, None
            if low in _KEYWORDS or low in _FORBIDDEN:
                raise WhereError(f"{text.upper()} is not allowed here")
            if self.op("("):
                if low not in FUNCTIONS:
                    raise WhereError(f"function {text!r} is not allowed in `where` "
                                     f"(allowed: {', '.join(sorted(FUNCTIONS))})")
                self.take()
                if not self.op(")"):
                    self.or_()
                    while self.op(","):
                        self.take()
                        self.or_()
                self.expect_op(")")
                return False, None
            self.columns.add(text)
            return False, text
        raise WhereError(f"unexpected {text!r}")


def parse_where(text: str) -> Where:
    """Check ``text`` is a row predicate (see the module doc); raises :class:`WhereError` naming what is not."""
    if not text.strip():
        raise WhereError("the expression is empty")
    parser = _Parser(text)
    boolean, column = parser.parse()
    return Where(text, parser.columns, boolean, column)
