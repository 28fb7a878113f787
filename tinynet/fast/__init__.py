"""The fast engine: optimised kernels, each the twin of a reference kernel (``tinynet/functional``).

What a learner reads is the reference (``tinynet/functional/``); what runs by default is chosen by
the dispatcher (:mod:`tinynet.kernels`): the twin registered here for the array's device, or the
reference where there is none. ``tinynet.use_reference()`` or ``TINYNET_KERNELS=reference``
switches every call back to the reference. Each twin computes the same numbers as its
reference (to rounding) and is tested equal to it (``tests/test_fast_engine.py``).

On the CPU (NumPy):
    * ``conv.py``, ``conv_rows.py``: convolution by flat-row columns, by rows and a banded weight
      matrix for narrow images, per-image dW for few-row columns, evaluation and (for columns of
      64+ rows) training in cache-sized slices;
    * ``winograd.py``: 3x3 convolutions of 32+ channels (stride 1, padding 1) by Winograd's
      F(4x4, 3x3), 4x fewer multiplications (equal to the reference to rounding, about 1e-5 of
      the largest value in float32);
    * ``pooling.py``: max pooling by running maxima over offset slices;
    * ``activation.py``: ReLU against a zero array;
    * ``batchnorm.py``: batch normalisation in few passes over memory, one block per thread;
    * ``threads.py``: a batch's images split over the cores; ``_recycle.py``: recycled buffers.
On the GPU (CuPy): ``cuda.py``, fused kernels for the SGD step and the max-pool backward.

Fusion is an explicit step: :func:`tinynet.fuse` (``fuse.py``) returns a new model in which
Conv2d+ReLU(+MaxPool2d) and Linear+ReLU run as one call, sharing the original's Parameters, and
Conv2d+BatchNorm2d(+ReLU(+MaxPool2d)) is one folded convolution in evaluation.
"""

from .. import kernels
from . import activation, batchnorm, conv, conv_rows, cuda, pooling, winograd
from .fuse import fuse

kernels.register("conv2d_forward", "cpu", conv.conv2d_forward, conv.conv2d_backward,
                 (conv.ConvCache, conv_rows.RowsCache, conv.PooledCache, conv.SlicedCache,
                  winograd.WinogradCache))
kernels.register("relu_forward", "cpu", activation.relu_forward, activation.relu_backward,
                 (activation.ReluCache,))
kernels.register("maxpool2d_forward", "cpu", pooling.maxpool2d_forward,
                 pooling.maxpool2d_backward, (pooling.MaxPoolCache,))
kernels.register("batchnorm_forward", "cpu", batchnorm.batchnorm_forward,
                 batchnorm.batchnorm_backward, (batchnorm.BatchNormCache,))
kernels.register("maxpool2d_forward", "cuda", cuda.maxpool2d_forward, cuda.maxpool2d_backward,
                 (cuda.RoutedPoolCache,))
kernels.register("sgd_update", "cuda", cuda.sgd_update)

__all__ = ["fuse", "kernels"]
