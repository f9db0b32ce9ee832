"""MixedFeatureNet, MHAN's trunk: a MobileFaceNet-style network of mixed depthwise convolutions
with coordinate attention. Module names and order follow the upstream code so state_dict keys
match (../shared/spec/models.md, keys/mhan_7cls_2heads.txt)."""
import torch
import torch.nn as nn


class Conv_block(nn.Module):  # noqa: N801 - upstream name
    """Conv without bias, BN, PReLU."""

    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel_size=kernel, groups=groups, stride=stride, padding=padding,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x):
        return self.prelu(self.bn(self.conv(x)))


class Linear_block(nn.Module):  # noqa: N801 - upstream name
    """Conv without bias, BN (no activation)."""

    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel_size=kernel, groups=groups, stride=stride, padding=padding,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x):
        return self.bn(self.conv(x))


class HSigmoid(nn.Module):
    def forward(self, x):
        return torch.nn.functional.relu6(x + 3) / 6


class HSwish(nn.Module):
    def forward(self, x):
        return x * (torch.nn.functional.relu6(x + 3) / 6)


class CoordAtt(nn.Module):
    """Coordinate attention (Hou et al. 2021): pool along W and along H, a shared 1×1 conv → BN →
    h_swish, then one 1×1 conv + sigmoid per direction; out = x·a_w·a_h."""

    def __init__(self, inp, oup, groups=32):
        super().__init__()
        mip = max(8, inp // groups)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv2 = nn.Conv2d(mip, oup, kernel_size=1)
        self.conv3 = nn.Conv2d(mip, oup, kernel_size=1)
        self.relu = HSwish()

    def forward(self, x):
        n, c, h, w = x.size()
        x_h = x.mean(dim=3, keepdim=True)                      # n×c×h×1
        x_w = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # n×c×w×1
        y = self.relu(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv2(x_h).sigmoid()
        a_w = self.conv3(x_w.permute(0, 1, 3, 2)).sigmoid()
        return x * a_w * a_h


class MDConv(nn.Module):
    """Mixed depthwise conv: channel groups, each a depthwise conv of its own kernel size, then
    concatenated. Upstream builds a BN and PReLU here that forward never applies: the parameters
    are kept (state_dict fidelity), not used."""

    def __init__(self, channels, kernel_size, split_out_channels, stride):
        super().__init__()
        self.num_groups = len(kernel_size)
        self.split_channels = list(split_out_channels)
        self.mixed_depthwise_conv = nn.ModuleList([
            nn.Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c, bias=False)
            for c, k in zip(self.split_channels, kernel_size)])
        self.bn = nn.BatchNorm2d(channels)
        self.prelu = nn.PReLU(channels)

    def forward(self, x):
        if self.num_groups == 1:
            return self.mixed_depthwise_conv[0](x)
        parts = torch.split(x, self.split_channels, dim=1)
        return torch.cat([conv(t) for conv, t in zip(self.mixed_depthwise_conv, parts)], dim=1)


class Mix_Depth_Wise(nn.Module):  # noqa: N801 - upstream name
    """1×1 expand (Conv_block), MDConv, CoordAtt, 1×1 project (Linear_block), optional residual."""

    def __init__(self, in_c, out_c, residual=False, stride=(2, 2), groups=1, kernel_size=(3, 5, 7),
                 split_out_channels=(64, 32, 32)):
        super().__init__()
        self.conv = Conv_block(in_c, groups, kernel=(1, 1))
        self.conv_dw = MDConv(groups, kernel_size, split_out_channels, stride)
        self.CA = CoordAtt(groups, groups)
        self.project = Linear_block(groups, out_c, kernel=(1, 1))
        self.residual = residual

    def forward(self, x):
        y = self.project(self.CA(self.conv_dw(self.conv(x))))
        return x + y if self.residual else y


class Mix_Residual(nn.Module):  # noqa: N801 - upstream name
    def __init__(self, c, num_block, groups, kernel_size, split_out_channels):
        super().__init__()
        self.model = nn.Sequential(*[
            Mix_Depth_Wise(c, c, residual=True, stride=(1, 1), groups=groups, kernel_size=kernel_size,
                           split_out_channels=split_out_channels)
            for _ in range(num_block)])

    def forward(self, x):
        return self.model(x)


def mixed_feature_net_features() -> nn.Sequential:
    """The first 9 children of MixedFeatureNet: 3×112×112 → 512×7×7."""
    return nn.Sequential(
        Conv_block(3, 64, kernel=(3, 3), stride=(2, 2), padding=(1, 1)),                         # conv1
        Conv_block(64, 64, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64),             # conv2_dw
        Mix_Depth_Wise(64, 64, stride=(2, 2), groups=128, kernel_size=(3, 5, 7),
                       split_out_channels=(64, 32, 32)),                                         # conv_23
        Mix_Residual(64, 9, groups=128, kernel_size=(3, 5), split_out_channels=(96, 32)),        # conv_3
        Mix_Depth_Wise(64, 128, stride=(2, 2), groups=256, kernel_size=(3, 5, 7),
                       split_out_channels=(128, 64, 64)),                                        # conv_34
        Mix_Residual(128, 16, groups=256, kernel_size=(3, 5), split_out_channels=(192, 64)),     # conv_4
        Mix_Depth_Wise(128, 256, stride=(2, 2), groups=1024, kernel_size=(3, 5, 7, 9),
                       split_out_channels=(256, 256, 256, 256)),                                 # conv_45
        Mix_Residual(256, 6, groups=512, kernel_size=(3, 5, 7), split_out_channels=(172, 170, 170)),  # conv_5
        Conv_block(256, 512, kernel=(1, 1)),                                                     # conv_6_sep
    )
