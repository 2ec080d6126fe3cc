"""A tiny integer arithmetic parser for cells such as ``2_048 * 8``: never ``eval``.

Grammar (whitespace allowed between tokens)::

    expr   := term ('+' term)*
    term   := factor ('*' factor)*
    factor := INT | '(' expr ')'
    INT    := digits, optionally grouped by single underscores (2_048)

Everything else that Python's ``eval`` would accept (floats, ``**``, ``-``, ``/``, names,
calls, hex literals, ``True``) is refused with the position of the first offending character.
"""

from __future__ import annotations

import re

MAX_LENGTH = 200
MAX_DEPTH = 16
GRAMMAR = "whole numbers (2_048 style separators allowed) combined with +, * and parentheses"

_TOKEN = re.compile(r"\s*(?:(?P<int>[0-9]+(?:_[0-9]+)*)(?![\w.])|(?P<op>[+*()]))")


class ExprError(ValueError):
    """The text is not an integer expression; the message says where and why."""


def parse_int_expr(text: str) -> int:
    """'2_048 * 8' -> 16384. Raises ExprError naming the first character that is not allowed."""
    if not isinstance(text, str):
        raise ExprError(f"{text!r} is not text")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
    parser = _Parser(text)
    value = parser.expr(0)
    parser.expect_end()
    return value


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, value, position)
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m:
                start = pos + len(text[pos:]) - len(text[pos:].lstrip())
                self.fail(start)
            kind = "int" if m.group("int") is not None else "op"
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0

    def fail(self, pos: int, what: str | None = None) -> None:
        if pos >= len(self.text):
            found = "end of text"
        else:
            found = what or repr(_offending(self.text, pos))
        raise ExprError(
            f"{self.text!r} is not an integer expression: unexpected {found} at position {pos} "
            f"(allowed: {GRAMMAR})"
        )

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, op: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] == op:
            self.i += 1
            return True
        return False

    def expr(self, depth: int) -> int:
        value = self.term(depth)
        while self.take("+"):
            value += self.term(depth)
        return value

    def term(self, depth: int) -> int:
        value = self.factor(depth)
        while self.take("*"):
            value *= self.factor(depth)
        return value

    def factor(self, depth: int) -> int:
        tok = self.peek()
        if tok is None:
            self.fail(len(self.text))
        kind, value, pos = tok
        if kind == "int":
            self.i += 1
            return int(value.replace("_", ""))
        if value == "(":
            if depth >= MAX_DEPTH:
                raise ExprError(f"{self.text!r}: parentheses nested deeper than {MAX_DEPTH}")
            self.i += 1
            inner = self.expr(depth + 1)
            if not self.take(")"):
                nxt = self.peek()
                self.fail(nxt[2] if nxt else len(self.text))
            return inner
        self.fail(pos)
        raise AssertionError("unreachable")

    def expect_end(self) -> None:
        tok = self.peek()
        if tok is not None:
            self.fail(tok[2])


def _offending(text: str, pos: int) -> str:
    # Name the whole offending word ('2048.0', 'int', '0x800'), not only its first character.
    m = re.match(r"[\w.]+", text[pos:])
    return m.group(0) if m else text[pos]
