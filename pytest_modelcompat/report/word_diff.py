"""The word-level diff of an old and a new generation, as report.html shows it."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from markupsafe import Markup, escape


def _words_html(words: Sequence[str]) -> Markup:
    return Markup(" ").join(escape(word) for word in words)


def word_diff_html(old: str, new: str) -> Markup:
    """``old`` → ``new`` as HTML: words only in old inside ``<del>``, words only in new inside
    ``<ins>``, shared words as they are.

    Words are the whitespace-separated tokens (a change of spacing alone is no difference), joined
    by single spaces. Each token is escaped before it is wrapped, so model text never becomes markup.
    """
    old_words, new_words = old.split(), new.split()
    # autojunk off: on texts of 200+ words it would ignore frequent words ("the") and misalign the diff
    matcher = difflib.SequenceMatcher(a=old_words, b=new_words, autojunk=False)
    parts: list[Markup] = []
    for tag, old_start, old_end, new_start, new_end in matcher.get_opcodes():
        if tag == "equal":
            parts.append(_words_html(old_words[old_start:old_end]))
            continue
        if old_end > old_start:
            parts.append(Markup("<del>%s</del>") % _words_html(old_words[old_start:old_end]))
        if new_end > new_start:
            parts.append(Markup("<ins>%s</ins>") % _words_html(new_words[new_start:new_end]))
    return Markup(" ").join(parts)
