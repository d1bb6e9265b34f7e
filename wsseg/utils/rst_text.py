"""Render reStructuredText docstrings as plain text for a terminal (``--help`` of the example scripts)."""

from __future__ import annotations

import re

__all__ = ["rst_to_text"]

# :role:`text`, :domain:role:`text` (Sphinx roles: class, func, math, doc, ...)
_ROLE = re.compile(r":(?:[A-Za-z][\w+-]*:)?[A-Za-z][\w+-]*:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*\\])\*(\S(?:[^*]*?\S)?)\*(?![\w*])")
_INTERPRETED = re.compile(r"(?<![\w`])`([^`]+)`_{0,2}(?![\w`])")
_DIRECTIVE = re.compile(r"^\s*\.\.\s+[\w:-]+::")


def _role_text(match: re.Match) -> str:
    text = match.group(1)
    if text.endswith(">") and "<" in text:          # :func:`title <target>`
        return text[: text.rindex("<")].rstrip()
    text = text.lstrip("!")
    if text.startswith("~"):                        # :class:`~pkg.mod.Name` -> Name
        return text[1:].rsplit(".", 1)[-1]
    return text


def _inline(line: str) -> str:
    line = _LITERAL.sub(lambda m: m.group(1), line)
    line = _ROLE.sub(_role_text, line)
    line = _STRONG.sub(lambda m: m.group(1), line)
    line = _EMPHASIS.sub(lambda m: m.group(1), line)
    line = _INTERPRETED.sub(lambda m: m.group(1), line)
    return line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_to_text(text: str) -> str:
    r"""Turn the reStructuredText of a docstring into plain text for a terminal.

    Inline markup is reduced to its text, literal blocks are kept verbatim::

        :class:`~wsseg.training.Trainer`          ->  Trainer
        :func:`wsseg.pseudo.cam_to_label`         ->  wsseg.pseudo.cam_to_label
        :doc:`the guide <own_model>`              ->  the guide
        :math:`K+1`, ``--set k=v``, **a**, *b*    ->  K+1, --set k=v, a, b
        text::      (then an indented block)      ->  text:     (the block verbatim)
        text ::     /   a lone ::                 ->  text      /   (dropped)
        .. code-block:: bash                      ->  (dropped; its body verbatim)

    i.e. roles (a leading ``~`` keeps the last name, an explicit title wins), inline literals, strong,
    emphasis and interpreted text; a paragraph ending in ``::`` follows the rST rules and the indented
    block after it gets no inline replacement (shell lines stay exactly as written). Line breaks and
    indentation are kept, so the result suits ``argparse.RawDescriptionHelpFormatter``.

    Args:
        text: a docstring (reStructuredText).

    Returns:
        The plain text.

    Raises:
        TypeError: if ``text`` is not a string.

    Example:
        >>> print(rst_to_text("Uses :class:`~wsseg.training.Trainer` and ``--set k=v``::\n\n    run *this*\n"))
        Uses Trainer and --set k=v:
        <BLANKLINE>
            run *this*

    Source:
        Written for wsseg (reStructuredText markup spec, docutils.sourceforge.io/docs/ref/rst/restructuredtext.html).
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    out: list[str] = []
    literal = False          # inside a literal block / directive body
    expect = False           # the previous paragraph ended with '::' (or a directive line was read)
    base = 0                 # indentation of the paragraph that opened the block
    for line in text.splitlines():
        stripped = line.strip()
        if literal:
            if not stripped or _indent(line) > base:
                out.append(line.rstrip())
                continue
            literal = False
        if expect:
            if not stripped:
                out.append("")
                continue
            expect = False
            if _indent(line) > base:
                literal = True
                out.append(line.rstrip())
                continue
        if _DIRECTIVE.match(line):
            expect, base = True, _indent(line)
            continue
        if stripped.endswith("::"):
            expect, base = True, _indent(line)
            if stripped == "::":
                continue
            head = line.rstrip()[:-2]
            line = head.rstrip() if head.endswith((" ", "\t")) else head + ":"
        out.append(_inline(line.rstrip()))
    while out and not out[-1]:
        out.pop()
    while out and not out[0]:
        out.pop(0)
    return "\n".join(out)
