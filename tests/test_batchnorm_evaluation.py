"""Evaluation with BatchNorm batch statistics on mixed-task batches (Laborieux et al.'s protocol)."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams import benchmarks as B
from larq_engrams.evaluation import TaskEvaluator
from larq_engrams.training import ContinualTrainer


def normalize_then_sign_model():
    """logits = [z, -z], z = BN(x) without scale and offset: class 0 iff x > batch mean."""
    inputs = tf.keras.Input((1,))
    z = tf.keras.layers.BatchNormalization(center=False, scale=False, epsilon=1e-3, name="bn")(inputs)
    logits = tf.keras.layers.Dense(2, use_bias=False, kernel_initializer=tf.constant_initializer([[1.0, -1.0]]))(z)
    return tf.keras.Model(inputs, logits)


def two_offset_tasks():
    rng = np.random.default_rng(0)
    tasks = []
    for offset in (0.0, 10.0):  # task 1's inputs sit far above task 0's
        x = (rng.normal(size=(64, 1)) + offset).astype(np.float32)
        y = (x[:, 0] < offset).astype(np.int64)  # class 0 above the task's own centre
        tasks.append((x, y, x, y))
    return B.tasks_from_arrays(tasks, setting="domain", eval_batch_size=16)


def test_batch_statistics_on_mixed_batches_match_a_hand_computation():
    scenario = two_offset_tasks()
    model = normalize_then_sign_model()
    moving = [v.numpy().copy() for v in model.get_layer("bn").weights]
    evaluator = TaskEvaluator(model, scenario, batchnorm="batch", mixed_batch_size=16, seed=3)
    got = evaluator.accuracies()
    x, y, k = evaluator._mixed_batches()
    assert len(set(k[:16].tolist())) == 2, "a batch mixes the tasks"
    hits, counts = np.zeros(2), np.zeros(2)
    for start in range(0, len(y), 16):
        xb = x[start:start + 16, 0].astype(np.float64)
        z = (xb - xb.mean()) / np.sqrt(xb.var() + 1e-3)
        right = (z <= 0).astype(int) == y[start:start + 16]  # argmax([z, -z]): class 1 iff z < 0
        np.add.at(hits, k[start:start + 16], right)
        np.add.at(counts, k[start:start + 16], 1)
    np.testing.assert_allclose(got, hits / counts)
    for v, before in zip(model.get_layer("bn").weights, moving):
        np.testing.assert_array_equal(v.numpy(), before)  # evaluation moved no statistic
    # With moving statistics (mean 0, variance 1 untouched) the same model sees raw x.
    standard = TaskEvaluator(model, scenario).accuracies()
    assert standard[1] == pytest.approx(0.5, abs=0.15) and got != standard


def test_without_batchnorm_both_evaluations_agree():
    scenario = B.split_mnist("class", source="bundled", batch_size=500).take(2)
    model = le.mlp(scenario.input_shape, 10, hidden=(16,))
    ContinualTrainer(model, "adam", verbose=0, jit_compile=False).fit(scenario)
    assert TaskEvaluator(model, scenario, batchnorm="batch").accuracies() == TaskEvaluator(model, scenario).accuracies()


def test_the_trainer_evaluates_a_bnn_with_batch_statistics_and_refuses_engram_models():
    # Domain-IL: every task has the same classes, so mixed batches' statistics match training's.
    scenario = B.permuted_mnist(2, source="bundled", batch_size=100)
    result = ContinualTrainer(le.bnn(scenario.input_shape, 10, hidden=(32,)), "adam", verbose=0, jit_compile=False,
                              batchnorm_evaluation="batch").fit(scenario)
    assert result.config["trainer"]["batchnorm_evaluation"] == "batch"
    assert result.R[0, 0] > 0.7 and np.all((0 <= result.R) & (result.R <= 1))
    engram = le.engram_bnn(scenario.input_shape, 10, hidden=(16,), max_tasks=2, lda_features=32)
    with pytest.raises(ValueError, match="EngramModel"):
        ContinualTrainer(engram, "adam", verbose=0, batchnorm_evaluation="batch").fit(scenario)


def test_settings_added_later_keep_earlier_results_reusable():
    from larq_engrams import experiment, methods

    config = experiment.ExperimentConfig()
    settings = experiment.run_settings(config, "bnn", 0, "bundled")
    # Results saved before this setting existed have no such key: its default leaves it out.
    assert "batchnorm_evaluation" not in settings["experiment"]
    other = experiment.run_settings(experiment.ExperimentConfig(batchnorm_evaluation="batch"), "bnn", 0, "bundled")
    assert other["experiment"]["batchnorm_evaluation"] == "batch"
    # A run records the hyperparameters its method reads, no other.
    assert settings["hparams"] == {"hidden": [2048, 2048], "learning_rate": 0.005, "seed": 0}
    changed = methods.HyperParameters(slda_shrinkage=0.3, m=2.0)
    assert experiment.run_settings(experiment.ExperimentConfig(hparams=changed), "bnn", 0, "bundled") == settings
    assert experiment.run_settings(experiment.ExperimentConfig(hparams=changed), "mbnn", 0, "bundled")["hparams"]["m"] == 2.0
    assert "buffer_size" not in experiment.run_settings(config, "er@1000", 0, "bundled")["hparams"]
    assert "lda_features" in experiment.run_settings(config, "er@equal", 0, "bundled")["hparams"]
    # A run saved with every field (as before) or without a later one compares on what the method reads.
    saved = {**settings, "hparams": {**dataclasses.asdict(methods.HyperParameters()), "hidden": [2048, 2048]}}
    assert experiment._differences(experiment._comparable(saved, settings), settings) == []
    del saved["hparams"]["learning_rate"]  # missing: compared at its default
    assert experiment._differences(experiment._comparable(saved, settings), settings) == []
    saved["hparams"]["hidden"] = [64]
    assert experiment._differences(experiment._comparable(saved, settings), settings) == [
        "hparams.hidden: [64] there, [2048, 2048] here"]
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        methods.register("x", "x", reads=("no_such_field",))


def test_the_patch_floor_is_recorded_where_the_router_sees_patches_only():
    from larq_engrams import experiment

    def settings(scenario):
        config = experiment.ExperimentConfig(scenario=scenario, setting="domain" if scenario == "permuted_mnist"
                                             else "class")
        return experiment.run_settings(config, "engram_bnn", 0, "bundled")

    images, permuted = settings("split_mnist"), settings("permuted_mnist")
    assert images["hparams"]["router_patch_floor"] == 0.01 and permuted["hparams"]["router_patch_floor"] is None
    # Runs saved before the floor existed ran without it: still the same run on permuted
    # (dense) inputs, a stale one on images.
    for now, stale in ((permuted, []), (images, ["hparams.router_patch_floor: None there, 0.01 here"])):
        saved = {**now, "hparams": {k: v for k, v in now["hparams"].items() if k != "router_patch_floor"}}
        assert experiment._differences(experiment._comparable(saved, now), now) == stale


def test_an_engram_run_saved_before_protection_existed_ran_unprotected():
    from larq_engrams import experiment, methods

    now = experiment.run_settings(experiment.ExperimentConfig(), "engram_bnn", 0, "bundled")
    assert now["hparams"]["protect_engrams"] is True and now["hparams"]["engram_fraction"] is None
    saved = {**now, "hparams": {k: v for k, v in now["hparams"].items() if k != "protect_engrams"}}
    assert experiment._differences(experiment._comparable(saved, now), now) == [
        "hparams.protect_engrams: False there, True here"]
    unprotected = experiment.ExperimentConfig(hparams=methods.HyperParameters(protect_engrams=False))
    old = experiment.run_settings(unprotected, "engram_bnn", 0, "bundled")
    assert experiment._differences(experiment._comparable(saved, old), old) == []  # the same run
