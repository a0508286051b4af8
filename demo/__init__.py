"""`make demo` (`python -m demo` from the repository root): see __main__.py."""
