"""The package root: every public task, each public name once, each name importable."""

import geotrainr
from geotrainr.tasks import TASKS


def test_every_registered_task_is_exported_once():
    assert len(geotrainr.__all__) == len(set(geotrainr.__all__))
    for cls in set(TASKS.values()):
        assert cls.__name__ in geotrainr.__all__, f"{cls.__name__} is a task but geotrainr does not export it"
        assert getattr(geotrainr, cls.__name__) is cls


def test_every_exported_name_resolves_to_one_object():
    objects = {name: getattr(geotrainr, name) for name in geotrainr.__all__}
    seen = {}
    for name, value in objects.items():
        if isinstance(value, str):  # __version__
            continue
        assert id(value) not in seen, f"{name} and {seen.get(id(value))} are the same object: export it once"
        seen[id(value)] = name
