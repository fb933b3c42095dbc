"""Label-smoothed cross-entropy in the model-zoo form: on = 1 - e, off = e / (K - 1)."""
import mindspore as ms
from mindspore import nn, ops


class LabelSmoothingCrossEntropy(nn.Cell):
    """Mean softmax cross-entropy against a smoothed one-hot target.

    The model-zoo spreads e over the K - 1 wrong classes (not over all K as torch does);
    we keep its form so its recipe's numbers carry over.
    """

    def __init__(self, num_classes: int, smoothing: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.on_value = ms.Tensor(1.0 - smoothing, ms.float32)
        self.off_value = ms.Tensor(smoothing / (num_classes - 1), ms.float32)
        self.one_hot = ops.OneHot()
        self.cross_entropy = nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction="mean")

    def construct(self, logits, label):
        target = self.one_hot(label, self.num_classes, self.on_value, self.off_value)
        return self.cross_entropy(ops.cast(logits, ms.float32), target)
