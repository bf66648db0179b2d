"""The seeded demo workload: reproducible, and each task aimed at the persona it names."""

from __future__ import annotations

import pytest

from timmy.errors import ConfigError
from timmy.market.personas import PERSONAS
from timmy.sim.workloads import GENERIC, PHRASES, SUBJECTS, demo_descriptions, demo_workload


def test_same_seed_same_workload_other_seed_another():
    assert demo_descriptions(200, 1) == demo_descriptions(200, 1)
    assert demo_descriptions(200, 1) != demo_descriptions(200, 2)
    assert demo_descriptions(50, 1) == demo_descriptions(200, 1)[:50]


def test_every_persona_task_is_on_spec_for_that_persona_only():
    for pid, templates in PHRASES.items():
        for template in templates:
            for subject in SUBJECTS:
                text = template.format(x=subject)
                on_spec = [p.id for p in PERSONAS.values() if p.is_on_spec(text)]
                assert on_spec == [pid], text


def test_generic_tasks_are_off_spec_for_everyone():
    for text in GENERIC:
        assert not any(p.is_on_spec(text) for p in PERSONAS.values()), text


def test_a_demo_workload_covers_every_persona_and_some_generic_work():
    work = demo_workload(200, 1)
    intended = [pid for _, pid in work]
    assert set(intended) == set(PERSONAS) | {None}
    assert 5 <= intended.count(None) <= 40


def test_sizes():
    assert demo_descriptions(0, 1) == []
    with pytest.raises(ConfigError):
        demo_workload(-1, 1)
