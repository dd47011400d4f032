"""The suite's MAC counter: exact counts on tiny modules, per sample, extensible."""
import torch
from torch import nn

from sparsity_core.macs import MacCounter, count_macs


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.depthwise = nn.Conv2d(4, 4, 3, groups=4)
        self.fc = nn.Linear(4, 3)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.depthwise(self.norm(self.conv(x)))  # [B, 4, 1, 1]
        return self.fc(y.flatten(1))


def test_conv_linear_macs_per_sample():
    macs = count_macs(Net(), torch.randn(2, 2, 5, 5))
    # conv: 3·3 outputs · 4 channels · (2·3·3) = 648; depthwise: 1 · 4 · (1·3·3) = 36; fc: 4·3 = 12
    assert macs == {"conv": 648.0, "depthwise": 36.0, "fc": 12.0}


def test_a_subclass_counts_another_module_type_and_the_mode_is_restored():
    class WithNorms(MacCounter):
        def handles(self, module):
            return super().handles(module) or isinstance(module, nn.BatchNorm2d)

        def count(self, module, args, kwargs, output):
            if isinstance(module, nn.BatchNorm2d):
                return float(output.numel())
            return super().count(module, args, kwargs, output)

    net = Net().train()
    macs = count_macs(net, torch.randn(1, 2, 5, 5), counter=WithNorms)
    assert macs["norm"] == 4 * 3 * 3 and net.training
    assert count_macs(net, torch.randn(1, 2, 5, 5), select=lambda m: m is net.fc) == {"fc": 12.0}
