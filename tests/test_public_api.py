import serf_handlers


def test_every_public_name_resolves():
    for name in serf_handlers.__all__:
        assert getattr(serf_handlers, name) is not None, name
