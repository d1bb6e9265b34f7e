"""rst_to_text: plain-text --help of the example scripts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from wsseg.utils import rst_to_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = ["train_scd.py", "train_cosa.py", "train_slrnet.py", "train_apc.py"]


def _doc(name: str) -> str:
    return ast.get_docstring(ast.parse((EXAMPLES / name).read_text()), clean=False)


def test_inline_markup_hand_cases():
    assert rst_to_text("a :class:`~wsseg.training.Trainer` b") == "a Trainer b"
    assert rst_to_text(":func:`wsseg.pseudo.cam_to_label`") == "wsseg.pseudo.cam_to_label"
    assert rst_to_text(":doc:`the guide <own_model>` and :py:meth:`x.y`") == "the guide and x.y"
    assert rst_to_text(":math:`K+1` channels, ``--set k=v``") == "K+1 channels, --set k=v"
    assert rst_to_text("**strong** and *emph* and `interp`") == "strong and emph and interp"
    assert rst_to_text("2 x 2 * 3, a*b, vis/*.png") == "2 x 2 * 3, a*b, vis/*.png"


def test_literal_block_rules():
    text = "Run it::\n\n    python x.py --set a=``b``  # *kept*\n\nAfter ``x``.\n"
    assert rst_to_text(text) == "Run it:\n\n    python x.py --set a=``b``  # *kept*\n\nAfter x."
    assert rst_to_text("Run it ::\n\n    cmd\n") == "Run it\n\n    cmd"
    assert rst_to_text("Text.\n\n::\n\n    cmd :class:`X`\n\nEnd") == "Text.\n\n\n    cmd :class:`X`\n\nEnd"
    assert rst_to_text(".. code-block:: bash\n\n    a \\\n      b\n\nok ``c``") == "    a \\\n      b\n\nok c"


def test_type_error():
    with pytest.raises(TypeError, match="text"):
        rst_to_text(None)


@pytest.mark.parametrize("name", SCRIPTS)
def test_real_docstrings_render_plain(name):
    doc = _doc(name)
    assert "``" in doc and ":class:`" in doc          # the source really is reStructuredText
    text = rst_to_text(doc)
    assert "``" not in text
    assert not re.search(r":[a-z]+:`", text)
    assert not any(line.rstrip().endswith("::") for line in text.splitlines())
    # the literal command lines survive verbatim (continuation backslashes included)
    commands = [line for line in doc.splitlines() if line.startswith("    ") and "examples/" in line]
    assert commands and all(line.rstrip() in text.splitlines() for line in commands)


def test_help_of_the_cli_is_plain():
    from wsseg.training.cli import TSCD_CLI, build_parser

    help_text = build_parser(TSCD_CLI, _doc("train_scd.py")).format_help()
    assert "``" not in help_text and ":class:`" not in help_text
    assert "(wsseg.training.Trainer)" in help_text
