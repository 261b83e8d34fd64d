"""Text from the wire or from a scenario, made safe to show: controls shown, never obeyed.

A request target, a header value or an engine's log line can hold escape
sequences that would clear a terminal, set its title, or reorder a line
(bidi overrides). Every view (the terminal summary, HTML, Markdown, JUnit)
passes such text through `visible` before its own escaping.
"""

from __future__ import annotations

import unicodedata

_PICTURES = {0x7F: "\u2421"}  # DEL; C0 controls map to U+2400 + code below


def visible(text: object) -> str:
    """``text`` with every control or invisible format character shown, not obeyed.

    C0 controls become their Unicode pictures (a newline shows as U+240A),
    anything else that would act rather than print (C1 controls, bidi
    overrides, line separators) becomes ``<U+XXXX>`` in words.
    """
    text = str(text)
    if text.isprintable():  # the usual case: nothing to show differently
        return text
    out = []
    for char in text:
        code = ord(char)
        if code < 0x20:
            out.append(chr(0x2400 + code))
        elif code in _PICTURES:
            out.append(_PICTURES[code])
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"\u27e8U+{code:04X}\u27e9")
        else:
            out.append(char)
    return "".join(out)
