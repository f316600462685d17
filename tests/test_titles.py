"""Title parsing and the mojibake repair table (on real titles where ../shared/data is present)."""

from __future__ import annotations

import pandas as pd
import pytest

from postergenre.data.titles import REPAIRS, fold_title, is_garbled, parse_title, repair_title


@pytest.mark.parametrize(("title", "expected"), [
    ("Gladiator (2000)", ("Gladiator", 2000)),
    ("  Nerve (2016) ", ("Nerve", 2016)),
    ("Dune", ("Dune", None)),
    ("Blade Runner 2049 (2017)", ("Blade Runner 2049", 2017)),
    ("1984 (1984)", ("1984", 1984)),
    ("Band of Brothers (2001-2001)", ("Band of Brothers", 2001)),
    ("Studio (1234)", ("Studio (1234)", None)),
    ("", ("", None)),
])
def test_parse_title(title: str, expected: tuple) -> None:
    assert parse_title(title) == expected


def test_repair_table() -> None:
    assert repair_title("La famille BÌ©lier (2014)") == "La famille Bélier (2014)"
    assert repair_title("O Ano em Que Meus Pais SaÌ_ram de FÌ©rias") == \
        "O Ano em Que Meus Pais SaÌ_ram de Férias"  # Ì_ is several letters: left alone
    assert repair_title("Les misí©rables (1995)") == "Les misérables (1995)"
    assert repair_title("Die groÌÙe Ekstase") == "Die große Ekstase"
    assert repair_title("Amélie (2001)") == "Amélie (2001)"  # clean titles are untouched
    assert all(len(k) == 2 and len(v) == 1 for k, v in REPAIRS.items())


def test_fold_title() -> None:
    assert fold_title("TÌ«kyÌ« zonbi") == "tokyo zonbi"  # ō / ô / ů: base letter only
    assert fold_title("La famille BÌ©lier") == fold_title("La Famille Bélier") == \
        "la famille belier"
    assert "ì" not in fold_title("SaÌ_ram") and "_" not in fold_title("SaÌ_ram")
    assert fold_title("Mad_Max") == "mad_max"


@pytest.mark.realdata
def test_repair_on_real_titles(real_data) -> None:
    titles = pd.read_csv(real_data / "movies.csv", keep_default_na=False)["Title"]
    garbled = titles[titles.map(is_garbled)]
    repaired = garbled.map(repair_title)
    assert len(garbled) > 1000
    changed = (repaired != garbled).sum()
    assert changed > 0.5 * len(garbled)  # most garbled titles gain a letter
    assert not any(k in t for t in repaired for k in REPAIRS)
    assert "La famille Bélier (2014)" in set(repaired)
    clean = titles[~titles.map(is_garbled)]
    assert (clean.map(repair_title) == clean).all()  # nothing else is touched
    assert not any("Ì" in fold_title(t) for t in garbled)
