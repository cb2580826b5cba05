import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("LARQ_ENGRAMS_QUIET_STARTUP", "1")  # TensorFlow's C++ start-up lines

import larq_engrams  # noqa: E402,F401  (binds tf.keras to tf_keras before any test imports it)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
