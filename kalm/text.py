"""Text utilities every stage shares: normalisation, shingles that work for every script, language id.

- :func:`fold` / :func:`fold_array`: Unicode NFKC, lower case, runs of whitespace to one space, trimmed
  (the "same text" test for negatives equal to their positive or query).
- :func:`normalize` / :func:`normalize_array`: :func:`fold` plus punctuation and symbols removed (the
  "same text" test of decontamination: ``"A man plays."`` = ``"a man plays"``).
  The Arrow versions are the definition; the scalar ones call them, so both always agree.
- :func:`shingles`: the sets MinHash compares. Scripts written with spaces give word n-grams
  (``n=3``); scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Burmese) give
  character n-grams (``char_n=2``, the usual unit for Chinese near-duplicate detection) of each
  unspaced run. ``\\w+`` alone makes a whole unspaced Chinese sentence one "word", so two sentences
  differing by one character share no shingle at all.
- :func:`detect_language`: script rules first (kana -> ja, Hangul -> ko, Han without kana -> zh),
  which is what short CJK texts need (langid's byte n-gram model confuses them), then py3langid
  (langid.py's model) restricted to a candidate set.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Callable, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc

# Scripts written without spaces between words: Thai, Lao, Burmese, Khmer, kana, CJK ideographs
# (BMP blocks, compatibility block, extension planes), half-width katakana.
_UNSPACED = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
             "\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f")
_RUN = re.compile(f"[{_UNSPACED}]+")
_WORD = re.compile(f"[^\\W{_UNSPACED}]+")
_ASCII_WORD = re.compile(r"\w+")
_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")

# RE2 (Arrow's regex engine) classes: \s is ASCII-only there, \p{Z} adds the Unicode spaces.
_SPACE_RE = r"[\s\p{Z}]+"
_PUNCT_RE = r"[\p{P}\p{S}]+"


# ---------------------------------------------------------------- normalisation
def fold_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """NFKC, lower case, whitespace runs -> one space, trimmed; nulls stay null. Vectorised (Arrow)."""
    t = pc.utf8_normalize(texts, form="NFKC")
    t = pc.utf8_lower(t)
    t = pc.replace_substring_regex(t, _SPACE_RE, " ")
    return pc.utf8_trim_whitespace(t)


def normalize_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """:func:`fold_array` with punctuation and symbols (Unicode P* and S*) removed."""
    t = pc.utf8_normalize(texts, form="NFKC")
    t = pc.utf8_lower(t)
    t = pc.replace_substring_regex(t, _PUNCT_RE, " ")
    t = pc.replace_substring_regex(t, _SPACE_RE, " ")
    return pc.utf8_trim_whitespace(t)


def fold(text: str) -> str:
    return fold_array(pa.array([text], pa.string()))[0].as_py()


def normalize(text: str) -> str:
    return normalize_array(pa.array([text], pa.string()))[0].as_py()


# ---------------------------------------------------------------- shingles
def shingles(text: str, n: int = 3, char_n: int = 2) -> set[str]:
    """Word ``n``-grams of the spaced parts of ``text`` and character ``char_n``-grams of its unspaced
    runs (after NFKC and lower-casing; punctuation never forms part of a token).

    A text with fewer than ``n`` words gives its words joined as one shingle, a run shorter than
    ``char_n`` gives itself, so every non-blank text has at least one shingle.
    """
    if text.isascii():  # no unspaced script, NFKC is the identity: the common case, kept fast
        t = text.lower()
        words, runs = _ASCII_WORD.findall(t), []
    else:
        t = unicodedata.normalize("NFKC", text).lower()
        words, runs = _WORD.findall(t), _RUN.findall(t)
    out: set[str] = set()
    for run in runs:
        if len(run) <= char_n:
            out.add(run)
        else:
            out.update(run[i:i + char_n] for i in range(len(run) - char_n + 1))
    if words:
        out.update(" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1)))
    if not out and text.strip():
        out.add(" ".join(t.split()))
    return out


# ---------------------------------------------------------------- language id
# A candidate set keeps langid from answering rare languages for short texts.
MAJOR_LANGUAGES = ("en", "zh", "es", "fr", "de", "it", "pt", "nl", "pl", "ru", "ja", "ko", "ar", "hi", "tr", "sv")


@functools.lru_cache(maxsize=8)
def _identifier(languages: tuple[str, ...]):
    # py3langid: langid.py's model and results, loaded in ~0.3 s; once per process and candidate set.
    # Read-only after set_languages, so threads share it.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(languages))
    return identifier


def script_language(text: str) -> Optional[str]:
    """``ja``/``ko``/``zh`` when CJK characters make up at least 30 % of the letters, else None.

    Any kana in a CJK text means Japanese (Japanese mixes kanji and kana; Chinese has no kana).
    """
    letters = sum(ch.isalpha() for ch in text)
    if not letters:
        return None
    kana, han, hangul = len(_KANA.findall(text)), len(_HAN.findall(text)), len(_HANGUL.findall(text))
    if kana and (kana + han) >= 0.3 * letters:
        return "ja"
    if hangul >= 0.3 * letters:
        return "ko"
    if han >= 0.3 * letters:
        return "zh"
    return None


def detect_language(text: str, candidates: Iterable[str] = ()) -> str:
    """ISO 639-1 code of ``text``: script rules for CJK, else py3langid over MAJOR_LANGUAGES + ``candidates``."""
    lang = script_language(text)
    if lang is not None:
        return lang
    return _identifier(tuple(sorted(set(MAJOR_LANGUAGES) | set(candidates)))).classify(text)[0]


def language_detector(languages: Iterable[str]) -> Callable[[str], str]:
    """A ``text -> language code`` function with ``languages`` among the candidates."""
    langs = tuple(languages)
    _identifier(tuple(sorted(set(MAJOR_LANGUAGES) | set(langs))))  # load the model once, up front
    return functools.partial(detect_language, candidates=langs)
