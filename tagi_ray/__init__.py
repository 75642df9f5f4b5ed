"""tagi-ray: Task Adapters Generation from Instructions, on Ray."""
from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source tree (a checkout, or the copy `ray job submit --working-dir .` uploads) the entry
# points jobs/, serve/ and tune/ sit next to this package and are its subpackages tagi_ray.jobs,
# tagi_ray.serve and tagi_ray.tune: take them from the same tree as the library. (An installed
# copy has them inside the package; pyproject.toml maps them there.)
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "jobs" / "__init__.py").is_file():
    __path__.append(str(_root))  # noqa: F821  (the package's search path)
