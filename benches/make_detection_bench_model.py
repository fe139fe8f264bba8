"""Realistic-size object detectors for benches/load_vision.py --task object-detection, with seeded
random weights (speed is what they are for): DETR in facebook/detr-resnet-50's shape (a ResNet-50
backbone, here transformers' ResNetBackbone rather than timm's so that the DLC needs no timm; 6 + 6
layers of width 256, 100 queries, shortest edge 800 / longest 1333, the DETR defaults), and YOLOS in
hustvl/yolos-tiny's shape (YolosConfig: hidden 192,
12 layers, 3 heads, MLP 768, 100 detection tokens, position tables for 800 x 1333, no mid-layer
position embeddings; the 91 COCO label slots), with a YolosImageProcessor resizing the shortest edge to
512 (longest 1333): the bench's 640 x 480 photo becomes 512 x 672, 32 x 42 patches, 1445 tokens a pass.

usage: ~/.cache/dlc-peer/venv/bin/python benches/make_detection_bench_model.py [OUT_DIR]
Also image classifiers in microsoft/resnet-50's shape (ResNetForImageClassification, 1000 labels,
ConvNextImageProcessor at 224 as that repository's) and in facebook/convnext-tiny-224's
(ConvNextForImageClassification: ConvNextConfig's defaults, 96-192-384-768 channels in 3-3-9-3
layers; the same processor), for `--task image-classification`.

Writes OUT_DIR (default models/bench)/detr-resnet50-shaped/, yolos-tiny-shaped/,
resnet50-shaped/ and convnext-tiny-shaped/. The photo is make_vision_bench_model.py's.
"""
import os
import sys

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "bench")
torch.manual_seed(512)
labels = {i: f"class_{i}" for i in range(91)}
config = transformers.YolosConfig(
    hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, image_size=[800, 1333],
    num_detection_tokens=100, use_mid_position_embeddings=False, id2label=labels,
    label2id={v: k for k, v in labels.items()})
model = transformers.YolosForObjectDetection(config).eval()
path = os.path.join(out_root, "yolos-tiny-shaped")
model.save_pretrained(path, safe_serialization=True)
transformers.YolosImageProcessor(size={"shortest_edge": 512, "longest_edge": 1333}).save_pretrained(path)
print(path)

torch.manual_seed(800)
backbone = transformers.ResNetConfig(layer_type="bottleneck", depths=[3, 4, 6, 3],
                                     hidden_sizes=[256, 512, 1024, 2048], out_features=["stage4"])
config = transformers.DetrConfig(use_timm_backbone=False, backbone=None, backbone_config=backbone,
                                 use_pretrained_backbone=False, id2label=labels,
                                 label2id={v: k for k, v in labels.items()})
model = transformers.DetrForObjectDetection(config).eval()
path = os.path.join(out_root, "detr-resnet50-shaped")
model.save_pretrained(path, safe_serialization=True)
transformers.DetrImageProcessor().save_pretrained(path)
print(path)

classes = {i: f"class_{i}" for i in range(1000)}
labels = {"id2label": classes, "label2id": {v: k for k, v in classes.items()}}
for seed, name, network, config in [
        (50, "resnet50-shaped", transformers.ResNetForImageClassification, transformers.ResNetConfig),
        (224, "convnext-tiny-shaped", transformers.ConvNextForImageClassification,
         transformers.ConvNextConfig)]:
    torch.manual_seed(seed)
    model = network(config(**labels)).eval()
    path = os.path.join(out_root, name)
    model.save_pretrained(path, safe_serialization=True)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(path)
    print(path)
