"""tagi-ray: Task Adapters Generation from Instructions, on Ray."""
__version__ = "0.1.0"
