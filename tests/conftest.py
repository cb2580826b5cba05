import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("LARQ_ENGRAMS_QUIET_STARTUP", "1")  # TensorFlow's C++ start-up lines

import larq_engrams  # noqa: E402,F401  (binds tf.keras to tf_keras before any test imports it)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What installing and running pytest itself leave in a checkout: not the tests' doing.
_TOOLING = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "dist"}
# Long experiment runs write results/ while a developer runs the suite beside them;
# .ci/run's check of the whole tree after the suite covers it.
_EXPERIMENTS = os.path.join(ROOT, "results")


def checkout_files():
    """Every file under the checkout, but the tooling's and results/ (a 10 ms walk)."""
    found = set()
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in _TOOLING and not d.endswith(".egg-info")
                         and os.path.join(folder, d) != _EXPERIMENTS]
        found.update(os.path.relpath(os.path.join(folder, f), ROOT) for f in files)
    return found


@pytest.fixture(autouse=True)
def _leaves_the_checkout_alone():
    """Fails a test that writes into the checkout (its files belong in `tmp_path`): a
    user's `runs/` and TensorBoard must not fill with the suite's runs. Under xdist a
    test running beside it in another worker may be the writer; the paths say which."""
    before = checkout_files()
    yield
    added = sorted(checkout_files() - before)
    if added:
        pytest.fail(f"the test wrote into the checkout (use tmp_path): {', '.join(added[:5])}"
                    + (f" and {len(added) - 5} more" if len(added) > 5 else ""), pytrace=False)


@pytest.fixture(autouse=True)
def _seeded():
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
