"""Text utilities every stage shares: normalisation, shingles that work for every script, language id.

- :func:`fold` / :func:`fold_array`: Unicode NFKC, lower case, runs of whitespace to one space, trimmed
  (the "same text" test for negatives equal to their positive or query).
- :func:`normalize` / :func:`normalize_array`: :func:`fold` plus punctuation and symbols removed (the
  "same text" test of decontamination: ``"A man plays."`` = ``"a man plays"``).
  The Arrow versions are the definition; the scalar ones call them, so both always agree.
- :func:`tokens_array` / :func:`shingles`: the sets MinHash compares. Text is NFKC-normalised and
  lower-cased; tokens are words (letters, digits, combining marks) of scripts written with spaces,
  and single characters of scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer,
  Burmese). Shingles are word 3-grams over the words, and character bigrams over consecutive
  unspaced characters (the usual unit for Chinese near-duplicate detection). ``\\w+`` alone makes a
  whole unspaced Chinese sentence one "word", so two sentences differing by one character share no
  shingle at all. :func:`kalm.minhash.shingle_hashes` computes the same shingles for a whole Arrow
  array at once (hashes instead of strings).
- :func:`detect_language`: script rules first (kana -> ja, Hangul -> ko, Han without kana -> zh),
  which is what short CJK texts need (langid's byte n-gram model confuses them), then py3langid
  (langid.py's model) restricted to a candidate set.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc

# Scripts written without spaces between words: Thai, Lao, Burmese, Khmer, kana, CJK ideographs
# (BMP blocks, compatibility block, extension planes), half-width katakana.
_UNSPACED_RANGES = (("0e00", "0eff"), ("1000", "109f"), ("1780", "17ff"), ("3040", "30ff"), ("31f0", "31ff"),
                    ("3400", "4dbf"), ("4e00", "9fff"), ("f900", "faff"), ("ff66", "ff9f"), ("20000", "3134f"))
_UNSPACED_RE2 = "[" + "".join(f"\\x{{{a}}}-\\x{{{b}}}" for a, b in _UNSPACED_RANGES) + "]"
_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
MARK = "\x01"  # prefix of an unspaced-script character token
_SEPARATOR_RE2 = r"[^\p{L}\p{N}\p{M}_\x01\s]+"  # separators other than whitespace

_PUNCT_RE = r"[\p{P}\p{S}]+"


# ---------------------------------------------------------------- normalisation
def _collapse_spaces(t):
    # Split on Unicode whitespace and join with one space: trims too, 3x faster than a regex replace.
    return pc.binary_join(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(t)), " ")


def fold_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """NFKC, lower case, whitespace runs -> one space, trimmed; nulls stay null. Vectorised (Arrow)."""
    return _collapse_spaces(pc.utf8_lower(pc.utf8_normalize(texts, form="NFKC")))


def normalize_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """:func:`fold_array` with punctuation and symbols (Unicode P* and S*) removed."""
    t = pc.utf8_lower(pc.utf8_normalize(texts, form="NFKC"))
    return _collapse_spaces(pc.replace_substring_regex(t, _PUNCT_RE, " "))


def fold(text: str) -> str:
    return fold_array(pa.array([text], pa.string()))[0].as_py()


def normalize(text: str) -> str:
    return normalize_array(pa.array([text], pa.string()))[0].as_py()


# ---------------------------------------------------------------- shingles
def tokens_array(texts: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Per text, its tokens: words, and single characters of unspaced scripts prefixed with ``MARK``."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    t = pc.utf8_lower(pc.utf8_normalize(texts.cast(pa.string()), form="NFKC"))
    t = pc.replace_substring_regex(t, f"({_UNSPACED_RE2})", f" {MARK}\\1 ")
    tokens = pc.utf8_split_whitespace(pc.replace_substring_regex(t, _SEPARATOR_RE2, " "))
    tokens = pc.fill_null(tokens, pa.scalar([], tokens.type)) if tokens.null_count else tokens
    flat, parents = pc.list_flatten(tokens), pc.list_parent_indices(tokens)
    keep = pc.greater(pc.utf8_length(flat), 0)
    import numpy as np

    par = np.asarray(parents.filter(keep))
    counts = np.bincount(par, minlength=len(tokens)) if len(par) else np.zeros(len(tokens), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(keep))


def shingles(text: str, n: int = 3) -> set[str]:
    """Word ``n``-grams and unspaced-character bigrams of ``text`` (see the module doc).

    Fewer than ``n`` words give the words joined as one shingle; an unspaced character with no
    unspaced neighbour gives itself; a text with no token at all gives its folded self; so every
    non-blank text has at least one shingle.
    """
    tokens = tokens_array(pa.array([text], pa.string()))[0].as_py() or []
    words = [t for t in tokens if not t.startswith(MARK)]
    out: set[str] = set()
    for a, b in zip(tokens, tokens[1:]):
        if a.startswith(MARK) and b.startswith(MARK):
            out.add(a[1:] + b[1:])
    for i, t in enumerate(tokens):
        if t.startswith(MARK) and not (i > 0 and tokens[i - 1].startswith(MARK)) and \
                not (i + 1 < len(tokens) and tokens[i + 1].startswith(MARK)):
            out.add(t[1:])
    if words:
        out.update(" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1)))
    if not out and text.strip():
        out.add(fold(text))
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
