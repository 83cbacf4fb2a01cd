"""PyTorch reference models for tests and benchmarks (torch 2.13.0 CPU, never a runtime
dependency): torchvision's VGG11 ``features`` layout and TernausNet's UNet11
(is_deconv=True) with its state-dict keys, written here because torchvision cannot be
installed. torch is imported inside the functions so that importing this module without
torch works (tests skip, benchmarks run --no-torch).
"""

import importlib


def _torch():
    return importlib.import_module("torch")


def vgg11_features():
    """torchvision ``vgg11().features`` (no BN): conv indices 0, 3, 6, 8, 11, 13, 16, 18."""
    nn = _torch().nn
    layers, cin = [], 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers)


def vgg_skips(features, x):
    """The five U-Net11 skip features from a torchvision-layout ``features`` module."""
    torch = _torch()
    f, pool = features, torch.nn.functional.max_pool2d
    c1 = torch.relu(f[0](x))
    c2 = torch.relu(f[3](pool(c1, 2)))
    c3 = torch.relu(f[8](torch.relu(f[6](pool(c2, 2)))))
    c4 = torch.relu(f[13](torch.relu(f[11](pool(c3, 2)))))
    c5 = torch.relu(f[18](torch.relu(f[16](pool(c4, 2)))))
    return c1, c2, c3, c4, c5


def unet11(num_classes: int, nf: int):
    """TernausNet UNet11 (is_deconv=True), state-dict keys as ternaus/robot-surgery-segmentation."""
    torch = _torch()
    nn = torch.nn

    class ConvRelu(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    class DecoderBlock(nn.Module):
        def __init__(self, cin, mid, cout):
            super().__init__()
            self.block = nn.Sequential(
                ConvRelu(cin, mid), nn.ConvTranspose2d(mid, cout, kernel_size=4, stride=2, padding=1), nn.ReLU()
            )

        def forward(self, x):
            return self.block(x)

    class TorchUNet11(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = vgg11_features()
            self.center = DecoderBlock(512, nf * 8 * 2, nf * 8)
            self.dec5 = DecoderBlock(512 + nf * 8, nf * 8 * 2, nf * 8)
            self.dec4 = DecoderBlock(512 + nf * 8, nf * 8 * 2, nf * 4)
            self.dec3 = DecoderBlock(256 + nf * 4, nf * 4 * 2, nf * 2)
            self.dec2 = DecoderBlock(128 + nf * 2, nf * 2 * 2, nf)
            self.dec1 = ConvRelu(64 + nf, nf)
            self.final = nn.Conv2d(nf, num_classes, kernel_size=1)

        def forward(self, x):
            conv1, conv2, conv3, conv4, conv5 = vgg_skips(self.encoder, x)
            center = self.center(nn.functional.max_pool2d(conv5, 2))
            dec5 = self.dec5(torch.cat([center, conv5], 1))
            dec4 = self.dec4(torch.cat([dec5, conv4], 1))
            dec3 = self.dec3(torch.cat([dec4, conv3], 1))
            dec2 = self.dec2(torch.cat([dec3, conv2], 1))
            return self.final(self.dec1(torch.cat([dec2, conv1], 1)))

    return TorchUNet11()


def resnet18(num_classes=None):
    """torchvision ``resnet18`` (He et al. 2016) with torchvision's state-dict keys (``conv1``,
    ``bn1``, ``layer<s>.<b>.{conv1,bn1,conv2,bn2}``, ``layer<s>.0.downsample.{0,1}``, ``fc``)
    and init (kaiming-normal fan_out convs, BN weight 1 / bias 0, default Linear); no ``fc``
    when ``num_classes`` is None. ``forward(x)`` (NCHW) returns the taps ``stem`` (after
    conv1/bn1/ReLU), ``layer1`` … ``layer4`` and, with ``fc``, ``logits``."""
    torch = _torch()
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class TorchResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for s, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
                setattr(self, f"layer{s}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
                cin = cout
            self.fc = None if num_classes is None else nn.Linear(512, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            out = {"stem": torch.relu(self.bn1(self.conv1(x)))}
            x = out["pool"] = self.maxpool(out["stem"])
            for s in range(1, 5):
                x = out[f"layer{s}"] = getattr(self, f"layer{s}")(x)
            if self.fc is not None:
                out["logits"] = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
            return out

    return TorchResNet18()
