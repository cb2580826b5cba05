"""`protect_engrams`: what earlier engrams use is frozen while a later engram trains."""
import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams.protection import EngramProtection
from larq_engrams.subnetwork import EngramSubnetwork

LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _set_engrams(model, masks_per_layer, classes):
    """Hand-made engram banks: `masks_per_layer[l]` is (T, N_l) 0/1, `classes` (T, C)."""
    for layer, masks in zip(model.engram_layers, masks_per_layer):
        layer.engram_masks.assign(np.asarray(masks, np.float32))
        layer.allocated.assign(np.ones(len(masks), np.float32))
    model.engram_classes.assign(np.asarray(classes, np.float32))


def test_owned_entries_by_hand():
    model = le.engram_bnn((3,), 4, hidden=(4, 3), max_tasks=3)
    layer_0 = [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    layer_1 = [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    classes = [[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]]
    _set_engrams(model, [layer_0, layer_1], classes)
    task = tf.constant(1)
    units = [layer.engram_units(task) for layer in model.engram_layers]  # [1, 2] and [0, 1]
    protection = EngramProtection(model, task, units)
    # Engrams 0 and 2 are the others. Layer 0: unit 1 is in engram 0, unit 2 in engram 2.
    np.testing.assert_array_equal(protection.shared_units(0).numpy(), [1, 1])
    np.testing.assert_array_equal(protection.shared_kernel(0).numpy(), [[1, 1]])  # whole columns
    # Layer 1: unit 0 is in engram 0, unit 1 in none of the others.
    np.testing.assert_array_equal(protection.shared_units(1).numpy(), [1, 0])
    # W_1[i, j], i in {1, 2} (layer 0), j in {0, 1} (layer 1): owned by engram 0 iff i = 1, j = 0
    # (engram 2 has layer-1 unit 2 only, not in this block).
    np.testing.assert_array_equal(protection.shared_kernel(1).numpy(), [[1, 0], [0, 0]])
    # Output rows of layer-1 units {0, 1}: unit 0 is engram 0's, whose classes are {0, 1}.
    np.testing.assert_array_equal(protection.shared_output_kernel().numpy(), [[1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(protection.shared_classes().numpy(), [1, 1, 0, 1])  # engrams 0 and 2
    scales = protection.gradient_scales()
    assert len(scales) == len(EngramSubnetwork(model, task).blocks) == 3 * 2 + 3
    np.testing.assert_array_equal(scales[3].numpy(), [[0, 1], [1, 1]])  # 1 - owned, layer 1's kernel
    # Without restriction to the engrams' classes, every class of an owned row is owned.
    free = le.engram_bnn((3,), 4, hidden=(4, 3), max_tasks=3, restrict_to_engram_classes=False)
    _set_engrams(free, [layer_0, layer_1], classes)
    np.testing.assert_array_equal(EngramProtection(free, task, units).shared_output_kernel().numpy(),
                                  [[1, 1, 1, 1], [0, 0, 0, 0]])


def _three_tasks(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(16, 4))
    tasks = []
    for t in range(3):
        x = (rng.normal(size=(300, 16)) + 0.5 * t).astype(np.float32)
        tasks.append((x, np.argmax(x @ w, axis=1).astype(np.int32)))
    return tasks


def _train(protect, tasks, execution="sparse"):
    # Half of each layer per engram, drawn without preference: the engrams share units.
    model = le.engram_bnn((16,), 4, hidden=(64, 48), max_tasks=3, engram_fraction=0.5, excitability=0.0,
                          protect_engrams=protect, lda_features=32, execution=execution)
    after = []
    for t, (x, y) in enumerate(tasks):
        model.begin_task(t)
        model.compile(optimizer=le.MetaplasticAdam(0.01, m=1.3), loss=LOSS, metrics=["accuracy"])
        history = model.fit(x, y, batch_size=50, epochs=3, verbose=0)
        after.append(model((tasks[0][0], np.zeros(300, np.int32))).numpy())
    return model, after, history.history["accuracy"][-1]


def test_protected_engrams_compute_exactly_what_they_did_and_later_ones_still_learn():
    tasks = _three_tasks()
    shared, shared_after, _ = _train(False, tasks)
    protected, protected_after, last_accuracy = _train(True, tasks)
    assert shared.engram_layers[0].overlap(0, 2) > 0.1  # the engrams do share units
    # Without protection task 0's outputs move as tasks 1 and 2 train; with it they do not move at all.
    assert np.abs(shared_after[2] - shared_after[0]).max() > 0.5
    np.testing.assert_array_equal(protected_after[1], protected_after[0])
    np.testing.assert_array_equal(protected_after[2], protected_after[0])
    assert last_accuracy > 0.6  # the last engram learned its task from what was left free (chance 0.25)


def test_protection_is_serialized_and_needs_the_sparse_step():
    model = le.engram_bnn((4,), 2, hidden=(8,), max_tasks=2, protect_engrams=True)
    assert le.EngramModel.from_config(model.get_config()).protect_engrams is True
    with pytest.raises(ValueError, match="protect_engrams=True .*freezes blocks of the sparse step"):
        le.engram_bnn((4,), 2, hidden=(8,), max_tasks=2, execution="masked")  # protected by default
    assert le.engram_bnn((4,), 2, hidden=(8,), max_tasks=2, protect_engrams=False,
                         execution="masked").protect_engrams is False


@pytest.mark.parametrize("max_tasks, rho", [(1, 0.2), (5, 0.2), (8, 0.125), (10, 0.1), (50, 0.02)])
def test_defaults_protect_engrams_of_an_even_share_of_the_units(max_tasks, rho):
    model = le.engram_bnn((4,), 2, hidden=(8, 6), max_tasks=max_tasks)
    assert model.protect_engrams is True
    assert [layer.engram_fraction for layer in model.engram_layers] == [rho, rho]
    config = model.get_config()
    assert config["engram_fraction"] == rho  # the value, not the rule: a grown bank keeps it
    assert le.EngramModel.from_config(config).engram_layers[1].engram_fraction == rho
    explicit = le.engram_bnn((4,), 2, hidden=(8,), max_tasks=max_tasks, engram_fraction=0.3)
    assert explicit.engram_layers[0].engram_fraction == 0.3


def test_a_config_saved_before_protection_was_the_default_loads_unprotected():
    config = le.engram_bnn((4,), 2, hidden=(8,), max_tasks=2).get_config()
    del config["protect_engrams"]
    assert le.EngramModel.from_config(config).protect_engrams is False
