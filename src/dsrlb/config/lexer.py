"""Tokens of the BalanceNG config language, with the line and column each one starts at.

The language is line oriented, so line breaks are tokens. A word is any run of characters other than
white space, braces and double quotes; `//` at the start of a token comments out the rest of the line
(inside a word it is kept, so an HTTP check path may contain it). Quoted strings have no escapes and end
on the same line. Lexing never fails: problems are returned as positioned messages next to the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

WORD = "word"
STRING = "string"
LBRACE = "{"
RBRACE = "}"
NEWLINE = "newline"
EOF = "eof"


@dataclass(frozen=True)
class Token:
    kind: str
    text: str  # a string's text without its quotes
    line: int
    col: int  # 1-based column of the first character (of the opening quote for strings)
    end: int  # column just after the token

    @property
    def vcol(self) -> int:
        """Column of the first character of the value, so list items can be located inside strings."""
        return self.col + 1 if self.kind == STRING else self.col


def tokenize(text: str) -> tuple[list[Token], list[tuple[int, int, str]]]:
    """Split `text` into tokens ending with EOF; errors are (line, col, message)."""
    tokens: list[Token] = []
    errors: list[tuple[int, int, str]] = []
    i, n, line, line_start = 0, len(text), 1, 0
    while i < n:
        c = text[i]
        col = i - line_start + 1
        if c == "\n":
            tokens.append(Token(NEWLINE, "\n", line, col, col + 1))
            line, line_start, i = line + 1, i + 1, i + 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            i = _line_end(text, i)
        elif c in "{}":
            tokens.append(Token(c, c, line, col, col + 1))
            i += 1
        elif c == '"':
            close, eol = text.find('"', i + 1), _line_end(text, i)
            if close == -1 or close > eol:
                errors.append((line, col, "unterminated string: add the closing '\"' on the same line"))
                tokens.append(Token(STRING, text[i + 1 : eol], line, col, eol - line_start + 1))
                i = eol
            else:
                tokens.append(Token(STRING, text[i + 1 : close], line, col, close - line_start + 2))
                i = close + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in '{}"':
                j += 1
            tokens.append(Token(WORD, text[i:j], line, col, j - line_start + 1))
            i = j
    tokens.append(Token(EOF, "", line, i - line_start + 1, i - line_start + 1))
    return tokens, errors


def _line_end(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end == -1 else end
