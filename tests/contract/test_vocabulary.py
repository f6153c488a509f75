"""`src/dsrlb/vocabulary.py` is the one source of the config and control words: the collection's copy is
its generated mirror, and the daemon's config model agrees with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dsrlb import vocabulary
from dsrlb.config import model

MIRROR = Path(__file__).resolve().parents[2] / "plugins/module_utils/vocabulary.py"


def test_collection_mirror_is_generated_from_the_vocabulary():
    assert MIRROR.read_text() == vocabulary.mirror(), (
        "plugins/module_utils/vocabulary.py is stale; regenerate it with "
        "`.venv/bin/python -m dsrlb.vocabulary > plugins/module_utils/vocabulary.py`"
    )


def test_mirror_holds_every_name_with_its_value():
    names: dict = {}
    exec(compile(MIRROR.read_text(), str(MIRROR), "exec"), names)
    public = {
        name: value for name, value in vars(vocabulary).items() if name.isupper() and not name.startswith("_")
    }
    assert {name: names[name] for name in public} == public


def test_model_defaults_are_the_vocabulary_defaults():
    assert dataclasses.asdict(model.Settings()) == vocabulary.DEFAULTS["set"]
    assert [f.name for f in dataclasses.fields(model.Settings)] == list(vocabulary.SETTINGS)
    vrrp = model.Vrrp(1, 100, 1)
    assert (
        dict(advert=vrrp.advert_ms, preempt=vrrp.preempt, version=vrrp.version, family=vrrp.family)
        == vocabulary.DEFAULTS["vrrp"]
    )
