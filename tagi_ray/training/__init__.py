"""Training loops that run the same with and without Ray."""
