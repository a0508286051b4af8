"""`make bench` (`python -m bench` from the repository root): see __main__.py."""
