"""Tests for jkt.models.conv: the im2col convolution against XLA's, to every order."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax import lax

from jkt import models
from jkt.models import conv as conv_lib

NHWC = ("NHWC", "HWIO", "NHWC")
CASES = (  # kernel, strides, padding, input shape, as the models use them
    ((3, 3), (1, 1), "SAME", (2, 6, 6, 3)),  # VGG
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (2, 7, 6, 4)),  # ResNet block, odd size
    ((7, 7), (2, 2), ((3, 3), (3, 3)), (1, 10, 10, 3)),  # ResNet stem
    ((1, 1), (2, 2), "VALID", (2, 6, 6, 5)),  # ResNet shortcut
    ((2, 3), (1, 2), "VALID", (1, 5, 7, 2)),
)


def _xla(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _im2col(x, w, strides, padding):
    return conv_lib.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _operands(kernel, shape, dtype, out=4):
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    w = jax.random.normal(jax.random.key(1), (*kernel, shape[-1], out), dtype)
    return x, w


class Im2colTest(parameterized.TestCase):

    @parameterized.parameters(*CASES[:3])
    def test_matches_xla_to_second_order_in_float64(self, kernel, strides, padding, shape):
        """Values, both first derivatives, and the kernel gradient of an input-gradient
        norm (the double backward of Jacobian matching) equal XLA's to float64 rounding."""
        with jax.enable_x64(True):
            x, w = _operands(kernel, shape, jnp.float64)
            y = _xla(x, w, strides, padding)
            chex.assert_trees_all_close(_im2col(x, w, strides, padding), y, rtol=1e-12,
                                        atol=1e-12)
            cot = jax.random.normal(jax.random.key(2), y.shape, jnp.float64)

            def loss(conv):
                return lambda x, w: jnp.sum(jnp.tanh(conv(x, w, strides, padding)) * cot)

            def jac_penalty(conv):
                return lambda w: jnp.sum(jax.grad(loss(conv))(x, w) ** 2)

            def derivatives(conv):
                t = jax.random.normal(jax.random.key(3), x.shape, jnp.float64)
                return (jax.grad(loss(conv), (0, 1))(x, w), jax.grad(jac_penalty(conv))(w),
                        jax.jvp(lambda x: conv(x, w, strides, padding), (x,), (t,)))

            chex.assert_trees_all_close(jax.jit(lambda: derivatives(_im2col))(),
                                        jax.jit(lambda: derivatives(_xla))(), rtol=1e-10,
                                        atol=1e-10)

    @parameterized.parameters(*CASES)
    def test_float32_close_and_jit(self, kernel, strides, padding, shape):
        x, w = _operands(kernel, shape, jnp.float32)
        y = jax.jit(_im2col, static_argnums=(2, 3))(x, w, strides, padding)
        chex.assert_shape(y, _xla(x, w, strides, padding).shape)
        chex.assert_trees_all_close(y, _xla(x, w, strides, padding), rtol=2e-5, atol=2e-5)

    @parameterized.named_parameters(
        ("dilated_kernel", dict(rhs_dilation=(2, 2))),
        ("dilated_input", dict(lhs_dilation=(2, 2), padding=((1, 1), (1, 1)))),
        ("grouped", dict(feature_group_count=2)),
    )
    def test_other_convolutions_are_xla(self, kwargs):
        x, w = _operands((3, 3), (1, 6, 6, 4), jnp.float32)
        if "feature_group_count" in kwargs:
            w = w[:, :, :2]
        args = (x, w, (1, 1), kwargs.pop("padding", "SAME"))
        chex.assert_trees_all_equal(
            conv_lib.conv_general_dilated(*args, dimension_numbers=NHWC, **kwargs),
            lax.conv_general_dilated(*args, dimension_numbers=NHWC, **kwargs))

    def test_nchw_layout_is_xla(self):
        x = jax.random.normal(jax.random.key(0), (1, 3, 5, 5))
        w = jax.random.normal(jax.random.key(1), (4, 3, 3, 3))
        chex.assert_trees_all_equal(conv_lib.conv_general_dilated(x, w, (1, 1), "SAME"),
                                    lax.conv_general_dilated(x, w, (1, 1), "SAME"))

    def test_channel_mismatch_is_a_clear_error(self):
        x, _ = _operands((3, 3), (1, 4, 4, 3), jnp.float32)
        w = jnp.zeros((3, 3, 5, 2))
        with self.assertRaisesRegex(ValueError, "5 input channels.*has 3"):
            _im2col(x, w, (1, 1), "SAME")

    def test_resolve(self):
        self.assertIs(conv_lib.resolve("xla"), lax.conv_general_dilated)
        self.assertIs(conv_lib.resolve("im2col"), conv_lib.conv_general_dilated)
        expected = "im2col" if jax.default_backend() == "cpu" else "xla"
        self.assertIs(conv_lib.resolve("auto"), conv_lib.resolve(expected))
        with self.assertRaisesRegex(ValueError, "unknown convolution implementation 'fft'"):
            conv_lib.resolve("fft")

    @parameterized.parameters(
        ("vgg4", dict(width_multiplier=1 / 16), 32),
        ("resnet34", dict(width_multiplier=1 / 16, stage_sizes=(1, 1, 1, 1)), 16),
    )
    def test_models_give_the_same_function_with_either_convolution(self, name, options, size):
        """Same parameter tree (checkpoints interchange), logits equal to float rounding."""
        x = jax.random.normal(jax.random.key(4), (2, size, size, 3))
        fast = models.create(name, 5, conv_impl="im2col", **options)
        ref = models.create(name, 5, conv_impl="xla", **options)
        variables = jax.jit(ref.init)(jax.random.key(5), x)
        chex.assert_trees_all_equal_shapes_and_dtypes(
            jax.eval_shape(fast.init, jax.random.key(5), x), variables)
        np.testing.assert_allclose(jax.jit(fast.apply)(variables, x),
                                   jax.jit(ref.apply)(variables, x), rtol=1e-4, atol=1e-4)
