"""A safe parser for the expression language of the ``lazymat`` command (no ``eval``).

Grammar (Python's precedence; ``@``, ``*`` and ``/`` bind alike, left to right)::

    sum     := product (('+' | '-') product)*
    product := unary (('@' | '*' | '/') unary)*
    unary   := ('-' | '+') unary | postfix
    postfix := atom ('.T' | '.mT' | '[' index (',' index)* [','] ']')*
    atom    := NAME | NUMBER | '(' sum ')'
    index   := INT | [INT] ':' [INT] [':' [INT]] | '...' | 'None'

Names are looked up in a mapping of expressions; numbers are scalars (``1e-3`` too; one past
float64's range, ``1e309``, is an error, not inf; ``nan`` and ``inf`` are errors too). Errors
are :class:`ParseError` s that point at the column with a caret; unknown names come with the
nearest known ones. Parentheses may nest :data:`MAX_NESTING` deep (the parser recurses).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .expr import Expr
from .indexing import normalise

__all__ = ["MAX_NESTING", "NON_FINITE_WORDS", "ParseError", "check_syntax", "did_you_mean", "names_in",
           "parse"]

MAX_NESTING = 100
NON_FINITE_WORDS = frozenset({"nan", "inf", "infinity"})  # refused as names (lower-cased)

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\d*\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<ellipsis>\.\.\.)|(?P<attr>\.(?:mT|T)\b)"
    r"|(?P<op>[-+*/@()\[\]:,]))"
)


class ParseError(ValueError):
    """A syntax or name error, with the text and a caret under the column at fault."""

    def __init__(self, message: str, text: str, column: int, caret: bool = True):
        self.column = column
        where = f"{message} at column {column + 1}"
        if not caret:
            super().__init__(where)
            return
        start = max(0, min(column - 40, len(text) - 80))  # long texts: 80 characters around it
        shown = text[start : start + 80]
        pad = column - start
        if start > 0:
            shown, pad = "..." + shown, pad + 3
        if start + 80 < len(text):
            shown += "..."
        super().__init__(f"{where}\n  {shown}\n  {' ' * pad}^")


@dataclass
class _Tok:
    kind: str
    text: str
    col: int


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean W_Q?)`` for the known names nearest ``name``, or ``""``."""
    near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(near)}?)" if near else ""


def names_in(text: str) -> list[str]:
    """The names ``text`` refers to, in order of appearance (``1e-3`` is a number)."""
    return list(dict.fromkeys(t.text for t in _tokens(text) if t.kind == "name" and t.text != "None"))


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise ParseError(f"unexpected character {text[col]!r}", text, col)
        kind = m.lastgroup
        start = m.start(kind)
        out.append(_Tok(kind, m.group(kind), start))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


class _Unknown:
    """Any name's matrix in :func:`check_syntax`: every operation on it is another such matrix
    (shapes are not known, so only the grammar and the kinds of operands are checked)."""

    mT = property(lambda self: self)

    def __getitem__(self, key: Any) -> _Unknown:
        return self

    def _same(self, *other: Any) -> _Unknown:
        return self

    __neg__ = __matmul__ = __rmatmul__ = __mul__ = __rmul__ = __truediv__ = _same
    __add__ = __radd__ = __sub__ = __rsub__ = _same


_UNKNOWN = _Unknown()


def _is_matrix(value: Any) -> bool:
    return isinstance(value, (Expr, _Unknown))


