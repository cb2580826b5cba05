"""Permuted MNIST (domain-incremental): task k sees MNIST with a fixed pixel permutation
(`benchmarks.permuted_tasks` applied to MNIST)."""
from larq_engrams.benchmarks.from_arrays import permuted_dataset, pixel_permutations
from larq_engrams.benchmarks.scenario import Preprocessing
from larq_engrams.benchmarks.sources import load_arrays

__all__ = ["permuted_mnist", "pixel_permutations"]


def permuted_mnist(
    num_tasks=10,
    first_task_unpermuted=False,
    seed=0,
    source="auto",
    data_dir=None,
    batch_size=100,
    eval_batch_size=1000,
    normalize=False,
    evaluate_on="test",
    validation_fraction=0.1,
):
    """Permuted MNIST: `num_tasks` tasks, each all 10 digits under its own permutation
    of the 784 pixels, fixed by `seed`. One shared 10-way output (domain-incremental).

    The permutation is applied per batch inside the pipeline (`tf.gather`), so all tasks
    share one in-memory uint8 array. `evaluate_on="validation"`: evaluate on a held-out
    part of the training data, never on the test split (see `split_mnist`).
    """
    prep = Preprocessing(flatten=True, normalize=normalize, mean=0.1307, std=0.3081)
    return permuted_dataset(load_arrays("mnist", source, data_dir), "permuted_mnist", num_tasks,
                            first_task_unpermuted, seed, batch_size, eval_batch_size, prep, evaluate_on,
                            validation_fraction, num_classes=10)
