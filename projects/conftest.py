"""The core suite's fixtures (``tests/conftest.py``: the cached shapes data, the tiny train_net
helpers) for the projects' tests: pytest only applies a conftest to the tests below it."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("detr_plus_core_conftest", Path(__file__).resolve().parents[1] / "tests" / "conftest.py")
_core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_core)

shapes_mini, single_thread, tiny, train_net = _core.shapes_mini, _core.single_thread, _core.tiny, _core.train_net