class _Parser:
    def __init__(self, text: str, names: Mapping[str, Any] | None):
        self.text, self.names = text, names
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def fail(self, expected: str, tok: _Tok | None = None) -> ParseError:
        tok = tok or self.tok
        got = "end of input" if tok.kind == "end" else repr(tok.text)
        return ParseError(f"expected {expected}, got {got}", self.text, tok.col)

    def take(self, text: str) -> bool:
        if self.tok.kind in ("op", "ellipsis") and self.tok.text == text:
            self.i += 1
            return True
        return False

    def parse(self) -> Any:
        value = self.sum()
        if self.tok.kind != "end":
            raise self.fail("an operator ('@', '+', '-', '*', '/') or the end")
        if not _is_matrix(value):
            raise ParseError("the expression is a number, not a matrix", self.text, 0)
        return value

    def sum(self) -> Any:
        return self._left_assoc("+-", self.product)

    def product(self) -> Any:
        return self._left_assoc("@*/", self.unary)

    def _left_assoc(self, ops: str, operand) -> Any:
        """``operand (op operand)*`` for the operators in ``ops``, applied left to right."""
        left = operand()
        while self.tok.kind == "op" and self.tok.text in ops:
            op = self.tok
            self.i += 1
            left = self._apply(op, left, operand())
        return left

    def unary(self) -> Any:
        negate = False
        while self.tok.kind == "op" and self.tok.text in "+-":  # a loop: '-----X' must not recurse
            negate ^= self.tok.text == "-"
            self.i += 1
        value = self.postfix()
        return -value if negate else value

    def postfix(self) -> Any:
        value = self.atom()
        while True:
            if self.tok.kind == "attr":
                if not _is_matrix(value):
                    raise ParseError(f"{self.tok.text} needs a matrix, not a number", self.text, self.tok.col)
                value = value.mT
                self.i += 1
            elif self.tok.kind == "op" and self.tok.text == "[":
                bracket = self.tok
                self.i += 1
                key = self.index_list()
                if not _is_matrix(value):
                    raise ParseError("only matrices can be indexed", self.text, bracket.col)
                if value is _UNKNOWN:  # the key is checked against the shape once it is known
                    continue
                try:
                    _, row, col = normalise(tuple(value.shape), key)
                    if isinstance(row, int) or isinstance(col, int):  # checked before: it would evaluate
                        raise ParseError("an integer on the row or column dim gives a tensor, not a "
                                         "matrix: use a slice such as 3:4", self.text, bracket.col)
                    value = value[key]
                except (IndexError, ValueError, TypeError, OverflowError, NotImplementedError) as e:
                    if isinstance(e, ParseError):
                        raise
                    raise ParseError(str(e).splitlines()[0], self.text, bracket.col, caret=False) from None
            else:
                return value

    def index_list(self) -> tuple:
        items = [self.index()]
        while self.take(","):
            if self.tok.kind == "op" and self.tok.text == "]":  # a trailing comma, as Python allows
                break
            items.append(self.index())
        if not self.take("]"):
            raise self.fail("',' or ']'")
        return tuple(items)

    def _int(self) -> int | None:
        neg = self.take("-")
        if self.tok.kind == "num" and self.tok.text.isdigit():
            if len(self.tok.text) > 18:
                raise ParseError(f"index with {len(self.tok.text)} digits is out of range", self.text,
                                 self.tok.col)
            v = int(self.tok.text)
            self.i += 1
            return -v if neg else v
        if neg:
            raise self.fail("an integer")
        return None

    def index(self) -> Any:
        if self.take("..."):
            return Ellipsis
        if self.tok.kind == "name" and self.tok.text == "None":
            self.i += 1
            return None
        start = self._int()
        if not self.take(":"):
            if start is None:
                raise self.fail("an integer, a slice, '...' or None")
            return start
        stop = self._int()
        step = None
        if self.take(":"):
            step = self._int()
        return slice(start, stop, step)

    def atom(self) -> Any:
        tok = self.tok
        if tok.kind == "num":
            self.i += 1
            value = float(tok.text)
            if math.isinf(value):  # 1e309: past float64's range, never what was meant
                raise ParseError(f"number {tok.text} is out of range (a float64 holds at most 1.8e308)",
                                 self.text, tok.col)
            return value
        if tok.kind == "name":
            if tok.text.lower() in NON_FINITE_WORDS:  # read as a matrix name, '*' would blame the operator
                raise ParseError(f"{tok.text!r} is not a number here: expressions have no NaN or infinite "
                                 "literals (scale in Python instead: float('nan') * X)", self.text, tok.col)
            self.i += 1
            if self.names is None:
                return _UNKNOWN
            if tok.text not in self.names:
                known = ", ".join(sorted(self.names)) or "none"
                raise ParseError(f"unknown name {tok.text!r}{did_you_mean(tok.text, self.names)} "
                                 f"(known: {known})", self.text, tok.col)
            return self.names[tok.text]
        if self.take("("):
            if self.depth == MAX_NESTING:
                raise ParseError(f"parentheses nested deeper than {MAX_NESTING} levels", self.text, tok.col)
            self.depth += 1
            value = self.sum()
            self.depth -= 1
            if not self.take(")"):
                raise self.fail("')'")
            return value
        raise self.fail("a name, a number or '('")

    def _apply(self, op: _Tok, left: Any, right: Any) -> Any:
        try:
            if op.text == "@":
                if not (_is_matrix(left) and _is_matrix(right)):
                    raise ParseError("'@' needs matrices on both sides", self.text, op.col)
                return left @ right
            if op.text == "*":
                if _is_matrix(left) and _is_matrix(right):
                    raise ParseError("'*' multiplies by a number; use '@' for matrix products",
                                     self.text, op.col)
                return left * right
            if op.text == "/":
                if _is_matrix(right):
                    raise ParseError("can only divide by a number", self.text, op.col)
                return left / right
            if _is_matrix(left) != _is_matrix(right):
                raise ParseError(f"'{op.text}' between a matrix and a number", self.text, op.col)
            return left + right if op.text == "+" else left - right
        except (ValueError, TypeError, ArithmeticError) as e:
            if isinstance(e, ParseError):
                raise
            raise ParseError(str(e).splitlines()[0], self.text, op.col, caret=False) from None


def parse(text: str, names: Mapping[str, Any]) -> Expr:
    """Build the expression ``text`` from the expressions in ``names``; a syntax error anywhere
    in it is reported before any error of evaluating its start (``A / 0 A``: the stray ``A``,
    not the division by zero)."""
    check_syntax(text)
    return _Parser(text, names).parse()


def check_syntax(text: str) -> None:
    """Raise the :class:`ParseError` of ``text``'s grammar and kinds of operands (``A * B``
    between matrices, a number indexed), before any name needs a shape: a user is told of a
    syntax error first, not asked for the shapes of an expression that cannot parse."""
    _Parser(text, None).parse()
