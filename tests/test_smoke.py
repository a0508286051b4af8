import serf_handlers


def test_public_names_are_exported():
    assert set(serf_handlers.__all__) <= set(dir(serf_handlers))
