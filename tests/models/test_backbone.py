"""ResNet-50 layout and HSNet's pre-ReLU feature extraction."""

from __future__ import annotations

import torch

from lfm_deploy.models import LFMHSNet, ResNet50, feature_sizes


def test_torchvision_parameter_names_and_counts():
    net = ResNet50()
    sd = net.state_dict()
    # torchvision resnet50: 320 state-dict entries, 25,557,032 parameters.
    assert len(sd) == 320
    assert sum(p.numel() for p in net.parameters()) == 25_557_032
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
                "layer2.0.conv2.weight", "layer4.2.bn3.num_batches_tracked", "fc.weight", "fc.bias"):
        assert key in sd
    # v1.5: the stride sits on the 3x3 conv of the first block of a stage.
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)


def test_feature_shapes_at_400():
    assert feature_sizes(400) == (50, 25, 13)
    net = ResNet50().eval()
    with torch.no_grad():
        feats = net.extract_features(torch.randn(1, 3, 400, 400))
    shapes = [tuple(f.shape) for f in feats]
    assert shapes == [(1, 512, 50, 50)] * 4 + [(1, 1024, 25, 25)] * 6 + [(1, 2048, 13, 13)] * 3


def test_features_are_pre_relu_block_outputs():
    torch.manual_seed(0)
    net = ResNet50().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = net.extract_features(x)
        # Independent walk with torch hooks on the bottlenecks: their outputs are post-ReLU.
        post = []
        hooks = [b.register_forward_hook(lambda m, i, o: post.append(o)) for layer in
                 (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
        logits = net(x)
        for h in hooks:
            h.remove()
    assert logits.shape == (2, 1000)
    assert len(feats) == 13
    for f, p in zip(feats, post[3:]):
        assert (f < 0).any(), "features must be taken before the final ReLU"
        torch.testing.assert_close(torch.relu(f), p, rtol=0, atol=0)


def test_backbone_stays_frozen_and_in_eval_mode():
    model = LFMHSNet(apm="s", acpa=False, image_size=128)
    model.train()
    assert model.training and not model.backbone.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.hpn_learner.parameters())
    feats = model.extract_features(torch.randn(1, 3, 128, 128))
    assert not feats[0].requires_grad
