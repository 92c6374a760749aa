"""The domain registry."""

from __future__ import annotations

import pytest

from lfm_deploy.domains import Domain, get_domain, list_domains, register_domain
from lfm_deploy.errors import DomainError


def test_registered_domains_and_aliases():
    assert set(list_domains()) >= {"deepglobe", "isic", "chest_xray", "fss1000"}
    assert get_domain("lung").name == "chest_xray"
    assert get_domain("Chest_Xray").name == "chest_xray"
    assert get_domain("FSS-1000").name == "fss1000"


def test_domain_facts():
    dg = get_domain("deepglobe")
    assert (dg.image_size, dg.num_classes, dg.test_episodes, dg.color) == (400, 6, 600, "rgb")
    assert get_domain("chest_xray").color == "grayscale"
    assert get_domain("chest_xray").finetune.lr == 0.1
    assert get_domain("fss1000").test_episodes == 2400
    pre = dg.preprocessing()
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["image_size"] == [400, 400]


def test_unknown_domain_names_the_choices():
    with pytest.raises(DomainError, match="unknown domain 'mars'.*deepglobe"):
        get_domain("mars")


def test_register_custom_domain():
    dom = register_domain(Domain(name="roofs_test", title="Roofs", layout="support", folder="roofs", num_classes=1, test_episodes=10), overwrite=True)
    assert get_domain("roofs_test") is dom
    with pytest.raises(DomainError, match="already registered"):
        register_domain(dom)
    with pytest.raises(DomainError, match="color"):
        register_domain(Domain(name="bad_color", title="", layout="support", folder="x", num_classes=1, test_episodes=1, color="cmyk"))
