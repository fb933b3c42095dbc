"""Optimizers of the two reference recipes, with weight decay kept off norms and biases."""
from mindspore import nn

NO_DECAY_MARKERS = ("gamma", "beta", "bias")


def split_decay(params):
    """Weights get L2; BN gamma/beta and biases do not (as the model-zoo recipe)."""
    decay, no_decay = [], []
    for p in params:
        leaf = p.name.rsplit(".", 1)[-1]
        (no_decay if leaf in NO_DECAY_MARKERS else decay).append(p)
    return decay, no_decay


def build_optimizer(params, optim_cfg, learning_rate, loss_scale: float = 1.0, groups=None):
    """RMSProp (model-zoo: decay 0.9, momentum 0.9, eps inside the sqrt, mean-square starts at
    ones) or SGD with momentum (MindCV). `learning_rate` is the per-step array; `groups`
    replaces the default decay/no-decay grouping (fine-tuning gives each group its own LR)."""
    params = list(params)
    if groups is None:
        decay, no_decay = split_decay(params)
        groups = [{"params": decay, "weight_decay": optim_cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0},
                  {"order_params": params}]
        groups = [g for g in groups if g.get("params", True)]
    if optim_cfg.name == "rmsprop":
        return nn.RMSProp(groups, learning_rate=learning_rate, decay=optim_cfg.rmsprop_decay,
                          momentum=optim_cfg.momentum, epsilon=optim_cfg.eps, loss_scale=loss_scale)
    return nn.Momentum(groups, learning_rate=learning_rate, momentum=optim_cfg.momentum,
                       use_nesterov=optim_cfg.nesterov, loss_scale=loss_scale)
