"""One way to put a user's text into a message: literally, never as Markdown.

`st.error`/`st.warning` render Markdown, so a path pattern such as `*>m0>*` would show as
italics and a `$` would start LaTeX. `plain` escapes every Markdown/LaTeX character of a message
(or an exception's text), and `code` shows one user value as an inline code span.
"""

from __future__ import annotations

import re

# Characters that start Markdown emphasis, code, strike-through or LaTeX anywhere in a line;
# an underscore only at a word's edge (d_model stays as is: intraword _ is not emphasis).
_SPECIAL = re.compile(r"([\\`*~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def plain(text) -> str:
    """`text` (any object; exceptions give their message) with the characters that Markdown or
    LaTeX would interpret backslash-escaped, so it displays exactly as written, on one line.
    Ordinary punctuation is left alone, so messages stay readable in logs and tests."""
    s = _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
    if "](" in s:
        s = s.replace("[", "\\[")
    if s and s[0] in "#>-+=|":  # block syntax at the start of the line
        s = "\\" + s
    return s


def code(text) -> str:
    """One user value as an inline code span (backticks inside are handled by a longer fence)."""
    s = " ".join(str(text).split())
    fence = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"
