"""Input and parameter gradients of a cell for a given output gradient: how bench_depthwise.py
times the custom operator's backward against nn.Conv2d's, and tests/test_fast_depthwise.py
compares them (the tests import it from here; product code imports neither bench nor tests)."""
import mindspore as ms
from mindspore import nn, ops

_grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)


class Grad(nn.Cell):
    """Grad(net)(x, dy) -> ((dx,), (d parameter, ...)) for the output gradient dy."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = ms.ParameterTuple(net.trainable_params())

    def construct(self, x, dy):
        return _grad(self.net, self.params)(x, dy)
