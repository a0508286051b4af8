"""Built-in handlers. Each lives in its own module, imported only when configured."""
