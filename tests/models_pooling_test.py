"""Tests for jkt.models.pooling: flax's max-pool, value and every derivative, ties included."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from absl.testing import parameterized

from jkt.models.pooling import max_pool


def _pool(x):
    return max_pool(x, (2, 2), (2, 2), "VALID")


def _reference(x, window=(2, 2), strides=(2, 2), padding="VALID"):
    return nn.max_pool(x, window, strides=strides, padding=padding)


def _tied_input(shape, dtype, seed=0):
    """Values on a coarse grid, 40% zeros (as after a ReLU): many windows hold ties."""
    x = jax.random.normal(jax.random.key(seed), shape, dtype)
    x = jnp.where(jax.random.bernoulli(jax.random.key(seed + 1), 0.4, shape), 0.0, x)
    return jnp.round(x * 2) / 2


class MaxPoolTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_value_gradient_jvp_equal_flax_with_ties(self):
        x = _tied_input((3, 8, 6, 5), jnp.float32)
        pool = self.variant(_pool)
        chex.assert_shape(pool(x), (3, 4, 3, 5))
        chex.assert_trees_all_equal(pool(x), _reference(x))
        w = jax.random.normal(jax.random.key(2), (3, 4, 3, 5))
        loss = lambda p: lambda x: jnp.sum(jnp.sin(p(x)) * w)  # noqa: E731
        chex.assert_trees_all_equal(self.variant(jax.grad(loss(_pool)))(x),
                                    jax.grad(loss(_reference))(x))
        t = jax.random.normal(jax.random.key(3), x.shape)
        chex.assert_trees_all_equal(self.variant(lambda x, t: jax.jvp(_pool, (x,), (t,)))(x, t),
                                    jax.jvp(_reference, (x,), (t,)))

    def test_tie_goes_to_first_maximum_in_row_major_order(self):
        """XLA's select_and_scatter (``ge`` select) picks the first maximum: so does this."""
        for values, winner in (([1., 1., 0., 0.], 0), ([0., 1., 1., 0.], 1),
                               ([0., 0., 1., 1.], 2), ([2., 2., 2., 2.], 0)):
            x = jnp.array(values).reshape(1, 2, 2, 1)
            grad = jax.grad(lambda x: _pool(x).sum())(x).ravel()
            chex.assert_trees_all_equal(grad, jax.nn.one_hot(winner, 4))
            chex.assert_trees_all_equal(grad, jax.grad(lambda x: _reference(x).sum())(x).ravel())

    @parameterized.parameters(True, False)
    def test_second_derivatives_equal_flax_in_float64(self, ties):
        """The double backward of Jacobian matching: a gradient-norm's gradient.

        Higher derivatives go through the same first-maximum rule (not ``jnp.max``'s
        tie-splitting one), so they agree exactly, not just without ties.
        """
        with jax.enable_x64(True):
            x = (_tied_input((2, 6, 4, 3), jnp.float64, seed=4) if ties
                 else jax.random.normal(jax.random.key(4), (2, 6, 4, 3), jnp.float64))
            w = jax.random.normal(jax.random.key(5), (2, 3, 2, 3), jnp.float64)

            def penalty(pool):
                inner = lambda x: jnp.sum(jnp.sin(pool(x)) * w)  # noqa: E731
                return lambda x: jnp.sum(jax.grad(inner)(x * x) ** 2)

            chex.assert_trees_all_equal(jax.grad(penalty(_pool))(x),
                                        jax.grad(penalty(_reference))(x))
            chex.assert_trees_all_equal(jax.jacrev(_pool)(x), jax.jacfwd(_pool)(x))

    @parameterized.parameters(
        ((3, 3), (2, 2), ((1, 1), (1, 1)), (2, 9, 9, 4)),  # ResNet's stem pool
        ((2, 2), (1, 1), "VALID", (2, 5, 5, 3)),  # overlapping
        ((2, 2), (2, 2), "VALID", (2, 5, 4, 3)),  # height not divisible
    )
    def test_other_windows_are_flax_max_pool(self, window, strides, padding, shape):
        x = _tied_input(shape, jnp.float32, seed=7)
        chex.assert_trees_all_equal(max_pool(x, window, strides, padding),
                                    _reference(x, window, strides, padding))
        chex.assert_trees_all_equal(
            jax.grad(lambda x: jnp.sum(max_pool(x, window, strides, padding) ** 2))(x),
            jax.grad(lambda x: jnp.sum(_reference(x, window, strides, padding) ** 2))(x))

    def test_bfloat16_keeps_dtype(self):
        x = _tied_input((2, 4, 4, 3), jnp.bfloat16)
        y, t = jax.jvp(_pool, (x,), (jnp.ones_like(x),))
        self.assertEqual((y.dtype, t.dtype), (jnp.bfloat16, jnp.bfloat16))
        chex.assert_trees_all_equal(y, _reference(x))
