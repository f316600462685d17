"""Movie titles: the year in "Gladiator (2000)", and the lossy mojibake of the labels file.

About 1,500 titles of `MovieGenre.csv` went through a broken re-encoding in which every accented
letter became a fixed two-character sequence ("La famille BÌ©lier" for "La famille Bélier";
a second, rarer form writes "Les misí©rables"). `ftfy` does not undo it. Most sequences stand
for one letter (`REPAIRS`, each checked on real titles); a few stand for several (`Ì«` is ō in
"TÌ«kyÌ«", ô in "FantÌ«mas", ů in "MÌ«j pes"; `Ì_` for any of a dozen letters): those are left
as they are by `repair_title`, and only `fold_title` (text-model features, never shown) maps
them to their common base letter where they have one.

The data keeps the raw title; `repair_title` is for display and features.
"""

from __future__ import annotations

import re
import unicodedata

# sequence -> the one letter it stands for in every real title it occurs in
REPAIRS: dict[str, str] = {
    # first form: "Ì" + a second character
    "Ì©": "é", "Ì¬": "è", "ÌÊ": "à", "ÌÁ": "á", "Ì±": "ñ", "Ì¤": "ç", "Ì´": "å",
    "Ì¦": "ö", "Ìü": "ø", "Ìµ": "õ", "Ì¡": "ð", "Ì¼": "ú", "ÌÙ": "ß", "ÌÂ": "ì",
    "ÌÇ": "ë", "Ìø": "ï", "ÌÈ": "ū",
    "Ìä": "É", "Ìà": "Ç", "ÌÐ": "Ö", "ÌÉ": "Å", "ÌÛ": "À", "Ìã": "Ä", "ÌÒ": "Ó",
    "Ì\x81": "Á", "Ìö": "È", "Ì÷": "Ø", "Ì\x8d": "Ú",
    # second form: "í" + a second character
    "í©": "é", "íç": "á", "íæ": "à", "í«": "å", "íÈ": "ê", "íó": "À",
}

# sequences that stand for several letters with one base letter (for features only)
AMBIGUOUS_BASE: dict[str, str] = {
    "Ì«": "o",  # ō ô ů
    "Ì£": "a",  # ã ă
    "Ì¢": "a",  # â ā
    "Ì»": "e",  # ê ē
    "Ì¨": "i",  # î ī, also â in Romanian: rare
    "ÌÓ": "O",  # Ō Ô
    "íÇ": "o",  # ō ô
    "íé": "u",  # ū û
    "í¬": "i",  # î ī
}

_REPAIR_RE = re.compile("|".join(map(re.escape, sorted(REPAIRS, key=len, reverse=True))))
_AMBIGUOUS_RE = re.compile("|".join(map(re.escape, AMBIGUOUS_BASE)))
_LOST_RE = re.compile("Ì.|í_|\x8c.", re.S)  # a sequence with no known letter (Ì_: a lost one)
_YEAR_RE = re.compile(r"^(?P<name>.*?)\s*\((?P<year>(?:18|19|20)\d\d)(?:[-–/]\d{0,4})?\)\s*$")


def parse_title(title: str) -> tuple[str, int | None]:
    """("Gladiator", 2000) from "Gladiator (2000)"; (title stripped, None) without a year."""
    text = (title or "").strip()
    m = _YEAR_RE.match(text)
    if m is None:
        return text, None
    return m.group("name"), int(m.group("year"))


def is_garbled(title: str) -> bool:
    """True when the title carries a mojibake sequence (repairable or not)."""
    return bool(_REPAIR_RE.search(title) or _AMBIGUOUS_RE.search(title) or "Ì" in title)


def repair_title(title: str) -> str:
    """The title with every unambiguous mojibake sequence replaced by its letter."""
    return _REPAIR_RE.sub(lambda m: REPAIRS[m.group()], title or "")


def fold_title(title: str) -> str:
    """Repaired, lower-cased, accents stripped, ambiguous sequences reduced to their base
    letter and lost letters dropped: the form the text model reads."""
    text = _AMBIGUOUS_RE.sub(lambda m: AMBIGUOUS_BASE[m.group()], repair_title(title))
    text = _LOST_RE.sub("", text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.lower()
